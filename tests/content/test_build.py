"""`ringfence content build`: what it infers (engine, name, version, interface), what flags override, what
it refuses, and that the package it writes is the one `load_package` and the validator read."""

from __future__ import annotations

import datetime
import os
import tarfile

import msgspec
import pytest

from ringfence.cli import main
from ringfence.content import PackageError, load_package, version_key
from ringfence.content._build import BuildOptions, build_package, clock_version
from ringfence.content._package import MANIFEST, decode_manifest, file_sha256

NOW = datetime.datetime(2026, 12, 2, 9, 5, 7, tzinfo=datetime.UTC)
SIGMA = "title: t\nid: 1\nlogsource: {category: process_creation, product: linux}\n"
INTERFACES = {"ringfence.sigma": "sigma@1", "ringfence.yara": "yara@1", "ringfence.ioc": "ioc@1"}


def interface_of(engine: str) -> str:
    return INTERFACES[engine]


def folder(tmp_path, name, files):
    d = tmp_path / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def manifest_of(path):
    with tarfile.open(path) as tar:
        f = tar.extractfile(MANIFEST)
        assert f is not None
        return decode_manifest(f.read(), path)


def test_a_folder_of_sigma_yaml_is_a_sigma_package_named_after_it_versioned_by_the_clock(tmp_path) -> None:
    d = folder(tmp_path, "linux rules", {"a.yml": SIGMA, "sub/b.yaml": SIGMA, ".git/x.yml": "hidden"})
    out = str(tmp_path / "out.tar")
    m = build_package(str(d), out, BuildOptions(), interface_of, NOW)
    inferred = ("ringfence.sigma", "linux-rules", "2026.1202.090507", "sigma@1")
    assert (m.engine, m.name, m.version, m.interface) == inferred
    assert m.sha256 == {"a.yml": file_sha256(SIGMA.encode()), "sub/b.yaml": file_sha256(SIGMA.encode())}
    assert manifest_of(out) == m  # what is in the tar is what was returned
    assert load_package(out).manifest == m
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["a.yml", MANIFEST, "sub/b.yaml"]  # hidden entries left out, sorted
        assert {(t.uid, t.mtime) for t in tar} == {(0, 0)}  # normalised: hashes the same whoever builds
    later = clock_version(NOW + datetime.timedelta(seconds=1))
    assert version_key(later) > version_key(m.version)  # the clock's versions go up
    assert version_key(clock_version(NOW.replace(year=2027, month=1, day=1, hour=0))) > version_key(m.version)


def test_flags_override_what_is_inferred_and_a_manifest_in_the_folder(tmp_path) -> None:
    d = folder(tmp_path, "x", {"a.yml": SIGMA, MANIFEST: 'name = "given"\nengine = "ringfence.sigma"\n'
                               'version = "3.0"\nnotes = "from the folder"\n'})  # fmt: skip
    out = str(tmp_path / "p.tar")
    m = build_package(str(d), out, BuildOptions(), interface_of, NOW)
    assert (m.name, m.version, m.notes) == ("given", "3.0", "from the folder")
    assert set(m.sha256) == {"a.yml"}  # its own manifest is not a file of the package
    options = BuildOptions(name="other", version="4.1.2", interface="sigma@1", notes='line one\n"quoted"\x7f')
    m = build_package(str(d), out, options, lambda e: pytest.fail("asked"), NOW)
    assert (m.name, m.version, m.notes) == ("other", "4.1.2", 'line one\n"quoted"\x7f')
    assert manifest_of(out) == m  # odd characters in the notes survive TOML


@pytest.mark.parametrize(
    ("files", "engine", "interface"),
    [
        ({"r.yar": "rule r { condition: true }"}, "ringfence.yara", "yara@1"),
        ({"bad.ioc": "1.2.3.4\n", "bundle.json": "{}"}, "ringfence.ioc", "ioc@1"),
    ],
)
def test_yara_and_ioc_folders_infer_their_engine(tmp_path, files, engine, interface) -> None:
    m = build_package(
        str(folder(tmp_path, "f", files)), str(tmp_path / "o.tar"), BuildOptions(), interface_of, NOW
    )
    assert (m.engine, m.interface) == (engine, interface)


def test_a_folder_of_two_engines_is_refused_naming_them_and_nothing_is_written(tmp_path) -> None:
    d = folder(tmp_path, "mixed", {"a.yml": SIGMA, "r.yar": "rule r { condition: true }"})
    out = tmp_path / "o.tar"
    with pytest.raises(
        PackageError, match=r"more than one engine.*ringfence.sigma: a.yml.*ringfence.yara: r.yar"
    ):
        build_package(str(d), str(out), BuildOptions(), interface_of, NOW)
    with pytest.raises(PackageError, match=r"another engine than ringfence\.sigma"):  # a named engine too
        build_package(str(d), str(out), BuildOptions(engine="ringfence.sigma"), interface_of, NOW)
    assert not out.exists()


@pytest.mark.parametrize(
    ("files", "options", "match"),
    [
        ({"README": "x"}, BuildOptions(), "to infer the engine from"),
        ({}, BuildOptions(engine="ringfence.sigma"), "no files"),
        ({"a.yml": SIGMA}, BuildOptions(version="1.x"), "dotted numbers"),
        ({"a.yml": SIGMA}, BuildOptions(name="../up"), "must be 1-128"),
        ({"a.yml": SIGMA}, BuildOptions(interface="sigma"), "NAME@NUMBER"),
    ],
)
def test_bad_input_is_refused_with_what_and_where(tmp_path, files, options, match) -> None:
    d = folder(tmp_path, "f", files)
    d.mkdir(exist_ok=True)
    with pytest.raises(PackageError, match=match):
        build_package(str(d), str(tmp_path / "o.tar"), options, interface_of, NOW)


def test_a_link_in_the_folder_is_refused(tmp_path) -> None:
    d = folder(tmp_path, "f", {"a.yml": SIGMA})
    os.symlink("/etc/passwd", d / "b.yml")
    with pytest.raises(PackageError, match="only regular files"):
        build_package(str(d), str(tmp_path / "o.tar"), BuildOptions(), interface_of, NOW)


def test_the_command_asks_the_engine_for_its_interface_and_replaces_the_package_whole(
    tmp_path, capsys
) -> None:
    d = folder(tmp_path, "rules", {"a.yml": SIGMA})
    notes = tmp_path / "NOTES"
    notes.write_text("first release\n")
    out = tmp_path / "p.tar"
    out.write_bytes(b"old")
    assert main(["content", "build", str(d), "-o", str(out), "--version", "1.2", "--notes", str(notes)]) == 0
    assert "built" in capsys.readouterr().out
    m = manifest_of(str(out))
    assert (m.interface, m.version, m.notes) == (
        "sigma@1",
        "1.2",
        "first release\n",
    )  # from the sandboxed engine
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert msgspec.toml.decode(b'name = "x"\n', type=dict) == {"name": "x"}
    assert main(["content", "build", str(d), "-o", str(out), "--engine", "t.none", "--version", "2"]) == 1
    assert "t.none" in capsys.readouterr().err
    assert manifest_of(str(out)) == m  # the failed build left the package as it was
