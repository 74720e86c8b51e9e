"""From config to running extensions: specs for the supervisor, wiring to the broker and responses."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ringfence.agent._breakers import (
    BreakerError,
    ContentHistory,
    DenyRateBreaker,
    DenyRatePolicy,
    StartLoopBreaker,
)
from ringfence.agent._config import Config
from ringfence.agent._content import (
    ContentError,
    ContentEvent,
    ContentStore,
    ContentWatcher,
    CrashLoopPolicy,
    ExtensionView,
    StagedContent,
    migrate_settings,
)
from ringfence.agent._errors import AgentError
from ringfence.agent._shadow import BUSY, ShadowPolicy, ShadowRuns, shadow_id
from ringfence.agent._updates import make_update_loop
from ringfence.agent._validate import package_problem
from ringfence.content import PackageError, staged_versions, version_key
from ringfence.content._default import default_pack
from ringfence.events import (
    ActionRequest,
    ActionResult,
    AuthRequest,
    DetectionFinding,
    ExtensionContentStatus,
    ExtensionStatistics,
    HeaderStamper,
    Severity,
    SubscriberAuthStatistics,
)
from ringfence.extensions import (
    ExtensionError,
    ExtensionSpec,
    Supervisor,
    SupervisorConfig,
    discover,
    probe_manifest,
)
from ringfence.fleet import ASSIGNMENTS_FILE, FleetAssignments
from ringfence.response import ResponseConfig, ResponseExecutor

if TYPE_CHECKING:
    from ringfence.agent._daemon import Agent

log = logging.getLogger(__name__)

MANIFEST_TIMEOUT_S = 20.0  # `extensions list --manifests`: how long one extension may take to say who it is


def reachable_by_others(path: str) -> bool:
    """Whether an unprivileged user can reach `path` (every ancestor searchable by others)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts)):
        ancestor = os.sep.join(parts[:i]) or os.sep
        try:
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                return False
        except FileNotFoundError:
            return True  # created below by us, with a searchable mode
    return True


def _scratch_dir(config: Config, ext_id: str) -> str | None:
    """The extension's own writable directory, if its user can reach it (else it gets none)."""
    base = os.path.join(config.agent.state_dir, "extensions")
    if not reachable_by_others(config.agent.state_dir):
        log.warning("extension %s gets no scratch dir: %s is not searchable by its user", ext_id, base)
        return None
    return os.path.join(base, ext_id)


def extension_specs(
    config: Config, contents: Mapping[str, StagedContent] | None = None
) -> list[ExtensionSpec]:
    """One spec per enabled extension. `contents`: what the agent staged for each; an extension gets its
    content directory to read, and nothing of the operator's paths."""
    ext = config.extensions
    contents = contents or {}
    _, all_settings = migrate_settings({}, ext.config, warn=False)  # stage_content warned
    specs = []
    for name in ext.enabled:
        if name in ext.disabled:
            continue
        ext_id, _, entry = name.partition("=")  # "id=module:attr" names a class outside entry points
        content = contents.get(ext_id)
        specs.append(
            ExtensionSpec(
                id=ext_id,
                entry=entry or ext_id,
                settings=all_settings.get(ext_id, {}),
                content_dir=content.content_dir if content else None,
                content_origins=content.staged_paths() if content else {},
                state_dir=_scratch_dir(config, ext_id),
                read_paths=(content.root,) if content else (),
                sys_path=ext.import_paths,
                sandbox=ext.sandbox,
                user=ext.user,
                memory_mb=ext.memory_mb,
                cpu_percent=ext.cpu_percent,
                auth_deadline_cap_ms=config.broker.auth_deadline_ms,
            )
        )
    return specs


def _enabled_ids(config: Config) -> set[str]:
    ext = config.extensions
    return {name.partition("=")[0] for name in ext.enabled if name not in ext.disabled}


DEFAULT_PACK_ENGINES = {"sigma": "ringfence.sigma"}
"""The extension that runs each engine's part of the default pack."""


def with_default_pack(
    content: Mapping[str, Mapping[str, str]], enabled: set[str]
) -> dict[str, dict[str, str]]:
    """`content` with the default pack's files (content/default/) added for each enabled engine, under
    names `default-<file>` that an operator's own files cannot take (theirs win if they do)."""
    out = {ext_id: dict(files) for ext_id, files in content.items()}
    try:
        pack = default_pack()
    except PackageError as e:  # a pack that is not the one built and validated is not run
        raise ContentError(f"the default content pack: {e}") from e
    for engine, paths in pack.items():
        ext_id = DEFAULT_PACK_ENGINES.get(engine)
        if ext_id is None or ext_id not in enabled:
            continue
        files = out.setdefault(ext_id, {})
        for path in paths:
            files.setdefault(f"default-{os.path.basename(path)}", path)
    return out


