"""What a response request may touch: the protected paths, and each extension's scope.

Protected paths are never quarantined, whoever asks: the system's binaries, libraries and configuration,
Ringfence's own install and venv, and the state dir (`protected_paths`). They are compared after every
symlink and `..` is resolved (see `_vault.py`: the check is made on the directory really opened).

A scope says which actions one extension may ask for and under which directories it may quarantine.
An extension without a scope of its own gets the `"*"` scope if the config has one, else
`DEFAULT_SCOPE`: kill and quarantine, the latter only under the usual drop locations.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec

import ringfence
from ringfence.events import ActionKind

SYSTEM_PATHS = ("/etc", "/usr", "/bin", "/sbin", "/boot")
"""Never quarantined; with every `/lib*` directory (lib, lib32, lib64, libx32, ...) found at start."""

DEFAULT_SCOPE_PATHS = ("/home", "/tmp", "/var/tmp", "/dev/shm")  # where downloads and droppers land
ANY_EXTENSION = "*"


class ActionScope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[response.scope."<extension id>"]`: what that extension may ask for."""

    actions: frozenset[ActionKind] = frozenset({ActionKind.KILL, ActionKind.QUARANTINE})
    paths: tuple[str, ...] = DEFAULT_SCOPE_PATHS  # quarantine only at or below these (absolute)

    def __post_init__(self) -> None:
        relative = [p for p in self.paths if not os.path.isabs(p)]
        if relative:
            raise ValueError(f"paths must be absolute, got {relative[0]!r}")


DEFAULT_SCOPE = ActionScope()


def scope_for(scopes: Mapping[str, ActionScope], extension_id: str) -> ActionScope:
    return scopes.get(extension_id) or scopes.get(ANY_EXTENSION) or DEFAULT_SCOPE


def default_protected_paths(state_dir: str) -> tuple[str, ...]:
    """The system's paths, Ringfence's package directory, its venv (sys.prefix) and the state dir."""
    libs = sorted(p for p in glob.glob("/lib*") if os.path.isdir(p))
    own = (str(Path(ringfence.__file__).resolve().parent), sys.prefix, state_dir)
    return (*SYSTEM_PATHS, *libs, *own)


def resolved(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Each path as the kernel reaches it: symlinks and `..` resolved (so /bin is /usr/bin)."""
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def under(path: str, roots: tuple[str, ...]) -> str | None:
    """The first of `roots` that `path` is, or lies below; both already resolved."""
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return root
    return None
