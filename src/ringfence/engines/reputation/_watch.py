"""The active blocklist, re-read when one of its files changes, checked at most once per interval.

A reload that fails keeps the last good blocklist (and counts the failure): a bad edit must not empty
the list. The same bad version is not re-parsed at every check, only when the files change again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ringfence.engines.reputation._blocklist import Blocklist, BlocklistError, Issue, read_blocklist
from ringfence.engines.reputation._config import ReputationConfig

_Signature = tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True, slots=True)
class BlocklistStatistics:
    entries: int
    loads: int  # successful loads, the first one included
    reload_errors: int
    checks: int  # stats of the files (at most one round per interval)


class WatchedBlocklist:
    def __init__(self, config: ReputationConfig, clock: Callable[[], int], log: logging.Logger) -> None:
        self._sources: list[tuple[str, bool]] = []  # (path, required)
        if config.blocklist_path:
            self._sources.append((config.blocklist_path, True))
        if config.content_blocklist_path:
            self._sources.append((config.content_blocklist_path, False))
        self._max_bytes = config.max_blocklist_bytes
        self._interval_ns = config.recheck_interval_ns
        self._clock = clock
        self._log = log
        self.current = Blocklist()
        self._signature: _Signature = ()
        self._next_check_ns = 0
        self._loads = 0
        self._reload_errors = 0
        self._checks = 0

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self._sources)

    def load(self) -> None:
        """The first load. Raises `BlocklistError` with every issue of every file."""
        self._signature = self._stat_all()
        self._next_check_ns = self._clock() + self._interval_ns
        self._install(self._read_all())

    def poll(self) -> bool:
        """Reload if the interval has passed and a file changed. True when a new blocklist is active."""
        now = self._clock()
        if now < self._next_check_ns:
            return False
        self._next_check_ns = now + self._interval_ns
        self._checks += 1
        signature = self._stat_all()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            blocklist = self._read_all()
        except BlocklistError as e:
            self._reload_errors += 1
            self._log.error(
                "blocklist reload failed, keeping the last good one (%d entries): %s", len(self.current), e
            )
            return False
        self._install(blocklist)
        return True

    def statistics(self) -> BlocklistStatistics:
        return BlocklistStatistics(len(self.current), self._loads, self._reload_errors, self._checks)

    def _install(self, blocklist: Blocklist) -> None:
        self.current = blocklist
        self._loads += 1
        self._log.info("blocklist active: %d entries from %s", len(blocklist), ", ".join(self.paths) or "-")

    def _read_all(self) -> Blocklist:
        merged = Blocklist()
        issues: list[Issue] = []
        for path, required in self._sources:
            if not required and not Path(path).exists():
                continue
            try:
                result = read_blocklist(path, max_bytes=self._max_bytes)
            except BlocklistError as e:
                issues.extend(e.issues)
                continue
            for issue in result.issues:
                self._log.warning("%s", issue)
            merged = merged.merged(result.blocklist)
        if issues:
            raise BlocklistError(issues)
        return merged

    def _stat_all(self) -> _Signature:
        return tuple(_stat(path) for path, _ in self._sources)


def _stat(path: str) -> tuple[int, ...] | None:
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return (-1, e.errno or 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