def stage_content(
    config: Config, *, safe: bool = False, on_event: ContentEvent | None = None
) -> tuple[ContentStore, dict[str, StagedContent]]:
    """Read every enabled extension's content files (as root) into the state dir (`safe`: the
    last-known-good slots where there are some, see ContentStore.stage_all). Raises AgentError, one
    line naming each file at fault, before anything is started (ContentError is one)."""
    content, _ = migrate_settings(config.extensions.content, config.extensions.config)
    enabled = _enabled_ids(config)
    content = with_default_pack(content, enabled) if config.extensions.default_pack else content
    for ext_id in sorted(set(content) - enabled):
        log.warning("content configured for %s, which is not enabled: not staged", ext_id)
    wanted = {ext_id: files for ext_id, files in content.items() if ext_id in enabled and files}
    state_dir = config.agent.state_dir
    if config.content.url:  # every enabled extension gets a content dir that signed packages can fill
        wanted = {ext_id: content.get(ext_id, {}) for ext_id in enabled}
    if wanted and config.extensions.sandbox and not reachable_by_others(state_dir):
        raise AgentError(
            f"state dir {state_dir}: extensions cannot reach their content there (a parent directory is "
            "not searchable by others, o+x); choose a state dir whose parents are"
        )
    store = ContentStore(state_dir)
    store.on_event = on_event
    packages = store.previous_packages(wanted) if config.content.url else {}
    return store, store.stage_all(wanted, packages, safe=safe)


CONTENT_SOURCE = "ringfence.content"
BREAKER_INTERVAL_S = 1.0


