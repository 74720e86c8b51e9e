"""One scan: the bytes of an open file, read through its descriptor, matched by the rules in force.

The file is read with `pread` (the descriptor's shared offset never moves) into one bytes object, since
yara-x scans bytes in memory; it is never mapped, so a file truncated while read cannot fault the
extension. At most `max_bytes` are read: a larger file is not scanned. yara-x enforces the time limit
itself and raises `TimeoutError`, and then nothing of the partial scan is used. Its limit counts ticks of
a process-wide one-second heartbeat, not time since the scan began: a limit of N seconds fires between
N-1 and N seconds into a scan (measured: with 1, a 24 ms scan timed out about once a second, after 3 to
37 ms). A timeout lets the file run unscanned, so yara-x is given `timeout_s + 1`: every scan gets at
least `timeout_s` seconds and at most one more.

A `Scanner` belongs to the thread that made it (yara-x refuses any other), so `FileScanner` is made and
used on the extension's main thread only.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from dataclasses import dataclass

import yara_x

from ringfence.engines.yara._attack import NO_ATTACK
from ringfence.engines.yara._rules import BLOCK_TAG, RuleSet

MAX_MATCHES_PER_PATTERN = 1000  # bounds a scan's memory on files full of one pattern
_MAX_META_TEXT = 200  # per metadata value, in findings


class Outcome(enum.StrEnum):
    SCANNED = "scanned"  # every byte scanned (`matches` may be empty)
    TOO_LARGE = "too-large"  # over the size limit: not scanned
    TIMEOUT = "timeout"  # the time limit passed: no result
    READ_ERROR = "read-error"  # the descriptor could not be read
    SCAN_ERROR = "scan-error"  # yara-x failed otherwise


@dataclass(frozen=True, slots=True)
class RuleMatch:
    rule: str
    namespace: str
    tags: tuple[str, ...]
    metadata: tuple[tuple[str, str], ...]  # values as text, each cut to 200 characters
    techniques: tuple[str, ...] = ()  # ATT&CK, from its metadata and tags (see _attack.py)
    tactics: tuple[str, ...] = ()

    @property
    def blocks(self) -> bool:
        return BLOCK_TAG in self.tags


@dataclass(frozen=True, slots=True)
class ScanResult:
    outcome: Outcome
    matches: tuple[RuleMatch, ...] = ()
    sha256: str | None = None  # of the bytes scanned, when a rule matched (for findings)
    scanned_bytes: int = 0
    detail: str = ""  # for READ_ERROR and SCAN_ERROR: what failed

    @property
    def blocking(self) -> tuple[RuleMatch, ...]:
        return tuple(m for m in self.matches if m.blocks)


def read_fd(fd: int, max_bytes: int) -> bytes | None:
    """The file's bytes from offset 0, or None if there are more than `max_bytes`. Raises OSError.

    One read usually gets it all (one allocation); a short read is not the end until pread returns
    nothing."""
    parts: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, max_bytes + 1 - offset, offset):
        parts.append(chunk)
        offset += len(chunk)
        if offset > max_bytes:
            return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


class FileScanner:
    """Scans with one rule set, on the thread that made it."""

    def __init__(self, ruleset: RuleSet, *, timeout_s: int, max_bytes: int, log: logging.Logger) -> None:
        self.ruleset = ruleset
        self.max_bytes = max_bytes
        self._log = log
        self._scanner: yara_x.Scanner | None = None
        if ruleset.rules is not None:
            self._scanner = yara_x.Scanner(ruleset.rules)
            self._scanner.set_timeout(timeout_s + 1)  # at least timeout_s: see the module docstring
            self._scanner.max_matches_per_pattern(MAX_MATCHES_PER_PATTERN)
            self._scanner.console_log(self._console)

    def scan_fd(self, fd: int, *, digest: bool = False) -> ScanResult:
        """Read and scan the file. `digest`: compute its sha256 even when nothing matches."""
        try:
            data = read_fd(fd, self.max_bytes)
        except OSError as e:
            return ScanResult(Outcome.READ_ERROR, detail=f"read failed: {e.strerror or e}")
        if data is None:
            return ScanResult(Outcome.TOO_LARGE)
        return self.scan_bytes(data, digest=digest)

    def scan_bytes(self, data: bytes, *, digest: bool = False) -> ScanResult:
        if self._scanner is None:
            sha256 = hashlib.sha256(data).hexdigest() if digest else None
            return ScanResult(Outcome.SCANNED, sha256=sha256, scanned_bytes=len(data))
        try:
            results = self._scanner.scan(data)
        except yara_x.TimeoutError:
            return ScanResult(Outcome.TIMEOUT, scanned_bytes=len(data))
        except yara_x.ScanError as e:
            return ScanResult(Outcome.SCAN_ERROR, scanned_bytes=len(data), detail=str(e).splitlines()[0])
        matches = tuple(_match(rule, self.ruleset) for rule in results.matching_rules)
        sha256 = hashlib.sha256(data).hexdigest() if matches or digest else None
        return ScanResult(Outcome.SCANNED, matches, sha256, len(data))

    def _console(self, message: str) -> None:
        self._log.debug("yara console: %s", message[:500])


def _match(rule: yara_x.Rule, ruleset: RuleSet) -> RuleMatch:
    meta = tuple((str(k), _text(v)) for k, v in rule.metadata)
    attack = ruleset.attack.get(f"{rule.namespace}.{rule.identifier}", NO_ATTACK)
    return RuleMatch(
        rule.identifier, rule.namespace, tuple(rule.tags), meta, attack.techniques, attack.tactics
    )


def _text(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= _MAX_META_TEXT else text[: _MAX_META_TEXT - 3] + "..."
