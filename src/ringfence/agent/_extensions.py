"""From config to running extensions: specs for the supervisor, wiring to the broker and responses."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ringfence.agent._config import Config
from ringfence.agent._content import (
    ContentStore,
    ContentWatcher,
    ExtensionView,
    StagedContent,
    migrate_settings,
)
from ringfence.agent._errors import AgentError
from ringfence.agent._updates import make_update_loop
from ringfence.agent._validate import package_problem
from ringfence.content._default import default_pack
from ringfence.events import ActionRequest, ActionResult, ExtensionStatistics
from ringfence.extensions import ExtensionError, ExtensionSpec, Supervisor, discover, probe_manifest
from ringfence.response import ResponseConfig, ResponseExecutor

if TYPE_CHECKING:
    from ringfence.agent._daemon import Agent

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 20.0


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
    for engine, paths in default_pack().items():
        ext_id = DEFAULT_PACK_ENGINES.get(engine)
        if ext_id is None or ext_id not in enabled:
            continue
        files = out.setdefault(ext_id, {})
        for path in paths:
            files.setdefault(f"default-{os.path.basename(path)}", path)
    return out


def stage_content(config: Config) -> tuple[ContentStore, dict[str, StagedContent]]:
    """Read every enabled extension's content files (as root) into the state dir. Raises AgentError, one
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
    packages = store.previous_packages(wanted) if config.content.url else {}
    return store, store.stage_all(wanted, packages)


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
        self.content_store, self.contents = stage_content(config)
        self.content = ContentWatcher(
            self.content_store, self.contents, extension_state=self._extension_state
        )
        extensions = config.extensions
        self.updates = make_update_loop(
            config.content,
            config.agent.state_dir,
            self.content_store,
            self.contents,
            self._extension_state,
            check=lambda engine, path: package_problem(path, engine, extensions),
        )
        specs = extension_specs(config, self.contents)
        for spec in specs:
            if spec.state_dir:
                os.makedirs(os.path.dirname(spec.state_dir), exist_ok=True)
                os.chmod(os.path.dirname(spec.state_dir), 0o711)  # noqa: S103 - the sandbox user passes through
                os.makedirs(spec.state_dir, mode=0o700, exist_ok=True)  # the sandbox gives it to the user
        broker = agent.broker
        self.supervisor = Supervisor(
            specs,
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
                return ExtensionView(st.state, st.restarts, st.restart_reasons.get("handshake", 0), problem)
        return None

    def _extension_pids(self) -> frozenset[int]:
        """Never killed on an extension's request: every extension's process, as they restart."""
        return self.supervisor.pids()

    def _act(self, request: ActionRequest) -> ActionResult:
        return self.responder.execute(request)

    def start(self) -> None:
        """Start every extension and wait (bounded) for its setup. Raises AgentError if one that was
        given content failed: its content did not load, and the agent must not run as if it had."""
        self.supervisor.start()
        if not self.supervisor.wait_ready(READY_TIMEOUT_S):
            log.warning(
                "not every extension was ready within %.0f s; see `ringfence status`", READY_TIMEOUT_S
            )
        self._refuse_failed_content()
        self.content.start()
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
        self.supervisor.stop()

    def statistics(self) -> list[ExtensionStatistics]:
        """The supervisor's, with each extension's active content slot, and the agent's own content
        problem (a file it could not stage again, a revert to the last good slot) when the extension
        reports none."""
        stats = self.supervisor.statistics()
        for st in stats:
            item = self.contents.get(st.id)
            if item is not None:
                package = f" (package {item.package_version})" if item.package_version else ""
                st.content_version = f"slot {item.slot}{package}"
                st.last_error = st.last_error or item.last_error
        return stats


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
        m = probe_manifest(entry, sandbox=sandbox, timeout_s=READY_TIMEOUT_S)
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