class _Extensions:
    """The supervisor as the agent sees it: start (and wait, bounded, for the first handshakes), stop."""

    def __init__(self, agent: Agent) -> None:
        config = agent.config
        self.responder = ResponseExecutor(
            ResponseConfig(
                state_dir=config.agent.state_dir,
                management_addresses=config.response.management_addresses,
                protected_pids=frozenset({os.getpid(), 1}),
                protected_paths=config.response.protected_paths,
                scopes=config.response.scopes(),
            ),
            protected_pids=self._extension_pids,
        )
        state_dir, section = config.agent.state_dir, config.content
        self._broker = agent.broker
        self._state_dir = state_dir
        self.start_loop: StartLoopBreaker | None = getattr(agent, "start_loop", None)
        self.safe_mode = self.start_loop.safe_mode if self.start_loop is not None else ""
        self.history = ContentHistory(state_dir)
        self.deny_rate = DenyRateBreaker(
            state_dir,
            DenyRatePolicy(
                factor=section.deny_rate_factor,
                min_rate=section.deny_rate_min,
                min_requests=section.deny_rate_min_requests,
                window_s=section.deny_rate_window_s,
                watch_s=section.deny_rate_watch_s,
            ),
            self._auth_counts,
            agent.broker.arbiter.set_advisory,
            on_trip=self._deny_rate_tripped,
            version_of=lambda name: item.package_version if (item := self.contents.get(name)) else "",
        )
        agent.broker.arbiter.on_advisory_deny = self._would_be_deny
        agent.broker.arbiter.on_shadow_deny = self._shadow_would_deny
        self._stamper = HeaderStamper(CONTENT_SOURCE, config.host, agent.clock)
        self.content_store, self.contents = stage_content(
            config, safe=bool(self.safe_mode), on_event=self._content_event
        )
        self.content = ContentWatcher(
            self.content_store,
            self.contents,
            extension_state=self._extension_state,
            crash_loop=CrashLoopPolicy(section.crash_loop_crashes, section.crash_loop_window_s),
        )
        extensions = config.extensions
        self._config = config
        self.shadow = ShadowRuns(
            ShadowPolicy(
                bake_s=section.shadow_bake_s,
                cost_factor=section.shadow_cost_factor,
                finding_factor=section.shadow_finding_factor,
                deny_rate_delta=section.shadow_deny_rate_delta,
            ),
            self,
            self.content_store,
        )
        self.updates = (
            None
            if self.safe_mode  # safe start: no network, the last-known-good content only
            else make_update_loop(
                section,
                state_dir,
                self.content_store,
                self.contents,
                self._extension_state,
                check=lambda engine, path: package_problem(path, engine, extensions),
                shadow=self.shadow,
                assignments=(
                    FleetAssignments(os.path.join(state_dir, ASSIGNMENTS_FILE))
                    if config.fleet.url and config.fleet.follow_assignments
                    else None
                ),
            )
        )
        if self.updates is not None and self.updates.assignments is not None:
            self.updates.assignments.on_change = self.updates.nudge
        self._stop_breakers = threading.Event()
        self._breakers = threading.Thread(target=self._run_breakers, name="ringfence-breakers", daemon=True)
        specs = extension_specs(config, self.contents)
        for spec in specs:
            if spec.state_dir:
                os.makedirs(os.path.dirname(spec.state_dir), exist_ok=True)
                os.chmod(os.path.dirname(spec.state_dir), 0o711)  # noqa: S103 - the sandbox user passes through
                os.makedirs(spec.state_dir, mode=0o700, exist_ok=True)  # the sandbox gives it to the user
        broker = agent.broker
        self.supervisor = Supervisor(
            specs,
            config=SupervisorConfig(event_linger_ms=config.extensions.event_linger_ms),
            findings_sink=broker.publish,
            action_handler=self._act,
            on_auth_ready=lambda _id: broker.invalidate_auth_cache(),
            on_first_ready=broker.subscribe,
            on_gone=broker.withdraw,
            on_action_refused=self.responder.refuse,
        )

    def _extension_state(self, ext_id: str) -> ExtensionView | None:
        """One extension as the content watcher's last-known-good check needs it."""
        for st in self.supervisor.statistics():
            if st.id == ext_id:
                problem = st.last_error if st.state == "running" else ""  # its Problem, while it runs
                handshakes = st.restart_reasons.get("handshake", 0)
                return ExtensionView(st.state, st.restarts, handshakes, problem, st.failures)
        return None

    # -- shadow instances (agent/_shadow.py's ShadowHost) -------------------------------------------------

    def start_shadow(self, ext_id: str, content_dir: str) -> str:
        sid = shadow_id(ext_id)
        active = self.supervisor.spec(ext_id)
        if active is None:
            return f"{ext_id} is not configured here"
        if self.supervisor.spec(sid) is not None:
            return BUSY  # the last one is still going away
        state_dir = _scratch_dir(self._config, sid)
        if state_dir:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)  # the sandbox gives it to the user
        spec = dataclasses.replace(
            active,
            instance=sid,
            shadow=True,
            content_dir=content_dir,
            content_origins={},
            state_dir=state_dir,
        )
        try:
            self.supervisor.add(spec)
        except ValueError as e:
            return str(e)
        return ""

    def _shadow_would_deny(self, name: str, request: AuthRequest, _reason: str) -> None:
        self.shadow.would_deny(name, request.path)

    def retire_shadow(self, ext_id: str, reason: str) -> None:
        self.supervisor.retire(shadow_id(ext_id), reason)

    def extension(self, instance_id: str) -> ExtensionStatistics | None:
        return next((st for st in self.supervisor.statistics() if st.id == instance_id), None)

    def auth(self, instance_id: str) -> SubscriberAuthStatistics | None:
        return self._broker.arbiter.statistics().subscribers.get(instance_id)

    # -- the breakers ------------------------------------------------------------------------------------

    def _content_event(self, item: StagedContent, what: str, detail: str) -> None:
        """Every content change (under the store's lock): the history, and the breakers' part in it."""
        self.history.append(item.ext_id, what, item.slot, item.package_version, detail)
        if what == "activated":
            if self.start_loop is not None:
                self.start_loop.content_changed()
            self.deny_rate.content_changed(item.ext_id)
        supervisor: Supervisor | None = getattr(self, "supervisor", None)  # None while staging at start
        if what in ("crash-loop", "rejected", "rolled-back") and supervisor is not None:
            supervisor.release(item.ext_id, f"its last-known-good content is back ({what})")

    def _auth_counts(self) -> dict[str, tuple[int, int]]:
        subs = self._broker.arbiter.statistics().subscribers
        return {name: (s.asked, s.denied + s.advisory_denied) for name, s in subs.items()}

    def _would_be_deny(self, name: str, request: AuthRequest, reason: str) -> None:
        self.deny_rate.record_would_be(name, request.path, reason)

    def _deny_rate_tripped(self, name: str, reason: str) -> None:
        item = self.contents.get(name)
        slot, version = (item.slot, item.package_version) if item is not None else (0, "")
        self.history.append(name, "blocking-removed", slot, version, reason)
        finding = DetectionFinding(
            header=self._stamper.stamp(),
            title=f"extension {name} lost its power to block (deny-rate breaker)",
            severity=Severity.HIGH,
            source=CONTENT_SOURCE,
            rule="deny-rate-breaker",
            description=f"{reason}; its DENYs are advice only until `ringfence content restore-blocking "
            f"{name}`",
        )
        self._broker.publish(finding)

    def _run_breakers(self) -> None:
        while not self._stop_breakers.wait(BREAKER_INTERVAL_S):
            try:
                self.deny_rate.sample()
            except Exception:  # supervision boundary: one bad look must not end the breaker
                log.exception("deny-rate breaker look failed; going on")

    def mark_clean(self) -> None:
        """The run is clean (up long enough): each extension's slot in force, when it is its good one, is
        recorded as last-known-good (what a safe start runs)."""
        with self.content_store.lock:
            for item in self.contents.values():
                if item.slot == item.good_slot:
                    self.content_store.record_good(item)

    def restore_blocking(self, ext_id: str) -> str:
        enabled = {proxy.spec.id for proxy in self.supervisor.proxies()}
        if ext_id not in enabled and ext_id not in self.deny_rate.advisory():
            shown = ", ".join(sorted(enabled)) or "none"
            raise BreakerError(f"no extension {ext_id!r} runs here (enabled: {shown})")
        message = self.deny_rate.restore(ext_id)
        self._broker.invalidate_auth_cache()
        item = self.contents.get(ext_id)
        slot, version = (item.slot, item.package_version) if item is not None else (0, "")
        self.history.append(ext_id, "blocking-restored", slot, version, "by the operator")
        return message

    def rollback(self, ext_id: str, to_version: str | None) -> str:
        item = self.contents.get(ext_id)
        if item is None:
            known = ", ".join(sorted(self.contents)) or "none"
            raise BreakerError(f"no content for extension {ext_id!r} (extensions with content: {known})")
        staged = staged_versions(self._state_dir, ext_id)
        try:
            return self.content_store.rollback(item, to_version, newer_than=lambda v: _newer(staged, v))
        except OSError as e:
            raise ContentError(f"{ext_id}: rollback failed, the active slot stays: {e}") from e

    def content_status(self) -> dict[str, ExtensionContentStatus]:
        advisory = self.deny_rate.advisory()
        out = {}
        for ext_id, item in sorted(self.contents.items()):
            kept = self.content_store.kept(item)
            record = advisory.get(ext_id)
            would_be, last_would_be = self.deny_rate.would_be(ext_id)
            out[ext_id] = ExtensionContentStatus(
                active_slot=item.slot,
                active=item.package_version,
                good_slot=item.good_slot,
                good=next((v for n, v in kept if n == item.good_slot), ""),
                kept=[f"{n} {v}" if v else str(n) for n, v in kept],
                trial=item.slot != item.good_slot,
                rejected={v: item.rejected_why.get(v, "") for v in sorted(item.rejected)},
                blocking=record is None,
                advisory_since_ns=record.since_ns if record is not None else 0,
                advisory_reason=record.reason if record is not None else "",
                advisory_version=record.version if record is not None else "",
                would_be_denies=would_be,
                last_would_be_deny=last_would_be,
                crash_loop_reverts=item.crash_loop_reverts,
                reverts=item.reverts,
                last_revert=item.last_revert,
                shadow=self.shadow.status(ext_id),
                shadow_results=list(self.shadow.results.get(ext_id, ())),
                shadow_promoted=self.shadow.promoted.get(ext_id, 0),
                shadow_rejected=self.shadow.rejected.get(ext_id, 0),
            )
        for name, record in advisory.items():  # an AUTH extension without content can trip it too
            if name not in out:
                would_be, last_would_be = self.deny_rate.would_be(name)
                out[name] = ExtensionContentStatus(
                    blocking=False,
                    advisory_since_ns=record.since_ns,
                    advisory_reason=record.reason,
                    would_be_denies=would_be,
                    last_would_be_deny=last_would_be,
                )
        return out

    def content_problems(self) -> list[str]:
        """What makes the agent degraded here: an extension that lost its power to block."""
        return [
            f"extension {name} cannot block (deny-rate breaker: {record.reason}); `ringfence content "
            f"restore-blocking {name}` restores it"
            for name, record in sorted(self.deny_rate.advisory().items())
        ]

    def _extension_pids(self) -> frozenset[int]:
        """Never killed on an extension's request: every extension's process, as they restart."""
        return self.supervisor.pids()

    def _act(self, request: ActionRequest) -> ActionResult:
        return self.responder.execute(request)

    def start(self) -> None:
        """Start every extension and wait (bounded) for its setup. Raises AgentError if one that was
        given content failed: its content did not load, and the agent must not run as if it had."""
        self.supervisor.start()
        ready_s = self._config.extensions.ready_timeout_s
        if not self.supervisor.wait_ready(ready_s):
            log.warning(
                "not every extension was ready within %g s (extensions.ready_timeout_s); see `ringfence "
                "status`",
                ready_s,
            )
        self._refuse_failed_content()
        self.content.start()
        self._breakers.start()
        if self.updates is not None:
            self.updates.start()

    def _refuse_failed_content(self) -> None:
        for st in self.supervisor.statistics():
            if st.id in self.contents and st.state in ("backoff", "quarantined"):
                why = st.last_error or st.quarantine_reason or st.last_exit_reason or st.state
                raise AgentError(f"extension {st.id} cannot load its content: {why}")

    def stop(self) -> None:
        if self.updates is not None:
            self.updates.stop()
        self.content.stop()
        self._stop_breakers.set()
        if self._breakers.is_alive():
            self._breakers.join(timeout=5)
        self.supervisor.stop()

    def statistics(self) -> list[ExtensionStatistics]:
        """The supervisor's, with each extension's active content slot, and the agent's own content
        problem (a file it could not stage again, a revert to the last good slot) when the extension
        reports none."""
        stats = self.supervisor.statistics()
        for st in stats:
            item = self.contents.get(st.id)
            if st.shadow:
                baking = self.shadow.status(st.id.removesuffix("@shadow"))
                st.content_version = f"shadow: {baking}" if baking else "shadow"
            elif item is not None:
                package = f" (package {item.package_version})" if item.package_version else ""
                st.content_version = f"slot {item.slot}{package}"
                st.last_error = st.last_error or item.last_error
        return stats


