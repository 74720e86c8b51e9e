"""The default content pack: Ringfence's own detection rules, shipped in the wheel beside this module
(`content/default/<engine>/`), loaded by `ringfence run` with no setup (README, "Default content pack").

    default_pack() -> dict[str, list[str]]   engine ("sigma", ...) -> the pack's files, sorted, absolute
"""

from __future__ import annotations

import os

DEFAULT_PACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")
_SUFFIXES = {"sigma": (".yml", ".yaml"), "yara": (".yar", ".yara"), "ioc": (".ioc",)}


def default_pack() -> dict[str, list[str]]:
    """Per engine, the pack's files (hidden ones skipped), sorted so that every host loads them alike."""
    out: dict[str, list[str]] = {}
    for engine, suffixes in _SUFFIXES.items():
        root = os.path.join(DEFAULT_PACK_DIR, engine)
        if not os.path.isdir(root):
            continue
        names = sorted(n for n in os.listdir(root) if n.endswith(suffixes) and not n.startswith("."))
        if names:
            out[engine] = [os.path.join(root, n) for n in names]
    return out
