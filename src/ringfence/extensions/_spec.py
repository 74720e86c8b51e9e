"""What the agent tells the supervisor: one `ExtensionSpec` per extension, one `SupervisorConfig` for all.

Plain frozen dataclasses with safe defaults and units in the names. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Mapping
from typing import Any

from ringfence import __version__
from ringfence.extensions._policy import RestartPolicy
from ringfence.sdk._manifest import PROTOCOL_VERSION

ENTRY_POINT_GROUP = "ringfence.extensions"
MAX_EVENT_LINGER_MS = 60_000  # events held longer than this would be of no use to a detection engine
_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_module_attr(entry: str) -> bool:
    """`module:attr` (a direct class path) rather than an entry-point name."""
    return bool(_MODULE_ATTR.match(entry))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtensionSpec:
    """One extension to run.

    `id` is the manifest id the extension must present at the handshake (a different one is refused);
    `entry` an entry-point name in the `ringfence.extensions` group or a `module:attr` class path.
    `instance` names this running copy where there can be two of one extension (a shadow beside the
    active one): the supervisor, the broker subscription, the cgroup, the scratch dir and the statistics
    are keyed by it; "" is the extension id. A `shadow` instance never enforces: its AUTH verdicts are
    advice that nobody waits for, its findings are tagged shadow, its response actions are refused.
    """

    id: str
    entry: str
    instance: str = ""
    shadow: bool = False
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    content_dir: str | None = None  # readable in the sandbox (the agent's read-only copy of its content)
    content_origins: Mapping[str, str] = dataclasses.field(default_factory=dict)  # staged path -> operator's
    state_dir: str | None = None  # the only writable directory in the sandbox
    sys_path: tuple[str, ...] = ()  # extra import roots (readable in the sandbox)
    read_paths: tuple[str, ...] = ()  # more directories readable in the sandbox (its content store)
    sandbox: bool = True  # False only for tests and development: vendor code then runs as root
    user: str = "ringfence-ext"
    allow_network: bool = False  # the operator's grant; the sandbox denies sockets otherwise
    memory_mb: int = 256  # the sandbox's limit; over it (RSS) the supervisor restarts the extension
    cpu_percent: int = 50  # the sandbox's quota; sustained over it the supervisor restarts
    max_open_files: int = 256
    max_processes: int = 64  # threads count: RLIMIT_NPROC is per user
    handshake_timeout_s: float = 30.0
    auth_deadline_cap_ms: int | None = None  # lower the manifest's AUTH deadline

    @property
    def instance_id(self) -> str:
        return self.instance or self.id

    def name_origins(self, text: str) -> str:
        """`text` (an extension's error) with each staged content path replaced by the operator's file it
        was copied from: the operator fixes that file, not the copy."""
        for staged, origin in self.content_origins.items():
            text = text.replace(staged, origin)
        return text

    def __post_init__(self) -> None:
        if not self.entry.strip():
            raise ValueError(f"extension {self.id}: entry is empty")
        if self.memory_mb < 16 or self.cpu_percent < 1 or self.handshake_timeout_s <= 0:
            raise ValueError(
                f"extension {self.id}: memory_mb >= 16, cpu_percent >= 1, handshake_timeout_s > 0"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisorConfig:
    restart: RestartPolicy = dataclasses.field(default_factory=RestartPolicy)
    max_frame_bytes: int = 1 << 20
    event_queue: int = 8192  # per extension, drop-newest, counted
    auth_queue: int = 256  # per extension; full: the broker applies the failure policy at once
    file_queue: int = 64  # file.written notices per extension, each holding a descriptor; drop-newest
    event_batch: int = 256  # events per EventBatch frame at most
    # How long the writer gathers events after the first of a batch before sending them in one frame
    # (a full batch goes at once). One wake-up and one send per batch instead of per event; AUTH calls,
    # file notices and control frames never wait for it. 0: each event is sent as soon as the writer can.
    event_linger_ms: float = 5.0
    io_timeout_s: float = 1.0  # one socket send; a frame that cannot go in this time is dropped, counted
    auth_miss_limit: int = 3  # consecutive AUTH deadline misses before a restart
    findings_per_s: float = 100.0
    findings_burst: int = 1000
    logs_per_s: float = 20.0
    logs_burst: int = 200
    action_queue: int = 32  # action requests waiting for the handler, all extensions together
    resource_check_interval_s: float = 1.0
    cpu_over_budget_checks: int = 5  # consecutive checks over cpu_percent before a restart
    stop_grace_s: float = 2.0  # after Shutdown, before SIGKILL
    stats_interval_ms: int = 1000  # how often extensions report their counters
    protocols: tuple[int, ...] = (PROTOCOL_VERSION,)
    agent_version: str = __version__
    host: str = dataclasses.field(default_factory=socket.gethostname)
    python: str | None = None  # interpreter for extension processes; None: this one

    def __post_init__(self) -> None:
        if (
            self.max_frame_bytes < 4096
            or self.event_queue < 1
            or self.auth_queue < 1
            or self.event_batch < 1
            or self.file_queue < 1
        ):
            raise ValueError("supervisor config: max_frame_bytes >= 4096 and queues/batch >= 1")
        if self.auth_miss_limit < 1 or self.io_timeout_s <= 0 or self.resource_check_interval_s <= 0:
            raise ValueError("supervisor config: auth_miss_limit >= 1, io_timeout_s > 0, check interval > 0")
        if not 0 <= self.event_linger_ms <= MAX_EVENT_LINGER_MS:
            raise ValueError(
                f"supervisor config: event_linger_ms must be 0..{MAX_EVENT_LINGER_MS}, "
                f"got {self.event_linger_ms}"
            )
