"""The extension process's first code: `python -I -m ringfence.extensions._launch`.

Order matters: read the spec (environment, set by the supervisor), resolve the entry point from
metadata only, enter the sandbox, and only THEN import the extension's module: third-party code never
runs with the agent's privileges. Then `run_extension` serves it over the inherited socket.

Exit status: run_extension's (see sdk/_runtime.py); 64 bad launch spec; 65 the sandbox could not be
entered (fails closed); 66 the entry point could not be found or imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from ringfence.extensions._process import LAUNCH_ENV, LaunchSpec
from ringfence.extensions._spec import ENTRY_POINT_GROUP, is_module_attr
from ringfence.sdk._runtime import run_extension

log = logging.getLogger("ringfence.extensions.launch")

EXIT_SPEC, EXIT_SANDBOX, EXIT_ENTRY = 64, 65, 66


def resolve(entry: str) -> Callable[[], Any]:
    """A loader for `entry` that imports nothing yet: `module:attr`, or an entry-point name."""
    if is_module_attr(entry):
        module, _, attr = entry.partition(":")
        return lambda: _getattr_path(importlib.import_module(module), attr)
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=entry)
    if not found:
        raise LookupError(f"no entry point {entry!r} in group {ENTRY_POINT_GROUP}")
    ep = next(iter(found))
    return ep.load


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _enter_sandbox(spec: LaunchSpec) -> None:
    from ringfence.extensions._sandbox import PreparedSandbox, SandboxPolicy, enter_sandbox

    policy = msgspec.json.decode(spec.policy, type=SandboxPolicy)
    prepared = msgspec.json.decode(spec.prepared, type=PreparedSandbox)
    enter_sandbox(policy, prepared)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        spec = msgspec.json.decode(os.environ.pop(LAUNCH_ENV, ""), type=LaunchSpec)
    except msgspec.DecodeError:
        log.exception("bad launch spec in $%s", LAUNCH_ENV)
        return EXIT_SPEC
    sock = socket.socket(fileno=spec.socket_fd)
    try:
        load = resolve(spec.entry)
    except LookupError:
        log.exception("cannot resolve %s", spec.entry)
        return EXIT_ENTRY
    if spec.sandbox:
        try:
            _enter_sandbox(spec)
        except Exception:  # fails closed: no sandbox, no extension
            log.exception("entering the sandbox failed; not running %s", spec.entry)
            return EXIT_SANDBOX
    sys.path[0:0] = list(spec.sys_path)
    try:
        ext = load()
    except Exception:  # vendor import: report and exit; the supervisor restarts with backoff
        log.exception("importing %s failed", spec.entry)
        return EXIT_ENTRY
    return run_extension(ext, sock)


if __name__ == "__main__":
    sys.exit(main())
