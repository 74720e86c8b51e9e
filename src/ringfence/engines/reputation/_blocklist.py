"""Blocklist files: one sha256 per line, an optional label, `#` comments. Parsed strictly, stored compactly.

Format, line by line:

    # whole-line comment
    <64 hex digits>                      (any case)
    <64 hex digits>  <label>  # comment  (the label is the rest of the line, used in finding titles)

Blank lines are skipped. A file with any bad line is rejected as a whole, and every bad line is reported
at once (`BlocklistError.issues`, each naming file:line): a half-loaded blocklist would be a silent gap.
Duplicates are warnings; the first occurrence (and its label) wins.

Storage: 256 shards by the digest's first byte, each a sorted buffer of 32-byte digests searched by
bisection, its labels' bytes back to back and one 4-byte offset per entry: no Python object per entry.
A million entries cost 36 MB plus their labels' text, where a set of bytes objects costs over 100 MB
(bench/content_bench.py). Each shard is sorted and packed on its own, so building needs little more
than the parsed list.
"""

from __future__ import annotations

import array
import bisect
import enum
import io
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

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

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._n = len(buf) // DIGEST_BYTES

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> bytes:
        return self._buf[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]


@dataclass(frozen=True, slots=True, eq=True)
class _Shard:
    """The entries whose digest starts with one byte: sorted digests, their labels' UTF-8 bytes back to
    back, and where each entry's label ends (empty when no entry of the shard has a label)."""

    digests: bytes = b""
    labels: bytes = b""
    ends: array.array[int] = field(default_factory=lambda: array.array("I"))

    def label(self, i: int) -> str | None:
        if not self.labels:
            return None
        start = self.ends[i - 1] if i else 0
        return self.labels[start : self.ends[i]].decode("utf-8") or None

    @property
    def nbytes(self) -> int:
        return len(self.digests) + len(self.labels) + self.ends.itemsize * len(self.ends)


_EMPTY = _Shard()


class Blocklist:
    """An immutable set of sha256 digests, each with an optional label.

    256 shards by the digest's first byte, each three flat buffers (see `_Shard`): no object per entry.
    A lookup picks the shard and bisects it."""

    __slots__ = ("_count", "_shards")

    def __init__(self, shards: list[_Shard] | None = None) -> None:
        """`shards`: 256 of them, as `BlocklistBuilder` makes them (sorted, no duplicates)."""
        self._shards = shards if shards is not None else [_EMPTY] * 256
        if len(self._shards) != 256:
            raise ValueError(f"a blocklist has 256 shards, not {len(self._shards)}")
        self._count = sum(len(s.digests) // DIGEST_BYTES for s in self._shards)

    @classmethod
    def of(cls, entries: Mapping[bytes, str | None]) -> Blocklist:
        """From raw digests and labels (tests, small lists)."""
        builder = BlocklistBuilder()
        for digest, label in entries.items():
            builder.add(digest, label, "-", 0)
        return builder.build([])

    def __len__(self) -> int:
        return self._count

    def __contains__(self, sha256_hex: object) -> bool:
        return isinstance(sha256_hex, str) and self._find(self._key(sha256_hex)) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blocklist) and self._shards == other._shards

    __hash__ = None  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """What the entries take: digests, labels and their offsets."""
        return sum(s.nbytes for s in self._shards)

    def match(self, sha256_hex: str) -> BlocklistMatch | None:
        """The entry for a digest (hex, any case), or None if it is not listed."""
        key = self._key(sha256_hex)
        found = self._find(key)
        if found is None:
            return None
        shard, i = found
        return BlocklistMatch(key.hex(), shard.label(i))

    def _find(self, key: bytes) -> tuple[_Shard, int] | None:
        if len(key) != DIGEST_BYTES:
            return None
        shard = self._shards[key[0]]
        records = _Records(shard.digests)
        i = bisect.bisect_left(records, key)
        return (shard, i) if i < len(records) and records[i] == key else None

    @staticmethod
    def _key(sha256_hex: str) -> bytes:
        try:
            return bytes.fromhex(sha256_hex)
        except ValueError:
            return b""


_CHUNK_ENTRIES = 1024  # digests per parse chunk: every chunk the same size, so freed ones are reused


class _Bucket:
    """The entries of one leading byte while parsing: fixed-size chunks (a growing buffer per byte would
    fragment the heap), and each entry's index in parse order."""

    __slots__ = ("chunks", "fill", "indices")

    def __init__(self) -> None:
        self.chunks: list[bytearray] = []
        self.fill = _CHUNK_ENTRIES
        self.indices = array.array("I")

    def add(self, digest: bytes, index: int) -> None:
        if self.fill == _CHUNK_ENTRIES:
            self.chunks.append(bytearray(_CHUNK_ENTRIES * DIGEST_BYTES))
            self.fill = 0
        self.chunks[-1][self.fill * DIGEST_BYTES : (self.fill + 1) * DIGEST_BYTES] = digest
        self.fill += 1
        self.indices.append(index)

    def take(self) -> bytes:
        """The digests in order of arrival; the chunks are freed."""
        data = b"".join(self.chunks)[: len(self.indices) * DIGEST_BYTES]
        self.chunks.clear()
        return data


class BlocklistBuilder:
    """Collects digests from one or more files, then sorts them into a `Blocklist`, warning of duplicates.

    Each leading byte's entries are sorted and packed on their own, and their parse chunks freed, so the
    peak stays near the parsed list plus one shard."""

    def __init__(self) -> None:
        self._buckets = [_Bucket() for _ in range(256)]
        self._origins = array.array("Q")  # per entry, in parse order: (source index << 32) | line
        self._label_blob = bytearray()
        self._label_ends = array.array("I")  # per entry: where its label ends in the blob
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}

    def add(self, digest: bytes, label: str | None, source: str, line: int) -> None:
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        self._buckets[digest[0]].add(digest, len(self._origins))
        self._origins.append((index << 32) | line)
        if label:
            self._label_blob += label.encode("utf-8")
        self._label_ends.append(len(self._label_blob))

    def build(self, issues: list[Issue]) -> Blocklist:
        """The sorted list; a warning goes to `issues` for each duplicate (the first occurrence wins).
        The builder is empty afterwards."""
        shards = [self._shard(bucket, issues) for bucket in self._buckets]
        self._buckets = [_Bucket() for _ in range(256)]
        self._origins, self._label_blob, self._label_ends = array.array("Q"), bytearray(), array.array("I")
        return Blocklist(shards)

    def _shard(self, bucket: _Bucket, issues: list[Issue]) -> _Shard:
        data, indices = bucket.take(), bucket.indices
        if not data:
            return _EMPTY
        order = sorted(range(len(indices)), key=lambda j: data[j * DIGEST_BYTES : (j + 1) * DIGEST_BYTES])
        digests, labels, ends = bytearray(), bytearray(), array.array("I")
        blob, blob_ends = self._label_blob, self._label_ends
        previous = b""
        for j in order:  # stable: equal digests come in parse order, the first one is kept
            digest = data[j * DIGEST_BYTES : (j + 1) * DIGEST_BYTES]
            i = indices[j]
            if digest == previous:
                origin = self._origins[i]
                source, line = self._sources[origin >> 32], origin & 0xFFFFFFFF
                issues.append(_warning(source, line, f"duplicate sha256 {digest.hex()}, first entry kept"))
                continue
            previous = digest
            digests += digest
            labels += blob[blob_ends[i - 1] if i else 0 : blob_ends[i]]
            ends.append(len(labels))
        bucket.indices = array.array("I")
        return _Shard(bytes(digests), bytes(labels), ends if labels else array.array("I"))


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
