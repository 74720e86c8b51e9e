"""Ways around the exec gate that the host's settings leave open are shown, without degrading health."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfence.agent._health import exposure_warnings


def sysctls(tmp_path: Path, clone: str | None, max_userns: str | None) -> tuple[str, str]:
    paths = (tmp_path / "unprivileged_userns_clone", tmp_path / "max_user_namespaces")
    for path, value in zip(paths, (clone, max_userns), strict=True):
        if value is not None:
            path.write_text(value + "\n")
    return str(paths[0]), str(paths[1])


@pytest.mark.parametrize(
    ("clone", "max_userns"), [("1", "63432"), (None, "63432"), (None, None), ("1", None)]
)
def test_unprivileged_user_namespaces_allowed_is_a_warning(
    tmp_path: Path, clone: str | None, max_userns: str | None
) -> None:
    (line,) = exposure_warnings(exec_gated=True, sysctls=sysctls(tmp_path, clone, max_userns))
    assert "user namespaces" in line and "max_user_namespaces=0" in line


@pytest.mark.parametrize(("clone", "max_userns"), [("0", "63432"), ("1", "0"), (None, "0")])
def test_no_warning_when_a_sysctl_refuses_them(
    tmp_path: Path, clone: str | None, max_userns: str | None
) -> None:
    assert exposure_warnings(exec_gated=True, sysctls=sysctls(tmp_path, clone, max_userns)) == []


def test_no_exec_gate_no_gate_warning(tmp_path: Path) -> None:
    assert exposure_warnings(exec_gated=False, sysctls=sysctls(tmp_path, "1", "100")) == []


def test_this_host_is_judged_from_its_real_sysctls() -> None:
    """This machine (Debian defaults) allows them: the warning must be there, as an operator would see."""
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    allowed = Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0" and (
        not clone.exists() or clone.read_text().strip() != "0"
    )
    assert bool(exposure_warnings(exec_gated=True)) == allowed
