"""The content package model: a manifest and its files, as a normalised tar.

A package is a directory or a tar with `manifest.toml` at its top (`ringfence content build` writes it):

    name = "sigmahq-linux"
    engine = "ringfence.sigma"
    version = "2026.1202.154600" # dotted non-negative integers; compared number by number
    interface = "sigma@1"        # the engine interface the content was written for (its schema contract)
    notes = "..."                # release notes, optional

    [sha256]                     # every other file of the package, by its path inside
    "rules/ssh.yml" = "9f86d0..."

`interface`, `notes` and `sha256` are optional here (packages made before them still load and publish);
`ringfence content validate` refuses a package without them, or whose files do not match. The TUF layer
needs only who the package is for, which version, and bytes that hash the same everywhere.

Only regular files and directories may be in it (no links, devices, absolute paths or `..`). The tar
that `package_tar` returns is rebuilt in sorted order with zeroed owners and times, so a package hashes
the same whoever packs it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator

import msgspec

from ringfence.content._errors import PackageError

MANIFEST = "manifest.toml"
ROLES = ("root", "targets", "snapshot", "timestamp")  # the TUF roles a publisher keeps keys for
MAX_PACKAGE_BYTES = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,12}){0,5}$")


_INTERFACE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}@[0-9]{1,6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_NOTES = 65536


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a package says it is; unknown keys are refused."""

    name: str
    engine: str
    version: str
    interface: str = ""  # name@version of the engine interface (its ContentSchema); "" for none given
    notes: str = ""
    sha256: dict[str, str] = {}  # path inside the package -> the sha256 of its bytes (hex)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What the signed metadata names: (name, engine, version)."""
        return (self.name, self.engine, self.version)


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
    if manifest.interface and not _INTERFACE.match(manifest.interface):
        raise PackageError(where, f"interface {manifest.interface!r} must be NAME@NUMBER, like sigma@1")
    if len(manifest.notes) > MAX_NOTES:
        raise PackageError(where, f"notes are longer than {MAX_NOTES} characters")
    for name, digest in manifest.sha256.items():
        if not safe_member_name(name) or name == MANIFEST:
            raise PackageError(where, f"sha256 names {name!r}: not a relative path that stays inside")
        if not _SHA256.match(digest):
            raise PackageError(where, f"sha256 of {name!r}: {digest!r} is not 64 lowercase hex digits")
    return manifest


def safe_member_name(name: str) -> bool:
    """A relative path that stays inside the package: no absolute path, `..`, empty part or NUL."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest as TOML (by hand: msgspec writes TOML only with tomli-w, and these are a few strings
    and one table). Read back and compared, so a value TOML cannot hold is an error, never a bad file."""
    lines = [f"{key} = {_toml_string(value)}" for key, value in
             (("name", manifest.name), ("engine", manifest.engine), ("version", manifest.version),
              ("interface", manifest.interface), ("notes", manifest.notes)) if value]  # fmt: skip
    if manifest.sha256:
        lines += ["", "[sha256]"]
        lines += [
            f"{_toml_string(name)} = {_toml_string(manifest.sha256[name])}"
            for name in sorted(manifest.sha256)
        ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if decode_manifest(data, MANIFEST) != manifest:
        raise PackageError(MANIFEST, "the manifest does not read back as written")  # pragma: no cover
    return data


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except that DEL must be escaped too."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


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


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
