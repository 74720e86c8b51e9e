"""The default content pack: Ringfence's own detection rules, shipped in the wheel beside this module
(`content/default/<engine>/`), loaded by `ringfence run` with no setup (README, "Default content pack").

Each engine's folder is a content package like any other: `manifest.toml` (name, engine, version,
interface, the sha256 of every file) written by `ringfence content build` (`scripts/build-default-pack`),
and the package passes `ringfence content validate` in CI (tests/content/test_default_pack.py). Before
the agent stages a single file of it, every file is checked against that manifest: a rule edited or
added after the build, or a file missing, is refused with its name, so the pack that runs is the one
that was built and validated.

    default_pack() -> dict[str, list[str]]   engine ("sigma", ...) -> the pack's files, sorted, absolute
    default_manifests() -> dict[str, Manifest]
Raises PackageError naming the file at fault.
"""

from __future__ import annotations

import hashlib
import os

from ringfence.content._errors import PackageError
from ringfence.content._package import MANIFEST, Manifest, check_manifest, decode_manifest

DEFAULT_PACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")
REBUILD = "scripts/build-default-pack"
_SUFFIXES = {"sigma": (".yml", ".yaml"), "yara": (".yar", ".yara"), "ioc": (".ioc",)}


def default_manifests() -> dict[str, Manifest]:
    """Per engine folder, its manifest (read and checked)."""
    out = {}
    for engine in _SUFFIXES:
        path = os.path.join(DEFAULT_PACK_DIR, engine, MANIFEST)
        if not os.path.isdir(os.path.dirname(path)):
            continue
        try:
            with open(path, "rb") as f:
                out[engine] = check_manifest(decode_manifest(f.read(), path), path)
        except FileNotFoundError:
            raise PackageError(path, f"the default pack has no manifest: run {REBUILD}") from None
    return out


def default_pack() -> dict[str, list[str]]:
    """Per engine, the pack's files (hidden ones skipped), sorted so that every host loads them alike,
    each checked against the pack's manifest."""
    out: dict[str, list[str]] = {}
    for engine, manifest in default_manifests().items():
        root = os.path.join(DEFAULT_PACK_DIR, engine)
        names = sorted(n for n in os.listdir(root) if n.endswith(_SUFFIXES[engine]) and not n.startswith("."))
        _check(root, names, manifest)
        if names:
            out[engine] = [os.path.join(root, n) for n in names]
    return out


def _check(root: str, names: list[str], manifest: Manifest) -> None:
    problems = []
    for name in names:
        want = manifest.sha256.get(name)
        if want is None:
            problems.append(f"{name}: not in the pack's manifest")
            continue
        with open(os.path.join(root, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != want:
                problems.append(f"{name}: sha256 is not the manifest's")
    problems += [f"{name}: in the manifest, missing" for name in sorted(set(manifest.sha256) - set(names))]
    if problems:
        raise PackageError(
            os.path.join(root, MANIFEST),
            f"default pack {manifest.name} {manifest.version} does not match its manifest ("
            + "; ".join(problems[:5])
            + f"{'; ...' if len(problems) > 5 else ''}): a rule changed after the build; run {REBUILD}",
        )
