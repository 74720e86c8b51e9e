"""The content package model: a manifest (name, version, engine) and its files, as a normalised tar.

This model is deliberately small. The validator of issue 8 extends `Manifest` (engine interface version,
the sha256 of every file, release notes) and adds its checks beside `load_package`; the TUF layer only
needs what is here: who the package is for, which version, and bytes that hash the same everywhere.

A package is a directory or a tar with `manifest.toml` at its top:

    name = "sigmahq-linux"
    engine = "ringfence.sigma"
    version = "2026.12.2"        # dotted non-negative integers; compared number by number

Only regular files and directories may be in it (no links, devices, absolute paths or `..`). The tar
that `package_tar` returns is rebuilt in sorted order with zeroed owners and times, so a package hashes
the same whoever packs it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterator

import msgspec

from ringfence.content._errors import PackageError

MANIFEST = "manifest.toml"
MAX_PACKAGE_BYTES = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,12}){0,5}$")


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a package says it is. Extended by the validator (issue 8); unknown keys are refused."""

    name: str
    engine: str
    version: str


def version_key(version: str) -> tuple[int, ...]:
    """ "1.10.0" -> (1, 10, 0); trailing zeros do not count, so "1.0" and "1" are the same version."""
    if not _VERSION.match(version):
        raise ValueError(f"version {version!r} is not dotted numbers (like 1.4.0 or 2026.12.2)")
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check_manifest(manifest: Manifest, where: str) -> Manifest:
    for key, value in (("name", manifest.name), ("engine", manifest.engine)):
        if not _NAME.match(value):
            raise PackageError(
                where, f"{key} {value!r} must be 1-128 of A-Z a-z 0-9 . _ - (not starting with . _ -)"
            )
    try:
        version_key(manifest.version)
    except ValueError as e:
        raise PackageError(where, str(e)) from None
    return manifest


def decode_manifest(data: bytes, where: str) -> Manifest:
    try:
        manifest = msgspec.toml.decode(data, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise PackageError(where, f"bad {MANIFEST}: {e}") from None
    return check_manifest(manifest, where)


class Package(msgspec.Struct, frozen=True):
    manifest: Manifest
    tar: bytes  # normalised: sorted members, owner 0, mtime 0

    @property
    def target_path(self) -> str:
        m = self.manifest
        return f"content/{m.engine}/{m.name}-{m.version}.tar"


def load_package(path: str, max_bytes: int = MAX_PACKAGE_BYTES) -> Package:
    """Read a package directory or tar file into a normalised tar. Raises PackageError."""
    files = dict(_read_dir(path, max_bytes) if os.path.isdir(path) else _read_tar_file(path, max_bytes))
    if MANIFEST not in files:
        raise PackageError(path, f"no {MANIFEST} at the top of the package")
    manifest = decode_manifest(files[MANIFEST], f"{path}/{MANIFEST}")
    return Package(manifest=manifest, tar=build_tar(files))


def build_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def _read_dir(root: str, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for entry in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, entry)
            rel = os.path.relpath(full, root)
            if os.path.islink(full) or not os.path.isfile(full):
                raise PackageError(full, "only regular files may be in a package (a link or device is here)")
            with open(full, "rb") as f:
                data = f.read(max_bytes + 1 - total)
            total += len(data)
            if total > max_bytes:
                raise PackageError(root, f"package is larger than {max_bytes} bytes")
            yield rel, data


def _read_tar_file(path: str, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    try:
        if os.path.getsize(path) > max_bytes:
            raise PackageError(path, f"package is larger than {max_bytes} bytes")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PackageError(path, f"cannot read: {e.strerror}") from None
    yield from read_tar(data, path, max_bytes)


def read_tar(data: bytes, where: str, max_bytes: int = MAX_PACKAGE_BYTES) -> Iterator[tuple[str, bytes]]:
    """The regular files of a tar, with safe relative names. Raises PackageError on anything else."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            total, seen = 0, set()
            for member in tar:
                if member.isdir():
                    continue
                name = _safe_name(member, where)
                if name in seen:
                    raise PackageError(where, f"{member.name!r}: a second member of that name")
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise PackageError(where, f"package is larger than {max_bytes} bytes unpacked")
                f = tar.extractfile(member)
                assert f is not None  # a regular file, checked by _safe_name
                yield name, f.read()
    except tarfile.TarError as e:
        raise PackageError(where, f"not a readable tar: {e}") from None


def _safe_name(member: tarfile.TarInfo, where: str) -> str:
    if not member.isreg():
        raise PackageError(where, f"{member.name!r}: only regular files may be in a package")
    name = os.path.normpath(member.name)
    if name.startswith(("/", "..")) or name in {".", ""} or "\x00" in name:
        raise PackageError(where, f"{member.name!r}: member names must be relative and stay inside")
    return name
