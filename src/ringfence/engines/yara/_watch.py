"""The rules in force: one version of the content directory, compiled, recompiled when it changes.

The agent swaps the content directory (a symlink to a complete, never-modified slot) atomically; a load
resolves it once and reads every file from there, so it compiles one version whole.

`poll` runs on the extension's main thread, from `on_tick`, never inside `on_auth`. It stats the directory
at most once per interval and compiles only when the files changed. The compile runs there too, not on a
thread: yara-x's compiler holds the GIL for its whole run (5,000 rules: about 0.6 s), so a thread would
stall the AUTH handler just the same and add a hand-over. A version that fails keeps the last good rules,
counts the failure and keeps its one-line `problem` until a good version comes; the same bad version is
not compiled again until the content changes again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ringfence.engines.yara._config import YaraConfig
from ringfence.engines.yara._rules import (
    EMPTY,
    Compiled,
    Issue,
    IssueSeverity,
    RulesError,
    RuleSet,
    compile_files,
)

_FileSig = tuple[str, int, int, int, int]  # name, inode, size, mtime ns, ctime ns
Signature = tuple[str, tuple[_FileSig, ...]] | None  # resolved directory and its files; None: unreadable


@dataclass(frozen=True, slots=True)
class RulesStatistics:
    rules: int  # rules in force
    block_rules: int  # of them, tagged `block`
    files: int
    content_version: str  # RuleSet.version of the rules in force ("" when there are none)
    loads: int  # successful compiles, the first one included
    compile_errors: int  # versions refused after start (the first load raises instead)
    checks: int  # signature checks (at most one per interval)


class WatchedRules:
    def __init__(self, config: YaraConfig, clock: Callable[[], int], log: logging.Logger) -> None:
        self._dir = config.content_dir
        self._max_file_bytes = config.max_rules_file_bytes
        self._interval_ns = config.recheck_interval_ns
        self._clock = clock
        self._log = log
        self.current: RuleSet = EMPTY
        self.problem: str | None = None  # why the newest content is not in force; None: it is
        self._signature: Signature = None
        self._next_check_ns = 0
        self._loads = self._compile_errors = self._checks = 0

    @property
    def configured(self) -> bool:
        return self._dir is not None

    def load(self) -> None:
        """The first load. Raises `RulesError` with every issue of every file."""
        signature, compiled = self._read()
        self._signature = signature
        self._next_check_ns = self._clock() + self._interval_ns
        if compiled.ruleset is None:
            raise RulesError(compiled.issues)
        self._install(compiled.ruleset, compiled.issues)

    def poll(self) -> bool:
        """Compile the content if the interval passed and it changed. True when new rules came into force
        (also when they compile to the same version: the caller decides what that means)."""
        now = self._clock()
        if self._dir is None or now < self._next_check_ns:
            return False
        self._next_check_ns = now + self._interval_ns
        self._checks += 1
        if _signature(self._dir) == self._signature:
            return False
        signature, compiled = self._read()
        self._signature = signature
        if compiled.ruleset is None:
            self._compile_errors += 1
            self.problem = (
                f"new YARA rules refused, {self.current.rule_count} rules of version "
                f"{self.current.version or '-'} stay in force: {RulesError(compiled.issues)}"
            )
            self._log.error("%s", self.problem)
            return False
        self.problem = None
        self._install(compiled.ruleset, compiled.issues)
        return True

    def statistics(self) -> RulesStatistics:
        rs = self.current
        return RulesStatistics(
            rs.rule_count, rs.block_rule_count, len(rs.files), rs.version,
            self._loads, self._compile_errors, self._checks,
        )  # fmt: skip

    def _install(self, ruleset: RuleSet, issues: tuple[Issue, ...]) -> None:
        for issue in issues:
            self._log.warning("%s", issue)
        self.current = ruleset
        self._loads += 1
        self._log.info(
            "YARA rules active: %d rules (%d block) from %d files, version %s",
            ruleset.rule_count, ruleset.block_rule_count, len(ruleset.files), ruleset.version or "-",
        )  # fmt: skip

    def _read(self) -> tuple[Signature, Compiled]:
        if self._dir is None:
            return None, Compiled(EMPTY, ())
        signature = _signature(self._dir)
        if signature is None:
            issue = Issue(IssueSeverity.ERROR, self._dir, None, "content directory missing or unreadable")
            return None, Compiled(None, (issue,))
        resolved, files = signature
        names = [name for name, *_ in files]
        return signature, compile_files(resolved, names, self._dir, max_file_bytes=self._max_file_bytes)


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
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return (entry.name, -1, -1, -1, -1)
    return (entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
