"""Staging a verified package: STATE/content-updates/ENGINE/VERSION/, made in a temp dir then renamed,
so a reader (the agent's content slots, later) sees a whole package or none. The active content is
never touched here."""

from __future__ import annotations

import os
import shutil

from ringfence._linux import fsync_dir, write_atomic
from ringfence.content._errors import PackageError
from ringfence.content._package import MANIFEST, Manifest, decode_manifest, read_tar, version_key

UPDATES_DIR = "content-updates"


def staged_dir(state_dir: str, engine: str, version: str) -> str:
    return os.path.join(state_dir, UPDATES_DIR, engine, version)


def staged_versions(state_dir: str, engine: str) -> list[str]:
    """The versions staged for `engine`, lowest first (temp dirs of a crashed run are not versions)."""
    base = os.path.join(state_dir, UPDATES_DIR, engine)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    good = []
    for name in names:
        try:
            version_key(name)
        except ValueError:
            continue
        good.append(name)
    return sorted(good, key=version_key)


def stage(state_dir: str, signed: Manifest, tar: bytes, where: str) -> str:
    """Unpack a verified tar and move it into place. Its manifest must be the one the metadata signed."""
    files = dict(read_tar(tar, where))
    manifest = decode_manifest(files.get(MANIFEST, b""), f"{where}/{MANIFEST}")
    if manifest.identity != signed.identity:  # the rest is in the tar, whose hash TUF verified
        raise PackageError(where, f"the package's manifest {manifest} is not the signed one {signed}")
    final = staged_dir(state_dir, signed.engine, signed.version)
    parent = os.path.dirname(final)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    for name in os.listdir(parent):  # what a run killed mid-stage left (callers hold the update lock)
        if name.startswith("."):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = os.path.join(parent, f".{signed.version}.tmp-{os.getpid()}")
    try:
        for name, data in files.items():
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            write_atomic(path, data, 0o600)
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    return final
