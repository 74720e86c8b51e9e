"""Following a signed content repository: the update thread, and which staged version each engine runs.

    ContentUpdateLoop(updates, schedule, store, contents, ...).step()   one look: update if due, activate
    .start() / .stop()       the thread that calls step() (network I/O happens there, off every hot path)
    .status()                ContentUpdateStatus for the health document
    .problems()              what makes the agent degraded: updates failing past the grace period

The TUF client (`ringfence.content`) fetches and verifies and stages each engine's newest package in
STATE_DIR/content-updates/<engine>/<version>/; this module picks, per engine, the version to run
(`[content] follow`) from what is staged and hands it to the content store, which writes a new slot and
swaps it active. The engine (the extension whose id is the manifest's `engine`) reloads from its
content directory as it does after an operator's file change. The package is then on trial (the content
watcher's last-known-good rule, agent/_content.py): a Problem from the running engine (it refused the
reload) or a failed start puts the last good slot back and the version is never tried again
(`StagedContent.rejected`, kept across runs); about 10 s without either proves it good (`good.json`,
what a restart runs). Before that, with `[content] shadow_bake_s` above 0, the version bakes in a
shadow instance beside the active one (agent/_shadow.py) and goes active only if promoted there; a
version rejected in shadow never reaches the active instance.

Before a version goes active it is checked against the engine's schema contract (`check`, which is
agent/_validate.py's `package_problem` in the agent: a sandboxed child, as `content validate` runs it):
a file whose sha256 is not its manifest's, another interface version than the engine's, a rule that
names a field the engine does not supply or compares a value of the wrong type. Such a version is
refused with the reason (the engine's `problem` in status, and in `rejected` for this run) and never
reaches the engine; the active content stays. Other problems of the content are the engine's verdict,
as above.

Nothing here stops the agent: an unreachable, expired or tampered repository is a problem in the
report (the active content stays), retried with backoff (`UpdateSchedule`); an exception in a round is
logged with its traceback, counted, and the thread goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ringfence.agent._config import ContentSection
from ringfence.agent._content import ContentError, ContentStore, ExtensionState, StagedContent
from ringfence.agent._shadow import ShadowRuns
from ringfence.agent._validate import CHECK_DID_NOT_RUN
from ringfence.content import UpdateError, UpdateSchedule, staged_dir, staged_versions, version_key
from ringfence.events import ContentUpdateStatus, EngineContentStatus
from ringfence.fleet import FleetAssignments

if TYPE_CHECKING:
    from ringfence.content import ContentUpdates, UpdateReport

log = logging.getLogger(__name__)

PackageCheck = Callable[[str, str], "str | None"]
"""(engine, staged package dir) -> why it must not go active, or None."""
LOOK_INTERVAL_S = 1.0  # how often the thread looks whether an update is due (the schedule decides)
STOP_TIMEOUT_S = 5.0
Follow = str | dict[str, str]


def follow_of(follow: Follow, engine: str) -> str:
    """The policy for one engine: the table's entry (newest when it has none), or the one word."""
    if isinstance(follow, str):
        return follow
    return follow.get(engine, "newest")


def choose(versions: list[str], policy: str, rejected: set[str]) -> tuple[str | None, str]:
    """The staged version to run (of `versions`, lowest first) and, when there is none, why."""
    usable = [v for v in versions if v not in rejected]
    if policy == "newest":
        return (usable[-1], "") if usable else (None, "nothing staged that was not rejected")
    if policy == "n-1":
        if len(usable) < 2:
            return None, "n-1: only one version staged so far; the active content stays"
        return usable[-2], ""
    if policy in rejected:
        return None, f"pinned {policy} was rejected by the engine"
    if policy in versions:
        return policy, ""
    return None, f"{policy} is not staged (yet)"


