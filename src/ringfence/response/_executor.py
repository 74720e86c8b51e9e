"""The ResponseExecutor: carries out actions, turns every refusal or failure into a result, logs both."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import msgspec

from ringfence.events import ActionKind, ActionRequest, ActionResult, Clock, SystemClock
from ringfence.response._config import ResponseConfig, parse_networks
from ringfence.response._errors import ActionRefused, ResponseError
from ringfence.response._isolation import FAMILY, TABLE, Nft, isolation_script, management_update_script
from ringfence.response._log import ActionLog, ActionRecord
from ringfence.response._process import Killer
from ringfence.response._scope import default_protected_paths, scope_for
from ringfence.response._vault import QuarantineEntry, Vault

logger = logging.getLogger(__name__)

Outcome = tuple[str, str | None]  # (message, undo)


class ResponseExecutor:
    """Every action method returns an ActionResult and never raises for a refused or failed action;
    each action and its result is appended to the action log. Thread-safe."""

    def __init__(
        self,
        config: ResponseConfig,
        clock: Clock | None = None,
        *,
        protected_pids: Callable[[], Collection[int]] | None = None,
    ) -> None:
        """`protected_pids` is asked on every kill for the pids that change (the extensions')."""
        self.config = config
        self._clock = clock or SystemClock()
        self._killer = Killer(
            config.protected_pids, config.start_time_tolerance_ticks, config.kill_wait_ms, protected_pids
        )
        self._vault = Vault(
            Path(config.state_dir) / "quarantine",
            (*default_protected_paths(config.state_dir), *config.protected_paths),
        )
        self._log = ActionLog(Path(config.state_dir) / "actions.jsonl")
        self._nft = Nft(config.nft_command)
        self._management = parse_networks(config.management_addresses)
        self._nft_lock = threading.Lock()

    def execute(self, request: ActionRequest) -> ActionResult:
        """Carries out a brokered request (from an extension: `requested_by` is set by the agent) if
        the extension's scope allows it; refused and logged otherwise."""
        scope = scope_for(self.config.scopes, request.requested_by)
        if request.kind not in scope.actions:
            allowed = ", ".join(sorted(scope.actions)) or "none"
            return self.refuse(request, f"not in the scope of {request.requested_by!r} (allowed: {allowed})")
        if request.kind is ActionKind.KILL:
            if request.pid is None or request.start_time_ns is None:
                return self.refuse(request, "kill needs both pid and start_time_ns")
            return self.kill(request.pid, request.start_time_ns, request.reason, request.requested_by)
        if request.kind is ActionKind.QUARANTINE:
            if not request.path:
                return self.refuse(request, "quarantine needs a path")
            return self.quarantine(request.path, request.reason, request.requested_by, within=scope.paths)
        return self.isolate(request.reason, request.requested_by)

    def kill(self, pid: int, start_time_ns: int, reason: str, requested_by: str) -> ActionResult:
        def act() -> Outcome:
            return self._killer.kill(pid, start_time_ns), None

        record = ActionRecord(
            time_ns=0,
            action="kill",
            ok=False,
            message="",
            requested_by=requested_by,
            reason=reason,
            pid=pid,
            start_time_ns=start_time_ns,
        )
        return self._run(ActionKind.KILL, record, act)

    def quarantine(
        self, path: str, reason: str, requested_by: str, *, within: tuple[str, ...] | None = None
    ) -> ActionResult:
        """`within`: only at or below these directories (an extension's scope); None: anywhere that is
        not protected (the operator)."""

        def act() -> Outcome:
            entry = self._vault.quarantine(path, reason, requested_by, self._clock.time_ns(), within=within)
            links = f"; {entry.other_links} other hard link(s) remain" if entry.other_links else ""
            return f"quarantined {path} (sha256 {entry.sha256}) as {entry.id}{links}", entry.id

        record = ActionRecord(
            time_ns=0,
            action="quarantine",
            ok=False,
            message="",
            requested_by=requested_by,
            reason=reason,
            path=path,
        )
        return self._run(ActionKind.QUARANTINE, record, act)

    def quarantine_list(self) -> list[QuarantineEntry]:
        """Everything in the vault, oldest first. Raises ResponseError (or OSError) if it is unreadable."""
        return self._vault.entries()

    def restore(self, vault_id: str, requested_by: str = "") -> ActionResult:
        def act() -> Outcome:
            entry = self._vault.restore(vault_id)
            return f"restored {entry.path} from {vault_id}", None

        record = ActionRecord(
            time_ns=0, action="restore", ok=False, message="", requested_by=requested_by, vault_id=vault_id
        )
        return self._run(ActionKind.QUARANTINE, record, act)

    def isolate(self, reason: str, requested_by: str) -> ActionResult:
        def act() -> Outcome:
            with self._nft_lock:
                if self._nft.table_exists():
                    return "already isolated", "unisolate"
                self._nft.apply(isolation_script(self._management))
            kept = ", ".join(str(n) for n in self._management) or "none"
            return f"isolated: table {FAMILY} {TABLE}; management addresses: {kept}", "unisolate"

        record = ActionRecord(
            time_ns=0, action="isolate", ok=False, message="", requested_by=requested_by, reason=reason
        )
        return self._run(ActionKind.ISOLATE, record, act)

    def unisolate(self, requested_by: str = "") -> ActionResult:
        def act() -> Outcome:
            with self._nft_lock:
                if not self._nft.table_exists():
                    return "not isolated", None
                self._nft.apply(f"delete table {FAMILY} {TABLE}\n")
            return f"unisolated: table {FAMILY} {TABLE} deleted", None

        record = ActionRecord(time_ns=0, action="unisolate", ok=False, message="", requested_by=requested_by)
        return self._run(ActionKind.ISOLATE, record, act)

    def set_management_addresses(self, addresses: tuple[str, ...], requested_by: str = "") -> ActionResult:
        """Replaces the management addresses (e.g. on a config reload); applied at once if isolated."""

        def act() -> Outcome:
            networks = parse_networks(addresses)
            with self._nft_lock:
                self._management = networks
                if self._nft.table_exists():
                    self._nft.apply(management_update_script(networks))
            return f"management addresses: {', '.join(str(n) for n in networks) or 'none'}", None

        record = ActionRecord(time_ns=0, action="management", ok=False, message="", requested_by=requested_by)
        return self._run(ActionKind.ISOLATE, record, act)

    def is_isolated(self) -> bool:
        """Whether our table exists. Raises NftError if nft cannot be run."""
        return self._nft.table_exists()

    def isolation_ruleset(self) -> str:
        """Our table as nft lists it (for status output). Raises NftError if it does not exist."""
        return self._nft.ruleset()

    def action_log(self, limit: int = 100) -> list[ActionRecord]:
        """The last `limit` actions, oldest first. Raises ActionLogError if the log is unreadable."""
        return self._log.tail(limit)

    def refuse(self, request: ActionRequest, message: str) -> ActionResult:
        """Refuses `request` for `message` and logs it (also for refusals decided before the request
        reached us: a missing permission, a full queue)."""
        record = ActionRecord(
            time_ns=0,
            action=request.kind.value,
            ok=False,
            message="",
            requested_by=request.requested_by,
            reason=request.reason,
            pid=request.pid,
            start_time_ns=request.start_time_ns,
            path=request.path,
        )

        def act() -> Outcome:
            raise ActionRefused(f"{request.kind.value}: {message}")

        return self._run(request.kind, record, act)

    def _run(self, kind: ActionKind, record: ActionRecord, act: Callable[[], Outcome]) -> ActionResult:
        """The supervision boundary of every action: nothing it does raises to the caller."""
        record = msgspec.structs.replace(record, decision="granted")
        try:
            message, undo = act()
            result = ActionResult(kind=kind, ok=True, message=message, undo=undo)
        except ActionRefused as e:
            result = ActionResult(kind=kind, ok=False, message=str(e))
            record = msgspec.structs.replace(record, decision="refused")
        except (ResponseError, OSError) as e:
            result = ActionResult(kind=kind, ok=False, message=str(e))
        except Exception as e:
            logger.exception("%s failed unexpectedly", record.action)
            result = ActionResult(kind=kind, ok=False, message=f"{record.action}: internal error: {e!r}")
        logger.info("%s for %r: %s ok=%s %s", record.action, record.requested_by, record.decision,
                    result.ok, result.message)  # fmt: skip
        return self._logged(record, result)

    def _logged(self, record: ActionRecord, result: ActionResult) -> ActionResult:
        done = msgspec.structs.replace(
            record, time_ns=self._clock.time_ns(), ok=result.ok, message=result.message, undo=result.undo
        )
        try:
            self._log.append(done)
        except ResponseError as e:
            logger.error("action not logged: %s", e)  # noqa: TRY400 (the message says it all)  # the action is done: report it, do not undo it
            return ActionResult(
                kind=result.kind,
                ok=result.ok,
                message=f"{result.message} (NOT LOGGED: {e})",
                undo=result.undo,
            )
        return result
