"""A sandboxed extension tries to leave its sandbox: each attempt is reported, and each is denied."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.extensions.conftest import Rig, fault_spec, wait_until

ATTEMPTS = ("network", "read-shadow", "write-outside", "ptrace-agent")


@pytest.fixture
def playground() -> Iterator[Path]:
    """A directory the sandbox user could reach by DAC alone, so only the sandbox can deny writes in it."""
    root = Path(tempfile.mkdtemp(prefix="ringfence-escape-", dir="/var/tmp"))
    root.chmod(0o777)
    (root / "state").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root)


def test_sandboxed_extension_is_denied_network_shadow_outside_writes_and_ptrace(
    rig: Rig, playground: Path
) -> None:
    outside, inside = playground / "outside.txt", playground / "state" / "inside.txt"
    spec = fault_spec(
        "fault.escape",
        "Escaper",
        sandbox=True,
        state_dir=str(playground / "state"),
        settings={"outside": str(outside), "inside": str(inside)},
    )
    rig.start([spec])
    try:
        rig.wait_running("fault.escape")
    except AssertionError:
        st = rig.stats("fault.escape")
        raise AssertionError(f"sandboxed extension did not start: {st.last_exit_reason}") from None
    rig.publish("/x/now.escape")
    wait_until(
        "every attempt reported", lambda: all(rig.found(f"escape:{a}") for a in (*ATTEMPTS, "write-inside"))
    )
    outcomes = {a: rig.found(f"escape:{a}")[0].description for a in (*ATTEMPTS, "write-inside")}
    assert outcomes.pop("write-inside") == "allowed"  # the sandbox is not simply broken
    assert all((o or "").startswith("denied") for o in outcomes.values()), outcomes
    assert not outside.exists()
    assert inside.exists()
    assert inside.stat().st_uid != 0


def test_unsandboxable_policy_is_a_failed_launch_not_an_unconfined_run(rig: Rig) -> None:
    spec = fault_spec("fault.good", "WellBehaved", sandbox=True, state_dir="/nonexistent/ringfence-state")
    rig.start([spec])
    wait_until("the launch failure", lambda: rig.stats("fault.good").restart_reasons.get("launch", 0) >= 1)
    st = rig.stats("fault.good")
    assert "does not exist" in (st.last_exit_reason or "")
    assert st.pid is None