class ContentUpdateLoop:
    """Runs `updates` on `schedule` and activates what `follow` picks. `clock` is monotonic seconds,
    `wall_ns` the wall clock (for the health document only)."""

    def __init__(
        self,
        updates: ContentUpdates,
        schedule: UpdateSchedule,
        store: ContentStore,
        contents: Mapping[str, StagedContent],
        *,
        state_dir: str,
        url: str,
        follow: Follow = "newest",
        failure_grace_s: float = 21600.0,
        extension_state: ExtensionState | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        setup_problem: str = "",
        check: PackageCheck | None = None,
        shadow: ShadowRuns | None = None,
        assignments: FleetAssignments | None = None,
    ) -> None:
        self._updates, self._schedule, self._store = updates, schedule, store
        self.assignments = assignments  # a fleet chooses each engine's version (else `follow` does)
        self.shadow = shadow if shadow is not None and shadow.policy.bake_s > 0 else None
        self._check = check
        self._refused: dict[tuple[str, str], str] = {}  # (engine, version) -> why, once checked
        self._contents = contents
        self._state_dir, self._url, self._follow = state_dir, url, follow
        self._grace_s = failure_grace_s
        self._extension_state = extension_state
        self._clock, self._wall_ns = clock, wall_ns
        self._setup_problem = setup_problem
        self._lock = threading.Lock()  # status() runs on the status thread
        self._last_at_ns = 0
        self._failing_since_s: float | None = None
        self._failing_since_ns = 0
        self._report: UpdateReport | None = None
        self._engine_problems: dict[str, str] = {}
        self._activations = 0
        self.round_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringfence-updates", daemon=True)

    # -- the thread --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():  # in a download: bounded by the client's own deadline
                log.warning("content update still running at stop; it ends within the client's deadline")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # supervision boundary: one bad round must not end the updates
                self.round_errors += 1
                log.exception("content update round failed; going on")
            self._stop.wait(LOOK_INTERVAL_S)

    # -- one round ---------------------------------------------------------------------------------------

    def step(self) -> UpdateReport | None:
        """Update if due, then activate what the policy picks. Returns the report, None if not due."""
        now = self._clock()
        report = self._schedule.run_if_due(self._updates, now)
        if report is None:
            if self.shadow is not None and self.shadow.baking() and not self._stop.is_set():
                self.activate()  # a bake is judged every look, not only after an update
            return None
        previous = self._report
        if report.warnings and (previous is None or previous.warnings != report.warnings):
            for line in report.warnings:
                log.warning("content repository %s: %s", self._url, line)
        with self._lock:
            self._report, self._last_at_ns = report, self._wall_ns()
            if report.ok:
                self._failing_since_s = None
            elif self._failing_since_s is None:
                self._failing_since_s, self._failing_since_ns = now, self._last_at_ns
        if not self._stop.is_set():  # an update that outlived stop() activates nothing
            self.activate()
        return report

    def activate(self) -> None:
        """For each engine with a staged version: make the one `follow` picks active, if it is not."""
        problems: dict[str, str] = {}
        for engine in self._engines():
            problem = self._activate_one(engine)
            if problem:
                problems[engine] = problem
        with self._lock:
            self._engine_problems = problems

    def _engines(self) -> list[str]:
        base = os.path.join(self._state_dir, "content-updates")
        try:
            staged = {name for name in os.listdir(base) if not name.startswith(".")}
        except FileNotFoundError:
            staged = set()
        return sorted(staged)

    def _activate_one(self, engine: str) -> str:
        item = self._contents.get(engine)
        if item is None:
            return f"staged for {engine}, which is not an enabled extension: not activated"
        policy = self._policy(engine)
        version, why = (
            (None, "the fleet assigned no version of this engine yet: the active content stays")
            if policy is None
            else choose(staged_versions(self._state_dir, engine), policy, item.rejected)
        )
        if version is None or version == item.package_version:
            return why or self._refusal(engine)
        refused = self._contract(engine, version)
        if refused:
            return refused
        path = staged_dir(self._state_dir, engine, version)
        back = (
            self.assignments is not None
            and bool(item.package_version)
            and version_key(version) < version_key(item.package_version)
        )
        if back:  # the fleet rolls this host back: the older version ran here before, no bake delays it
            log.warning(
                "content of %s: the fleet assigned %s, back from %s", engine, version, item.package_version
            )
        held, promoted = (None, False) if back else self._through_shadow(item, engine, version, path)
        if held is not None:
            return held
        seen = self._extension_state(engine) if self._extension_state is not None else None
        try:
            if promoted:
                self._store.activate_candidate(item, version, path, seen)
            else:
                self._store.activate_package(item, version, path, seen)
        except (ContentError, OSError) as e:
            failure = f"package {version} not activated, slot {item.slot} stays: {e}"
        else:
            failure = ""
        if failure:
            log.error("content of %s: %s", engine, failure)
            return failure
        self._activations += 1
        log.info("content of %s: package %s active as slot %d", engine, version, item.slot)
        return ""

    def _policy(self, engine: str) -> str | None:
        """The version `choose` is to pick for `engine`: the fleet's assignment (None: it assigned none),
        or the `follow` policy."""
        if self.assignments is None:
            return follow_of(self._follow, engine)
        return self.assignments.current().get(engine)

    def _through_shadow(
        self, item: StagedContent, engine: str, version: str, path: str
    ) -> tuple[str | None, bool]:
        """(what to report while the version is held back, or None to activate it; whether it was
        promoted by its shadow run, its baked slot then being the one to activate)."""
        if self.shadow is None:
            return None, False
        verdict = self.shadow.look(item, version, path)
        if verdict.action == "baking":
            return "", False
        if verdict.action == "reject":
            return f"package {version} {verdict.reason}", False
        if verdict.action == "skip":
            log.warning(
                "content of %s: package %s goes active without a shadow run: %s",
                engine,
                version,
                verdict.reason,
            )
        return None, verdict.action == "promote"

    def _contract(self, engine: str, version: str) -> str:
        """Why `version` must not go active ("" if it may): checked once per version (the check runs a
        sandboxed child), refused ones kept out of `choose` for this run."""
        if self._check is None:
            return ""
        key = (engine, version)
        if key not in self._refused:
            problem = self._check(engine, staged_dir(self._state_dir, engine, version)) or ""
            self._refused[key] = problem
            if problem:
                log.error("content of %s: package %s %s; the active content stays", engine, version, problem)
        problem = self._refused[key]
        if not problem:
            return ""
        item = self._contents.get(engine)
        if item is not None and problem.startswith(CHECK_DID_NOT_RUN):  # not kept: tried again next run
            item.rejected.add(version)
            item.rejected_why.setdefault(version, f"refused: {problem}")
        elif item is not None and version not in item.rejected:  # the contract's verdict: for good
            self._store.reject(item, [version], f"refused by the contract check: {problem}")
        return f"package {version} {problem}"

    def _refusal(self, engine: str) -> str:
        """The newest version of `engine` the contract check refused, with why ("" for none): it stays
        the engine's problem in status while the one before it runs."""
        refused = [(v, why) for (e, v), why in self._refused.items() if e == engine and why]
        if not refused:
            return ""
        version, why = max(refused, key=lambda r: version_key(r[0]))
        return f"package {version} {why}"

    # -- health ------------------------------------------------------------------------------------------

    def status(self) -> ContentUpdateStatus:
        with self._lock:
            report, problems = self._report, dict(self._engine_problems)
            failing = self._failing_since_ns if self._failing_since_s is not None else 0
            last_at = self._last_at_ns
        engines = {}
        for engine in sorted(set(self._engines()) | set(self._contents)):
            item = self._contents.get(engine)
            engines[engine] = EngineContentStatus(
                staged=staged_versions(self._state_dir, engine),
                active=item.package_version if item is not None else "",
                follow=self._follow_line(engine),
                rejected=sorted(item.rejected) if item is not None else [],
                trial=item.package_on_trial if item is not None else False,
                problem=problems.get(engine, ""),
            )
        return ContentUpdateStatus(
            url=self._url,
            last_at_ns=last_at,
            ok=report.ok if report is not None else not self._setup_problem,
            failures=self._schedule.failures,
            failing_since_ns=failing,
            next_in_s=max(0.0, self._schedule.next_due_s - self._clock()),
            staged=[f"{s.engine} {s.version}" for s in report.staged] if report is not None else [],
            problems=([self._setup_problem] if self._setup_problem else [])
            + (list(report.problems) if report is not None else []),
            warnings=list(report.warnings) if report is not None else [],
            engines=engines,
            activations=self._activations,
            failure_grace_s=self._grace_s,
        )

    def _follow_line(self, engine: str) -> str:
        if self.assignments is None:
            return follow_of(self._follow, engine)
        assigned = self.assignments.current().get(engine)
        return f"fleet: {assigned}" if assigned else "fleet: none assigned yet"

    def nudge(self) -> None:
        """Update at the next look (the fleet changed an assignment): not at the schedule's next time."""
        self._schedule.next_due_s = 0.0

    def problems(self) -> list[str]:
        """One line if updates have kept failing for longer than the grace period, else none."""
        with self._lock:
            since, report = self._failing_since_s, self._report
        if since is None or report is None:
            return []
        failing_s = self._clock() - since
        if failing_s <= self._grace_s:
            return []
        first = report.problems[0] if report.problems else "failed"
        return [
            f"content updates failing for {failing_s:.0f} s (grace {self._grace_s:g} s; the active content "
            f"stays): {first}"
        ]


