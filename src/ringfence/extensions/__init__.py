"""The extension platform, host side: discovery, the supervisor, and each extension's broker proxy.

Usage (the agent):
    sup = Supervisor(specs, findings_sink=broker.publish, action_handler=responder.run,
                     on_auth_ready=lambda _id: broker.invalidate_auth_cache(),
                     on_first_ready=broker.subscribe, on_gone=broker.withdraw)
    sup.start(); sup.wait_ready(30); ...; sup.stop()

Errors (the tree):
    ExtensionError          anything raised here; names the extension
      LaunchError           the process could not be started
      HandshakeFailed       no usable handshake (`.refused`: version mismatch, wrong id: do not retry)
    ValueError              misuse at set-up (a spec or config out of range, an id configured twice)
Nothing on the event path (deliver, request_auth, auth_missed) raises.
"""

from ringfence.events import ExtensionStatistics
from ringfence.extensions._discovery import ExtensionInfo, discover, probe_manifest
from ringfence.extensions._policy import ExtensionState, RestartPolicy
from ringfence.extensions._process import ExtensionError, HandshakeFailed, LaunchError
from ringfence.extensions._proxy import ExtensionProxy
from ringfence.extensions._spec import ENTRY_POINT_GROUP, ExtensionSpec, SupervisorConfig
from ringfence.extensions._supervisor import SUPERVISOR_SOURCE, ActionHandler, Supervisor

__all__ = [
    "ENTRY_POINT_GROUP",
    "SUPERVISOR_SOURCE",
    "ActionHandler",
    "ExtensionError",
    "ExtensionInfo",
    "ExtensionProxy",
    "ExtensionSpec",
    "ExtensionState",
    "ExtensionStatistics",
    "HandshakeFailed",
    "LaunchError",
    "RestartPolicy",
    "Supervisor",
    "SupervisorConfig",
    "discover",
    "probe_manifest",
]
