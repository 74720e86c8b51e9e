"""The rule set in force: every rule file of the content directory, reloaded off the event path.

The agent swaps the content directory (a symlink to a complete, never-modified slot) atomically; a load
resolves it once and reads that one version. A reload runs on a background thread and is taken by the
next `poll`. A new version in which no rule loads keeps the last good rule set and says why in
`problem`; a version in which some rules fail is taken, and its failures are the `problem`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ringfence.engines.sigma._config import SigmaConfig
from ringfence.engines.sigma._load import load_directory, rule_files
from ringfence.engines.sigma._ruleset import Issue, IssueSeverity, RulesError, RuleSet

Signature = tuple[str, tuple[tuple[str, int, int, int], ...]] | None
Background = Callable[[Callable[[], None]], None]


def run_in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="sigma-reload", daemon=True).start()


def usable(ruleset: RuleSet) -> bool:
    """A rule set worth putting in force: something loaded, or nothing was there to load."""
    return ruleset.loaded > 0 or (not ruleset.errors and ruleset.files == 0)


def summary(ruleset: RuleSet) -> str | None:
    """One line for `status` naming the rule files that failed, None when every rule loaded."""
    errors = ruleset.errors
    if not errors:
        return None
    return str(RulesError(errors, f"{len(errors)} Sigma rule problems, {ruleset.loaded} rules in force"))


class WatchedRules:
    def __init__(
        self, config: SigmaConfig, clock: Callable[[], int], log: logging.Logger, background: Background
    ) -> None:
        self._config = config
        self._clock = clock
        self._log = log
        self._background = background
        self.current = RuleSet()
        self.problem: str | None = None
        self.reloads = self.rejected = 0
        self._signature: Signature = None
        self._next_check_ns = 0
        self._loading = False
        self._done: tuple[Signature, RuleSet] | None = None

    def load(self) -> None:
        """The first load, synchronous; raises `RulesError` if rule files exist and none loads."""
        signature, ruleset = self._read()
        self._signature = signature
        self._next_check_ns = self._clock() + self._config.recheck_interval_ns
        if not usable(ruleset):
            raise RulesError(ruleset.issues)
        self._install(ruleset)

    def poll(self) -> bool:
        """Take a finished reload or start one; True when a new rule set came into force."""
        done, self._done = self._done, None
        if done is not None:
            self._loading = False
            return self._take(*done)
        now = self._clock()
        directory = self._config.content_dir
        if self._loading or directory is None or now < self._next_check_ns:
            return False
        self._next_check_ns = now + self._config.recheck_interval_ns
        if _signature(directory) == self._signature:
            return False
        self._loading = True
        self._background(self._reload)
        return False

    def _reload(self) -> None:
        try:
            self._done = self._read()
        except Exception:  # noqa: BLE001 (supervision boundary: the loader thread; the rules in force stay)
            self._log.exception("Sigma rule reload crashed")
            self._done = (
                self._signature,
                _failed(str(self._config.content_dir), "the reload crashed (see the log)"),
            )

    def _take(self, signature: Signature, ruleset: RuleSet) -> bool:
        self._signature = signature
        if not usable(ruleset):
            self.rejected += 1
            self.problem = f"new Sigma rules rejected, {self.current.loaded} rules stay in force: " + str(
                RulesError(ruleset.issues)
            )
            self._log.error("%s", self.problem)
            return False
        self._install(ruleset)
        self.reloads += 1
        return True

    def _install(self, ruleset: RuleSet) -> None:
        for issue in ruleset.issues:
            self._log.warning("%s", issue)
        self.current = ruleset
        self.problem = summary(ruleset)
        self._log.info(
            "Sigma rules in force: %d active, %d waiting for their logsource %s, %d correlations, "
            "%d problems",
            ruleset.active,
            sum(ruleset.waiting.values()),
            dict(sorted(ruleset.waiting.items())),
            len(ruleset.correlations),
            len(ruleset.errors),
        )

    def _read(self) -> tuple[Signature, RuleSet]:
        directory = self._config.content_dir
        if directory is None:
            return None, RuleSet()
        signature = _signature(directory)
        if signature is None:
            return None, _failed(directory, "content directory missing or unreadable")
        resolved = signature[0]
        try:
            return signature, load_directory(resolved, directory, self._config.placeholders)
        except OSError as e:  # a subdirectory made unreadable since the signature was taken
            return None, _failed(directory, f"content directory unreadable: {e.strerror}")


def _failed(where: str, message: str) -> RuleSet:
    return RuleSet(files=1, issues=[Issue(IssueSeverity.ERROR, where, None, None, message)])


def _signature(directory: str) -> Signature:
    resolved = os.path.realpath(directory)
    try:
        names = rule_files(resolved)
        stats = [(n, os.stat(os.path.join(resolved, n))) for n in names]
    except OSError:
        return None
    return resolved, tuple((n, s.st_ino, s.st_size, s.st_mtime_ns) for n, s in stats)
