"""Blocklist files: one sha256 per line, an optional label, `#` comments. Parsed strictly, stored compactly.

Format, line by line:

    # whole-line comment
    <64 hex digits>                      (any case)
    <64 hex digits>  <label>  # comment  (the label is the rest of the line, used in finding titles)

Blank lines are skipped. A file with any bad line is rejected as a whole, and every bad line is reported
at once (`BlocklistError.issues`, each naming file:line): a half-loaded blocklist would be a silent gap.
Duplicates are warnings; the first occurrence (and its label) wins.

Storage: the digests sit in one sorted buffer, 32 bytes each, searched by bisection; the labels' bytes
in another, with one 4-byte offset per entry. A million entries cost 36 MB plus their labels' text,
where a set of bytes objects costs over 100 MB (bench/content_bench.py). Building sorts per leading
byte, so the peak stays near twice the list.
"""

from __future__ import annotations

import array
import bisect
import enum
import io
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

_SHA256_HEX_DIGITS = 64
DIGEST_BYTES = 32
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_SHOWN_ISSUES = 20  # in the exception's message; `issues` holds them all


class IssueSeverity(enum.StrEnum):
    ERROR = "error"  # the file is rejected
    WARNING = "warning"  # the file is used; the issue is logged


@dataclass(frozen=True, slots=True)
class Issue:
    severity: IssueSeverity
    source: str  # the file's path
    line: int | None  # 1-based; None when the issue is about the whole file
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


class ReputationError(Exception):
    """Root of the reputation engine's errors."""


class BlocklistError(ReputationError):
    """A blocklist that cannot be used. `issues` holds every problem found (errors and warnings).

    The message is one line: every error (up to 20, then a count), separated by '; '."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        errors = [str(i) for i in self.issues if i.severity is IssueSeverity.ERROR]
        shown = errors[:_MAX_SHOWN_ISSUES]
        more = f"; and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__("; ".join(shown) + more)


@dataclass(frozen=True, slots=True)
class BlocklistMatch:
    sha256: str  # lowercase hex
    label: str | None


class _Records:
    """A sorted buffer of 32-byte records as a sequence, for `bisect`."""

    __slots__ = ("_buf", "_n")

    def __init__(self, buf: bytes | bytearray) -> None:
        self._buf = buf
        self._n = len(buf) // DIGEST_BYTES

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> bytes:
        return bytes(self._buf[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES])


class Blocklist:
    """An immutable set of sha256 digests, each with an optional label.

    Three flat buffers: the sorted digests (32 bytes each), the labels' UTF-8 bytes back to back in the
    same order, and where each entry's label ends (an entry without one has an empty label)."""

    __slots__ = ("_digests", "_label_blob", "_label_ends", "_records")

    def __init__(
        self,
        digests: bytes | bytearray = b"",
        label_blob: bytes | bytearray = b"",
        label_ends: array.array[int] | None = None,
    ) -> None:
        """`digests`: sorted, without duplicates, 32 bytes each (what `BlocklistBuilder` makes); the
        buffers are taken over, not copied: nothing may change them afterwards."""
        if len(digests) % DIGEST_BYTES:
            raise ValueError(f"digest buffer of {len(digests)} bytes is not a multiple of {DIGEST_BYTES}")
        ends = label_ends if label_ends is not None else array.array("I")
        if len(ends) not in (0, len(digests) // DIGEST_BYTES):
            raise ValueError("one label end per digest, or none at all")
        self._digests = digests
        self._label_blob = label_blob
        self._label_ends = ends
        self._records = _Records(digests)

    @classmethod
    def of(cls, entries: Mapping[bytes, str | None]) -> Blocklist:
        """From raw digests and labels (tests, small lists)."""
        builder = BlocklistBuilder()
        for digest, label in entries.items():
            builder.add(digest, label, "-", 0)
        return builder.build([])

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, sha256_hex: object) -> bool:
        return isinstance(sha256_hex, str) and self._find(self._key(sha256_hex)) is not None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Blocklist)
            and self._digests == other._digests
            and self._label_blob == other._label_blob
            and (self._label_ends == other._label_ends or not (self._label_blob or other._label_blob))
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """What the entries take: digests, labels and their offsets."""
        return len(self._digests) + len(self._label_blob) + self._label_ends.itemsize * len(self._label_ends)

    def match(self, sha256_hex: str) -> BlocklistMatch | None:
        """The entry for a digest (hex, any case), or None if it is not listed."""
        key = self._key(sha256_hex)
        i = self._find(key)
        if i is None:
            return None
        return BlocklistMatch(key.hex(), self._label(i))

    def _label(self, i: int) -> str | None:
        if not self._label_blob:
            return None
        start = self._label_ends[i - 1] if i else 0
        end = self._label_ends[i]
        return bytes(self._label_blob[start:end]).decode("utf-8") if end > start else None

    def _find(self, key: bytes) -> int | None:
        if len(key) != DIGEST_BYTES:
            return None
        i = bisect.bisect_left(self._records, key)
        return i if i < len(self._records) and self._records[i] == key else None

    @staticmethod
    def _key(sha256_hex: str) -> bytes:
        try:
            return bytes.fromhex(sha256_hex)
        except ValueError:
            return b""


