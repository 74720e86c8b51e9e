"""Bad packages are refused with the file and the reason, before anything is signed or staged."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.content import PackageError, load_package, version_key
from ringfence.content._package import Manifest, build_tar, decode_manifest, read_tar
from ringfence.content._stage import stage

GOOD = b'name = "linux"\nengine = "ringfence.sigma"\nversion = "1.0"\n'


def make_dir(tmp_path, manifest=GOOD, files=None):
    d = tmp_path / "pkg"
    d.mkdir()
    if manifest is not None:
        (d / "manifest.toml").write_bytes(manifest)
    for rel, data in (files or {"a.yml": b"x"}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def make_tar(tmp_path, members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path = tmp_path / "pkg.tar"
    path.write_bytes(out.getvalue())
    return path


def member(name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), linkname
    return info, data if kind == tarfile.REGTYPE else None


def test_directory_and_tar_of_the_same_files_make_the_same_package(tmp_path):
    d = make_dir(tmp_path, files={"rules/b.yml": b"b", "rules/a.yml": b"a"})
    from_dir = load_package(str(d))
    tar = make_tar(
        tmp_path, [member("./rules/a.yml", b"a"), member("manifest.toml", GOOD), member("rules/b.yml", b"b")]
    )
    assert load_package(str(tar)) == from_dir
    assert from_dir.manifest == Manifest(name="linux", engine="ringfence.sigma", version="1.0")


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (None, "no manifest.toml at the top"),
        (b'name = "linux"\nengine = "ringfence.sigma"\n', "missing required field `version`"),
        (GOOD + b'colour = "red"\n', "unknown field `colour`"),
        (b'name = "linux"\nengine = "ringfence.sigma"\nversion = 1\n', "Expected `str`, got `int`"),
        (b'name = "linux"\nengine = "ringfence.sigma"\nversion = "1.0-beta"\n', "is not dotted numbers"),
        (b'name = "../up"\nengine = "ringfence.sigma"\nversion = "1"\n', "name '../up' must be"),
        (b'name = "x"\nengine = "a/b"\nversion = "1"\n', "engine 'a/b' must be"),
        (b"name = [unclosed", "bad manifest.toml"),
        (b"\xff\xfe", "bad manifest.toml"),
    ],
)
def test_bad_manifest_refused_with_its_reason(tmp_path, manifest, why):
    with pytest.raises(PackageError, match="pkg") as e:
        load_package(str(make_dir(tmp_path, manifest)))
    assert why in str(e.value)


def test_symlink_in_package_directory_refused(tmp_path):
    d = make_dir(tmp_path)
    os.symlink("/etc/shadow", d / "shadow.yml")
    with pytest.raises(PackageError, match="only regular files may be in a package"):
        load_package(str(d))


def test_symlinked_directory_in_package_refused(tmp_path):
    d = make_dir(tmp_path)
    os.symlink("/etc", d / "etc")
    with pytest.raises(PackageError, match="only regular files"):
        load_package(str(d))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (member("../escape.yml", b"x"), "must be relative and stay inside"),
        (member("/etc/cron.d/evil", b"x"), "must be relative and stay inside"),
        (member("a/../../escape", b"x"), "must be relative and stay inside"),
        (member("link", kind=tarfile.SYMTYPE, linkname="/etc/shadow"), "only regular files"),
        (member("hard", kind=tarfile.LNKTYPE, linkname="manifest.toml"), "only regular files"),
        (member("dev", kind=tarfile.CHRTYPE), "only regular files"),
        (member("fifo", kind=tarfile.FIFOTYPE), "only regular files"),
    ],
)
def test_unsafe_tar_member_refused(tmp_path, bad, why):
    tar = make_tar(tmp_path, [member("manifest.toml", GOOD), bad])
    with pytest.raises(PackageError, match=why):
        load_package(str(tar))


def test_duplicate_tar_member_refused(tmp_path):
    tar = make_tar(tmp_path, [member("manifest.toml", GOOD), member("a.yml", b"1"), member("./a.yml", b"2")])
    with pytest.raises(PackageError, match=r"'\./a\.yml': a second member of that name"):
        load_package(str(tar))


def test_not_a_tar_refused(tmp_path):
    path = tmp_path / "pkg.tar"
    path.write_bytes(b"\x00junk" * 300)
    with pytest.raises(PackageError, match="not a readable tar"):
        load_package(str(path))


def test_package_over_the_size_limit_refused(tmp_path):
    d = make_dir(tmp_path, files={"big.yml": b"x" * 5000})
    with pytest.raises(PackageError, match="larger than 4096 bytes"):
        load_package(str(d), max_bytes=4096)
    tar = make_tar(tmp_path, [member("manifest.toml", GOOD), member("big.yml", b"x" * 5000)])
    with pytest.raises(PackageError, match="larger than 4096 bytes"):
        load_package(str(tar), max_bytes=4096)


def test_versions_compare_number_by_number():
    assert version_key("1.10") > version_key("1.9")
    assert version_key("2026.12.2") > version_key("2026.2.30")
    assert version_key("1.0.0") == version_key("1")
    for bad in ("", "1.", ".1", "v1", "1.-1", "1 .2", "\u0661"):  # an Arabic-Indic digit one
        with pytest.raises(ValueError, match="dotted numbers"):
            version_key(bad)


def test_stage_refuses_a_tar_whose_manifest_is_not_the_signed_one(tmp_path):
    tar = build_tar({"manifest.toml": GOOD.replace(b"1.0", b"7.0")})
    signed = Manifest(name="linux", engine="ringfence.sigma", version="1.0")
    with pytest.raises(PackageError, match="is not the signed one"):
        stage(str(tmp_path), signed, tar, "here")
    assert not (tmp_path / "content-updates").exists()


def test_stage_leaves_no_temp_dir_behind(tmp_path):
    tar = build_tar({"manifest.toml": GOOD, "rules/a.yml": b"a"})
    signed = Manifest(name="linux", engine="ringfence.sigma", version="1.0")
    final = stage(str(tmp_path), signed, tar, "here")
    assert os.listdir(os.path.dirname(final)) == ["1.0"]
    assert (tmp_path / "content-updates" / "ringfence.sigma" / "1.0" / "rules" / "a.yml").read_bytes() == b"a"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_as_a_tar_raise_only_package_error(data):
    try:
        files = dict(read_tar(data, "fuzz"))
    except PackageError:
        return
    assert all(not n.startswith(("/", "..")) for n in files)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | st.text(max_size=512).map(str.encode))
def test_random_manifest_raises_only_package_error(data):
    try:
        decode_manifest(data, "fuzz")
    except PackageError as e:
        assert str(e).startswith("fuzz: ") and "\n" not in str(e).strip()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=40), st.binary(max_size=64), max_size=6))
def test_generated_member_names_never_escape(tmp_path_factory, files):
    tar = build_tar({"manifest.toml": GOOD, **files})
    try:
        names = [n for n, _ in read_tar(tar, "fuzz")]
    except PackageError:
        return
    root = tmp_path_factory.mktemp("stage")
    for name in names:
        assert os.path.realpath(root / name).startswith(str(root) + os.sep)