def make_update_loop(
    content: ContentSection,
    state_dir: str,
    store: ContentStore,
    contents: Mapping[str, StagedContent],
    extension_state: ExtensionState | None,
    *,
    check: PackageCheck | None = None,
    shadow: ShadowRuns | None = None,
    assignments: FleetAssignments | None = None,
) -> ContentUpdateLoop | None:
    """The loop for `[content]` (a ContentSection), None when no `url` is set. A trust anchor named by
    `root` is installed when none is; one that cannot be is a problem in status, never a failed start."""
    if not content.url:
        return None
    from ringfence.content import TufContentUpdater, UpdateConfig, install_trusted_root  # python-tuf, httpx

    config = UpdateConfig(url=content.url, state_dir=state_dir)
    setup_problem = ""
    if content.root and not os.path.exists(config.trusted_root):
        try:
            install_trusted_root(config, content.root)
        except UpdateError as e:
            setup_problem = f"content.root: {e}"
    if setup_problem:
        log.error("%s", setup_problem)
    retry_min = min(60.0, content.update_interval_s)
    assigned = assignments.current if assignments is not None else None
    return ContentUpdateLoop(
        TufContentUpdater(config, assigned=assigned),
        UpdateSchedule(
            interval_s=content.update_interval_s,
            retry_min_s=retry_min,
            retry_max_s=content.update_interval_s,
        ),
        store,
        contents,
        state_dir=state_dir,
        url=content.url,
        follow=content.follow,
        failure_grace_s=content.failure_grace_s,
        extension_state=extension_state,
        setup_problem=setup_problem,
        check=check,
        shadow=shadow,
        assignments=assignments,
    )
