"""The default content pack is a package like any other: built (its manifest matches every file), it
passes the validation gauntlet, and a pack changed after its build is refused before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ringfence.agent._content import ContentError
from ringfence.agent._extensions import with_default_pack
from ringfence.cli import main
from ringfence.content import PackageError
from ringfence.content import _default as default


def test_the_shipped_pack_matches_its_manifest() -> None:
    """Fails after a rule is edited without `scripts/build-default-pack`."""
    manifests = default.default_manifests()
    files = default.default_pack()
    assert set(manifests) == set(files) == {"sigma"}
    m = manifests["sigma"]
    assert (m.name, m.engine, m.interface) == ("ringfence-default-sigma", "ringfence.sigma", "sigma@1")
    assert sorted(Path(p).name for p in files["sigma"]) == sorted(m.sha256)


def test_the_shipped_pack_passes_the_gauntlet(capsys: pytest.CaptureFixture[str]) -> None:
    pack = str(Path(default.DEFAULT_PACK_DIR) / "sigma")
    assert main(["content", "validate", pack, "--fuzz-seconds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["blocking"] and [i for i in report["issues"] if i["severity"] == "error"] == []


@pytest.fixture
def copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(default.DEFAULT_PACK_DIR, tmp_path / "default")
    monkeypatch.setattr(default, "DEFAULT_PACK_DIR", str(tmp_path / "default"))
    return tmp_path / "default" / "sigma"


def test_a_rule_edited_after_the_build_is_refused_by_name(copy: Path) -> None:
    rule = sorted(copy.glob("*.yml"))[0]
    rule.write_text(rule.read_text().replace("level: ", "level: informational\n#", 1))
    with pytest.raises(PackageError, match=rf"{rule.name}: sha256 is not the manifest's.*build-default-pack"):
        default.default_pack()
    with pytest.raises(ContentError, match="the default content pack"):
        with_default_pack({}, {"ringfence.sigma"})


def test_a_rule_added_or_removed_after_the_build_is_refused(copy: Path) -> None:
    (copy / "zz_added.yml").write_text("title: x\n")
    with pytest.raises(PackageError, match=r"zz_added\.yml: not in the pack's manifest"):
        default.default_pack()
    (copy / "zz_added.yml").unlink()
    gone = sorted(copy.glob("*.yml"))[-1]
    gone.unlink()
    with pytest.raises(PackageError, match=rf"{gone.name}: in the manifest, missing"):
        default.default_pack()


def test_a_pack_without_its_manifest_is_refused(copy: Path) -> None:
    (copy / "manifest.toml").unlink()
    with pytest.raises(PackageError, match="no manifest"):
        default.default_pack()
