"""Response actions, brokered and undoable: kill a process, quarantine a file, isolate the host network.

    executor = ResponseExecutor(ResponseConfig(state_dir="/var/lib/ringfence", management_addresses=(...)))
    result = executor.execute(request)          # an ActionRequest from an extension; never raises
    executor.restore(result.undo)               # quarantine's undo is the vault id
    executor.unisolate()                        # isolate's undo

Every request, granted or refused, and its result is appended to <state_dir>/actions.jsonl with who
asked; `executor.refuse(request, why)` logs a refusal decided before the request got here. The vault is
<state_dir>/quarantine. An extension's request is held to its `ActionScope` (which actions, which
directories); whoever asks, the protected paths (`default_protected_paths`: system, Ringfence's own
install, venv and state, after symlinks and `..`) are never quarantined, and pid 1, kernel threads, the
agent and every extension process (`protected_pids`, asked on each kill) are never killed.

Errors (the tree); the action methods turn them into `ActionResult(ok=False, message=...)`:
    ResponseError               anything this layer raises
      ActionRefused             refused by policy before anything was done (logged as "refused")
      ResponseConfigError       a bad configuration value (also a ValueError, for msgspec decoding)
      KillError                 a kill refused (protected, pid reused, gone) or not done in time; `.pid`
      QuarantineError           a quarantine or restore refused or failed; `.where` (path or vault id)
      NftError                  the nft command failed; `.command`, and what nft said
      ActionLogError            the action log could not be written or read; `.path`
"""

from ringfence.response._config import ResponseConfig, parse_networks
from ringfence.response._errors import (
    ActionLogError,
    ActionRefused,
    KillError,
    NftError,
    QuarantineError,
    ResponseConfigError,
    ResponseError,
)
from ringfence.response._executor import ResponseExecutor
from ringfence.response._isolation import TABLE as ISOLATION_TABLE
from ringfence.response._log import ActionRecord
from ringfence.response._process import start_time_ns
from ringfence.response._scope import DEFAULT_SCOPE, ActionScope, default_protected_paths
from ringfence.response._vault import QuarantineEntry

__all__ = [
    "DEFAULT_SCOPE",
    "ISOLATION_TABLE",
    "ActionLogError",
    "ActionRecord",
    "ActionRefused",
    "ActionScope",
    "KillError",
    "NftError",
    "QuarantineEntry",
    "QuarantineError",
    "ResponseConfig",
    "ResponseConfigError",
    "ResponseError",
    "ResponseExecutor",
    "default_protected_paths",
    "parse_networks",
    "start_time_ns",
]