def _newer(staged: list[str], version: str) -> list[str]:
    """The staged versions above `version` (all of them when it is "": operator files only)."""
    if not version:
        return list(staged)
    key = version_key(version)
    return [v for v in staged if version_key(v) > key]


def make_supervisor(agent: Agent) -> _Extensions:
    return _Extensions(agent)


def list_extensions(config: Config, *, manifests: bool = False) -> list[str]:
    """One line per installed extension: name, distribution and version, enabled or not, entry. With
    `manifests`, each is started once in its sandbox (never imported here, as root) for its manifest."""
    enabled = set(config.extensions.enabled) - set(config.extensions.disabled)
    rows = []
    for info in discover():
        state = "enabled" if info.name in enabled else "disabled"
        rows.append(f"{info.name:<32} {state:<9} {info.dist or '?'} {info.version or '?'}  ({info.value})")
        if manifests:
            rows.append("    " + _describe_manifest(info.name, config.extensions.sandbox))
    for name in sorted(enabled - {i.name for i in discover()}):
        rows.append(f"{name:<32} enabled   NOT INSTALLED (configured in extensions.enabled)")
    return rows or ["no extensions installed (entry point group ringfence.extensions)"]


def _describe_manifest(entry: str, sandbox: bool) -> str:
    try:
        m = probe_manifest(entry, sandbox=sandbox, timeout_s=MANIFEST_TIMEOUT_S)
    except ExtensionError as e:
        return f"manifest unavailable: {e}"
    auth = (
        f"auth {','.join(sorted(m.auth.kinds))} {m.auth.deadline_ms} ms {m.auth.failure}"
        if m.auth
        else "no auth"
    )
    subscribes = ",".join(sorted(m.subscribes)) or "nothing"
    permissions = ",".join(sorted(m.permissions)) or "none"
    return (
        f"id {m.id}, vendor {m.vendor}, version {m.version}; subscribes {subscribes}; {auth}; "
        f"permissions {permissions}"
    )
