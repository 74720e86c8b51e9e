"""`ringfence content build DIR -o PKG`: a package from a folder of content files.

    build_package(directory, out, options, interface_of, now) -> Manifest

The files are every regular file under DIR (hidden entries skipped, as the engines skip them), each named
in the manifest with its sha256. The manifest's fields come from, in order: the flags, DIR/manifest.toml
if there is one, and what can be inferred:
    engine      from the files' suffixes: Sigma .yml/.yaml -> ringfence.sigma, YARA .yar/.yara ->
                ringfence.yara, IOC .ioc and STIX .json -> ringfence.ioc. Files of two engines in one
                folder are an error naming them (one package is for one engine).
    name        the folder's name (characters a name cannot have become `-`)
    version     the clock, UTC: YYYY.MMDD.HHMMSS, which `version_key` sorts in time order
    interface   the engine's own (`interface_of(engine)`: its ContentSchema, read in the sandbox)
The package is a tar (normalised: sorted, owner 0, time 0, as `load_package` makes it), written to a temp
file beside PKG and renamed, so PKG is the old file or the whole new one.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable

import msgspec

from ringfence._linux import write_atomic
from ringfence.content._errors import PackageError
from ringfence.content._package import (
    MANIFEST,
    MAX_PACKAGE_BYTES,
    Manifest,
    build_tar,
    check_manifest,
    decode_manifest,
    encode_manifest,
    file_sha256,
)

ENGINE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "ringfence.sigma": (".yml", ".yaml"),
    "ringfence.yara": (".yar", ".yara"),
    "ringfence.ioc": (".ioc", ".json"),
}
InterfaceOf = Callable[[str], str]
"""Engine id -> its content interface (name@version). Raises ContentError when it cannot tell."""


class BuildOptions(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None
    version: str | None = None
    engine: str | None = None
    interface: str | None = None
    notes: str | None = None  # the release notes themselves (the CLI reads --notes FILE)


def clock_version(now: datetime.datetime) -> str:
    """YYYY.MMDD.HHMMSS in UTC: dotted numbers that sort as time does."""
    return now.astimezone(datetime.UTC).strftime("%Y.%m%d.%H%M%S")


def engine_of_files(names: list[str]) -> str:
    """The one engine the files are for, by suffix. Raises PackageError: none, or more than one."""
    by_engine: dict[str, list[str]] = {}
    for name in names:
        for engine, suffixes in ENGINE_SUFFIXES.items():
            if name.endswith(suffixes):
                by_engine.setdefault(engine, []).append(name)
    if not by_engine:
        raise PackageError(
            "content build", "no Sigma (.yml, .yaml), YARA (.yar, .yara) or IOC (.ioc, .json) file to infer "
            "the engine from: name it with --engine",
        )  # fmt: skip
    if len(by_engine) > 1:
        parts = "; ".join(f"{e}: {', '.join(sorted(n)[:3])}{' ...' if len(n) > 3 else ''}"
                          for e, n in sorted(by_engine.items()))  # fmt: skip
        raise PackageError(
            "content build", f"files of more than one engine in one folder ({parts}): a package is for one "
            "engine, so build one package per engine from folders of their own",
        )  # fmt: skip
    return next(iter(by_engine))


def package_name(directory: str) -> str:
    base = os.path.basename(os.path.normpath(os.path.abspath(directory)))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip("._-")[:128]
    return name or "content"


def read_files(directory: str, skip: str | None = None) -> dict[str, bytes]:
    """Every regular file under `directory` (hidden entries and `skip` left out), by relative path.
    Raises PackageError for a link, device or FIFO, or a folder over the package size."""
    files: dict[str, bytes] = {}
    total = 0
    for current, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if os.path.islink(os.path.join(current, d)):
                raise PackageError(os.path.join(current, d), "a link: only regular files go into a package")
        for entry in sorted(names):
            path = os.path.join(current, entry)
            if entry.startswith(".") or (skip is not None and os.path.abspath(path) == skip):
                continue
            if os.path.islink(path) or not os.path.isfile(path):
                raise PackageError(path, "only regular files go into a package (a link, device or FIFO)")
            rel = os.path.relpath(path, directory)
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise PackageError(path, "the name is not UTF-8") from None
            with open(path, "rb") as f:
                data = f.read(MAX_PACKAGE_BYTES + 1 - total)
            total += len(data)
            if total > MAX_PACKAGE_BYTES:
                raise PackageError(directory, f"more than {MAX_PACKAGE_BYTES} bytes of files")
            files[rel] = data
    return files


def build_package(
    directory: str,
    out: str,
    options: BuildOptions,
    interface_of: InterfaceOf,
    now: datetime.datetime,
) -> Manifest:
    """Write the package of `directory` to `out` (atomically) and return its manifest. Raises
    PackageError (or ContentError from `interface_of`); nothing is written then."""
    if not os.path.isdir(directory):
        raise PackageError(directory, "not a directory")
    files = read_files(directory, skip=os.path.abspath(out))
    given = (
        decode_manifest(files.pop(MANIFEST), os.path.join(directory, MANIFEST)) if MANIFEST in files else None
    )
    if not files:
        raise PackageError(directory, "no files to package")
    engine = options.engine or (given.engine if given else None) or engine_of_files(sorted(files))
    _refuse_mixed(files, engine)  # an engine named by flag or manifest; inferring has refused it already
    interface = options.interface or (given.interface if given and given.interface else None)
    manifest = check_manifest(
        Manifest(
            name=options.name or (given.name if given else package_name(directory)),
            engine=engine,
            version=options.version or (given.version if given else clock_version(now)),
            interface=interface or interface_of(engine),
            notes=options.notes if options.notes is not None else (given.notes if given else ""),
            sha256={name: file_sha256(data) for name, data in sorted(files.items())},
        ),
        out,
    )
    write_atomic(out, build_tar({MANIFEST: encode_manifest(manifest), **files}), 0o644)
    return manifest


def _refuse_mixed(files: dict[str, bytes], engine: str) -> None:
    """Files of engines other than `engine` (named or from a manifest) are refused as well."""
    others = [
        n for n in files for e, suffixes in ENGINE_SUFFIXES.items() if e != engine and n.endswith(suffixes)
    ]
    if engine in ENGINE_SUFFIXES and others:
        shown = ", ".join(sorted(others)[:3]) + (" ..." if len(others) > 3 else "")
        raise PackageError(
            "content build", f"files of another engine than {engine} ({shown}): a package is for one engine"
        )
