"""Blocklist files: one sha256 per line, an optional label, `#` comments. Parsed strictly.

Format, line by line:

    # whole-line comment
    <64 hex digits>                      (any case)
    <64 hex digits>  <label>  # comment  (the label is the rest of the line, used in finding titles)

Blank lines are skipped. A file with any bad line is rejected as a whole, and every bad line is reported
at once (`BlocklistError.issues`, each naming file:line): a half-loaded blocklist would be a silent gap.
Duplicates are warnings; the first label wins.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SHA256_HEX_DIGITS = 64
_HEX = frozenset("0123456789abcdefABCDEF")


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
    """A blocklist that cannot be used. `issues` holds every problem found (errors and warnings)."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        errors = [str(i) for i in self.issues if i.severity is IssueSeverity.ERROR]
        super().__init__(f"blocklist rejected, {len(errors)} error(s):\n  " + "\n  ".join(errors))


@dataclass(frozen=True, slots=True)
class BlocklistMatch:
    sha256: str  # lowercase hex
    label: str | None


class Blocklist:
    """An immutable set of sha256 digests, each with an optional label."""

    __slots__ = ("_labels",)

    def __init__(self, labels: Mapping[bytes, str | None] | None = None) -> None:
        self._labels: dict[bytes, str | None] = dict(labels or {})

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, sha256_hex: object) -> bool:
        return isinstance(sha256_hex, str) and self._key(sha256_hex) in self._labels

    def match(self, sha256_hex: str) -> BlocklistMatch | None:
        """The entry for a digest (hex, any case), or None if it is not listed."""
        key = self._key(sha256_hex)
        if key not in self._labels:
            return None
        return BlocklistMatch(key.hex(), self._labels[key])

    def merged(self, other: Blocklist) -> Blocklist:
        """Both lists; on a digest in both, this list's label wins."""
        return Blocklist({**other._labels, **self._labels})

    @staticmethod
    def _key(sha256_hex: str) -> bytes:
        try:
            return bytes.fromhex(sha256_hex)
        except ValueError:
            return b""


@dataclass(frozen=True, slots=True)
class ParseResult:
    blocklist: Blocklist
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return not any(i.severity is IssueSeverity.ERROR for i in self.issues)


def parse_blocklist(data: bytes, source: str) -> ParseResult:
    """Parse a blocklist's bytes. Never raises: every problem is an `Issue` in the result."""
    labels: dict[bytes, str | None] = {}
    issues: list[Issue] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        entry = _parse_line(raw, source, number, issues)
        if entry is None:
            continue
        digest, label = entry
        if digest in labels:
            issues.append(_warning(source, number, f"duplicate sha256 {digest.hex()}, first label kept"))
            continue
        labels[digest] = label
    return ParseResult(Blocklist(labels), tuple(issues))


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
    problem = _hash_problem(fields[0])
    if problem is not None:
        issues.append(_error(source, number, problem))
        return None
    label = fields[1].strip() if len(fields) == 2 else None
    return bytes.fromhex(fields[0]), label


def _hash_problem(word: str) -> str | None:
    shown = word if len(word) <= 80 else word[:77] + "..."
    bad = sorted(set(word) - _HEX)
    if bad:
        return f"{shown!r} is not a sha256: non-hex character(s) {''.join(bad)!r}"
    if len(word) != _SHA256_HEX_DIGITS:
        return f"{shown!r} is not a sha256: {len(word)} hex digits, expected {_SHA256_HEX_DIGITS}"
    return None


def read_blocklist(path: str, *, max_bytes: int) -> ParseResult:
    """Read and parse one blocklist file; the result's issues are warnings only. Raises `BlocklistError`
    with every issue if the file is unusable.

    The file is opened non-blocking and must be a regular file: this runs on the AUTH path, where a FIFO
    or a device at the configured path must not hang the engine.
    """
    data = _read_regular_file(path, max_bytes)
    result = parse_blocklist(data, path)
    if not result.ok:
        raise BlocklistError(result.issues)
    return result


def _read_regular_file(path: str, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BlocklistError([_error(path, None, f"cannot open: {e.strerror}")]) from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BlocklistError([_error(path, None, "not a regular file")])
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise BlocklistError([_error(path, None, f"cannot read: {e.strerror}")]) from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise BlocklistError([_error(path, None, f"larger than the limit of {max_bytes} bytes")])
    return data


def _error(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.ERROR, source, line, message)


def _warning(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.WARNING, source, line, message)
