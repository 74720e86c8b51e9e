"""Response actions, brokered and undoable: kill a process, quarantine a file, isolate the host network.

    executor = ResponseExecutor(ResponseConfig(state_dir="/var/lib/ringfence", management_addresses=(...)))
    result = executor.execute(request)          # an ActionRequest from an extension; never raises
    executor.restore(result.undo)               # quarantine's undo is the vault id
    executor.unisolate()                        # isolate's undo

Each action and its result is appended to <state_dir>/actions.jsonl. The vault is <state_dir>/quarantine.

Errors (the tree); the action methods turn them into `ActionResult(ok=False, message=...)`:
    ResponseError               anything this layer raises
      ResponseConfigError       a bad configuration value (also a ValueError, for msgspec decoding)
      KillError                 a kill refused (protected, pid reused, gone) or not done in time; `.pid`
      QuarantineError           a quarantine or restore refused or failed; `.where` (path or vault id)
      NftError                  the nft command failed; `.command`, and what nft said
      ActionLogError            the action log could not be written or read; `.path`
"""

from ringfence.response._config import ResponseConfig, parse_networks
from ringfence.response._errors import (
    ActionLogError,
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
from ringfence.response._vault import QuarantineEntry

__all__ = [
    "ISOLATION_TABLE",
    "ActionLogError",
    "ActionRecord",
    "KillError",
    "NftError",
    "QuarantineEntry",
    "QuarantineError",
    "ResponseConfig",
    "ResponseConfigError",
    "ResponseError",
    "ResponseExecutor",
    "parse_networks",
    "start_time_ns",
]