class BlocklistBuilder:
    """Collects digests from one or more files, then sorts them into a `Blocklist`, warning of duplicates.

    Digests go into one growing buffer (one block: no heap fragmentation) and labels into another, with
    each entry's index filed under its first byte, so the sort works on 256 small pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._origins = array.array("Q")  # per entry: (source index << 32) | line
        self._by_first = [array.array("I") for _ in range(256)]  # entry indices per leading byte
        self._label_blob = bytearray()
        self._label_ends = array.array("I")  # per entry: where its label ends in the blob
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}

    def add(self, digest: bytes, label: str | None, source: str, line: int) -> None:
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        n = len(self._origins)
        self._buf += digest
        self._origins.append((index << 32) | line)
        self._by_first[digest[0]].append(n)
        if label:
            self._label_blob += label.encode("utf-8")
        self._label_ends.append(len(self._label_blob))

    def build(self, issues: list[Issue]) -> Blocklist:
        """The sorted list; a warning goes to `issues` for each duplicate (the first occurrence wins).
        The builder is empty afterwards."""
        out = _Out()
        for b in range(256):
            self._sort_bucket(self._by_first[b], out, issues)
            self._by_first[b] = array.array("I")
        self._buf, self._origins = bytearray(), array.array("Q")
        self._label_blob, self._label_ends = bytearray(), array.array("I")
        return Blocklist(out.digests, out.labels, out.ends if out.labels else None)

    def _sort_bucket(self, indices: array.array[int], out: _Out, issues: list[Issue]) -> None:
        buf, ends, blob = self._buf, self._label_ends, self._label_blob
        order = sorted(indices, key=lambda i: buf[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES])  # stable
        previous = b""
        for i in order:
            digest = bytes(buf[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES])
            if digest == previous:
                origin = self._origins[i]
                source, line = self._sources[origin >> 32], origin & 0xFFFFFFFF
                issues.append(_warning(source, line, f"duplicate sha256 {digest.hex()}, first entry kept"))
                continue
            previous = digest
            out.digests += digest
            out.labels += blob[ends[i - 1] if i else 0 : ends[i]]
            out.ends.append(len(out.labels))


class _Out:
    __slots__ = ("digests", "ends", "labels")

    def __init__(self) -> None:
        self.digests = bytearray()
        self.labels = bytearray()
        self.ends = array.array("I")


@dataclass(frozen=True, slots=True)
class ParseResult:
    blocklist: Blocklist
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return not any(i.severity is IssueSeverity.ERROR for i in self.issues)


def parse_blocklist(data: bytes, source: str) -> ParseResult:
    """Parse a blocklist's bytes. Never raises: every problem is an `Issue` in the result."""
    builder = BlocklistBuilder()
    issues: list[Issue] = []
    parse_lines(builder, (raw.rstrip(b"\r\n") for raw in io.BytesIO(data)), source, issues)
    return ParseResult(builder.build(issues), tuple(issues))


def parse_lines(builder: BlocklistBuilder, lines: Iterable[bytes], source: str, issues: list[Issue]) -> None:
    """Add every good line to `builder`, every bad one to `issues`."""
    for number, raw in enumerate(lines, start=1):
        entry = _parse_line(raw, source, number, issues)
        if entry is not None:
            builder.add(entry[0], entry[1], source, number)


def _parse_line(raw: bytes, source: str, number: int, issues: list[Issue]) -> tuple[bytes, str | None] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        issues.append(_error(source, number, f"not UTF-8 (byte {e.start + 1})"))
        return None
    text = text.split("#", 1)[0].strip()
    if not text:
        return None
    fields = text.split(maxsplit=1)
    word = fields[0]
    label = fields[1].strip() if len(fields) == 2 else None
    if len(word) == _SHA256_HEX_DIGITS:
        try:
            return bytes.fromhex(word), label  # fromhex skips whitespace only, and `word` has none
        except ValueError:
            pass
    issues.append(_error(source, number, _hash_problem(word)))
    return None


def _hash_problem(word: str) -> str:
    shown = word if len(word) <= 80 else word[:77] + "..."
    bad = sorted(set(word) - _HEX)
    if bad:
        return f"{shown!r} is not a sha256: non-hex character(s) {''.join(bad)!r}"
    return f"{shown!r} is not a sha256: {len(word)} hex digits, expected {_SHA256_HEX_DIGITS}"


def read_blocklist(path: str, *, max_bytes: int) -> ParseResult:
    """Read and parse one blocklist file; the result's issues are warnings only. Raises `BlocklistError`
    with every issue if the file is unusable."""
    builder = BlocklistBuilder()
    issues: list[Issue] = []
    read_into(builder, path, path, max_bytes=max_bytes, issues=issues)
    result = ParseResult(builder.build(issues), tuple(issues))
    if not result.ok:
        raise BlocklistError(result.issues)
    return result


def read_into(
    builder: BlocklistBuilder, path: str, source: str, *, max_bytes: int, issues: list[Issue]
) -> None:
    """Stream `path` into `builder` line by line (never the whole file in memory), issues named `source`.

    The file is opened non-blocking and must be a regular file: a FIFO or a device at the path must not
    hang the engine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        issues.append(_error(source, None, f"cannot open: {e.strerror}"))
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            issues.append(_error(source, None, "not a regular file"))
        elif st.st_size > max_bytes:
            issues.append(_error(source, None, f"larger than the limit of {max_bytes} bytes"))
        else:
            with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as f:
                parse_lines(builder, _bounded_lines(f, max_bytes, source, issues), source, issues)
    except OSError as e:
        issues.append(_error(source, None, f"cannot read: {e.strerror}"))
    finally:
        os.close(fd)


def _bounded_lines(
    lines: Iterable[bytes], max_bytes: int, source: str, issues: list[Issue]
) -> Iterator[bytes]:
    """The lines without their end of line; stops (with an error) past `max_bytes` (a file still growing)."""
    total = 0
    for raw in lines:
        total += len(raw)
        if total > max_bytes:
            issues.append(_error(source, None, f"larger than the limit of {max_bytes} bytes"))
            return
        yield raw.rstrip(b"\r\n")


def _error(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.ERROR, source, line, message)


def _warning(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.WARNING, source, line, message)
