"""Finding installed extensions without running vendor code as root.

`discover()` reads entry-point metadata only (name, `module:attr`, distribution and version): nothing
is imported. `probe_manifest()` gets an extension's manifest by starting it the way the supervisor does
(the launcher, in the sandbox unless told otherwise) and doing the handshake only, then Shutdown: the
vendor's module is imported in the sandboxed child, never in the (root) caller.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import subprocess

import msgspec

from ringfence.extensions._process import host_handshake, kill, release, spawn
from ringfence.extensions._spec import ENTRY_POINT_GROUP, ExtensionSpec, SupervisorConfig
from ringfence.sdk._manifest import Manifest
from ringfence.sdk._protocol import ExtensionFrame, Hello, Shutdown, Wire


class ExtensionInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the entry-point name
    value: str  # module:attr
    dist: str | None = None
    version: str | None = None


def discover() -> list[ExtensionInfo]:
    """Every entry point in the `ringfence.extensions` group, from metadata alone, sorted by name."""
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        found.append(
            ExtensionInfo(
                name=ep.name,
                value=ep.value,
                dist=dist.name if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
        )
    return sorted(found, key=lambda e: e.name)


def _probe_id(entry: str) -> str:
    return "probe-" + re.sub(r"[^a-z0-9._-]", "-", entry.lower())[:50]


def probe_manifest(
    entry: str,
    *,
    sandbox: bool = True,
    timeout_s: float = 30.0,
    sys_path: tuple[str, ...] = (),
    config: SupervisorConfig | None = None,
) -> Manifest:
    """Start `entry` (entry-point name or module:attr), take its manifest from the handshake, stop it.

    Raises LaunchError or HandshakeFailed (its extension id is `probe-<entry>`)."""
    config = config or SupervisorConfig()
    spec = ExtensionSpec(id=_probe_id(entry), entry=entry, sandbox=sandbox, sys_path=sys_path)
    spawned = spawn(spec, config)
    wire: Wire[ExtensionFrame] = Wire(spawned.sock, ExtensionFrame, config.max_frame_bytes)
    hello = Hello(protocols=config.protocols, agent_version=config.agent_version, extension_id=spec.id)
    try:
        manifest = host_handshake(wire, hello, timeout_s)
        with contextlib.suppress(OSError):
            wire.send(Shutdown("probe done"))
    finally:
        try:
            spawned.proc.wait(timeout=config.stop_grace_s)
        except subprocess.TimeoutExpired:
            kill(spawned)
            spawned.proc.wait()
        spawned.sock.close()
        os.close(spawned.pidfd)
        release(spec, spawned.policy, spawned.prepared)
    return manifest
