"""The indicators in force: every file of the content directory, reloaded off the AUTH path when it changes.

The agent swaps the content directory (a symlink to a complete, never-modified slot) atomically, so a
load reads one version: the directory is resolved once per load and the files are read from there.

A reload runs on a background thread (a million entries take seconds; the main thread keeps answering
AUTH with the list in force) and is picked up by the next `poll`. A reload that fails keeps the last
good indicators, counts the failure and keeps its one-line `problem` until a good version comes; the same
bad version is not re-read until the content changes again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ringfence.engines.ioc._config import IocConfig
from ringfence.engines.ioc._iocset import IocBuilder, IocSet
from ringfence.engines.ioc._issues import ContentError, Issue, IssueSeverity, has_errors
from ringfence.engines.ioc._load import read_file

_FileSig = tuple[str, int, int, int, int]  # name, inode, size, mtime ns, ctime ns
Signature = tuple[str, tuple[_FileSig, ...]] | None  # resolved directory and its files; None: no content
Background = Callable[[Callable[[], None]], None]


def run_in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="ioc-reload", daemon=True).start()


@dataclass(frozen=True, slots=True)
class ContentStatistics:
    entries: int
    kinds: dict[str, int]  # entries per kind: sha256, sha1, md5, address, domain
    loads: int  # successful loads, the first one included
    reload_errors: int
    checks: int  # signature checks (at most one per interval)
    unchanged_reloads: int  # new files, same list: no verdict flush


@dataclass(frozen=True, slots=True)
class _Loaded:
    signature: Signature
    iocs: IocSet | None
    issues: tuple[Issue, ...]


class WatchedContent:
    def __init__(
        self,
        config: IocConfig,
        clock: Callable[[], int],
        log: logging.Logger,
        background: Background = run_in_thread,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = config.content_dir
        self._max_bytes = config.max_file_bytes
        self._interval_ns = config.recheck_interval_ns
        self._clock = clock
        self._log = log
        self._background = background
        self._wall_clock = wall_clock  # for STIX valid_until
        self.current = IocSet()
        self.problem: str | None = None  # why the newest content is not in force; None: it is
        self._signature: Signature = None
        self._next_check_ns = 0
        self._loading = False
        self._done: _Loaded | None = None  # set by the loader thread, taken by `poll`
        self._loads = self._reload_errors = self._checks = self._unchanged = 0

    @property
    def configured(self) -> bool:
        return self._dir is not None

    def load(self) -> None:
        """The first load, synchronous. Raises `ContentError` with every issue of every file."""
        loaded = self._read()
        self._signature = loaded.signature
        self._next_check_ns = self._clock() + self._interval_ns
        if loaded.iocs is None:
            raise ContentError(loaded.issues)
        self._install(loaded)

    def poll(self) -> bool:
        """Take a finished reload, or start one if the interval passed and the content changed. True when
        a set of indicators different from the one in force became active. An indicator whose validity
        ended (STIX valid_until) makes the content load again, without it, even if no file changed."""
        done = self._done  # written once per load by the loader thread, which then ends
        if done is not None:
            self._done = None  # cleared only once set: a load finishing meanwhile cannot be lost
            self._loading = False
            return self._take(done)
        now = self._clock()
        if self._loading or self._dir is None or now < self._next_check_ns:
            return False
        self._next_check_ns = now + self._interval_ns
        self._checks += 1
        expired = self.current.expires_at is not None and self._wall_clock() >= self.current.expires_at
        if not expired and _signature(self._dir) == self._signature:
            return False
        self._loading = True
        self._background(self._load_in_background)
        return False

    def statistics(self) -> ContentStatistics:
        return ContentStatistics(
            len(self.current),
            self.current.counts(),
            self._loads,
            self._reload_errors,
            self._checks,
            self._unchanged,
        )

    def _load_in_background(self) -> None:
        log = self._log
        try:
            loaded = self._read()
        except Exception:  # supervision boundary: the loader thread; the last good list stays
            log.exception("IOC content reload crashed")
            issue = Issue(IssueSeverity.ERROR, str(self._dir), None, "the reload crashed (see the log)")
            loaded = _Loaded(self._signature, None, (issue,))
        self._done = loaded

    def _take(self, loaded: _Loaded) -> bool:
        self._signature = loaded.signature
        if loaded.iocs is None:
            self.current.expires_at = None  # not retried every second: the content must change first
            self._reload_errors += 1
            self.problem = f"new IOC content rejected, {len(self.current)} entries stay in force: " + str(
                ContentError(loaded.issues)
            )
            self._log.error("%s", self.problem)
            return False
        self.problem = None
        if loaded.iocs == self.current:
            self.current.expires_at = loaded.iocs.expires_at
            self._unchanged += 1
            self._loads += 1
            return False
        self._install(loaded)
        return True

    def _install(self, loaded: _Loaded) -> None:
        assert loaded.iocs is not None
        for issue in loaded.issues:
            self._log.warning("%s", issue)
        self.current = loaded.iocs
        self._loads += 1
        self._log.info("IOCs active: %s from %s", self.current.counts() or "none", self._dir or "-")

    def _read(self) -> _Loaded:
        """Every file of one version of the content directory. Issues name `content_dir/<file>`."""
        if self._dir is None:
            return _Loaded(None, IocSet(), ())
        signature = _signature(self._dir)
        if signature is None:
            issue = Issue(IssueSeverity.ERROR, self._dir, None, "content directory missing or unreadable")
            return _Loaded(None, None, (issue,))
        resolved, files = signature
        builder = IocBuilder()
        issues: list[Issue] = []
        now_s = self._wall_clock()
        for name, *_ in files:
            source = os.path.join(self._dir, name)
            path = os.path.join(resolved, name)
            read_file(builder, path, source, max_bytes=self._max_bytes, issues=issues, now_s=now_s)
        iocs = builder.build(issues)
        return _Loaded(signature, None if has_errors(issues) else iocs, tuple(issues))


def _signature(content_dir: str) -> Signature:
    """The resolved slot and its visible files; None if the directory cannot be read."""
    resolved = os.path.realpath(content_dir)
    try:
        with os.scandir(resolved) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
            files = tuple(_file_sig(e) for e in entries)
    except OSError:
        return None
    return resolved, files


def _file_sig(entry: os.DirEntry[str]) -> _FileSig:
    try:
        st = entry.stat()
    except OSError:
        return (entry.name, -1, -1, -1, -1)
    return (entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
