"""A real agent with the audit feed on (raw audit events, logins and account changes, the baseline):
what it writes to events.jsonl for a real su, useradd/userdel, a failed sshd login sent as PAM sends
it, and a memfd_create the baseline records, each line valid OCSF 1.8.0.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ringfence.agent import Agent, Console
from tests.agent.helpers import scoped_config
from tests.ocsf.test_agent_ocsf import _lines, _wait_until
from tests.ocsf.validator import problems
from tests.sensors.audit.test_audit_feed import MEMFD, send_user_record

pytestmark = pytest.mark.kernel


@pytest.fixture
def agent(tmpfs: Path) -> Iterator[Agent]:
    state = Path(tempfile.mkdtemp(prefix="rf-audit-ocsf-", dir="/tmp"))
    config = scoped_config(tmpfs, state / "state")
    sensors = msgspec.structs.replace(
        config.sensors,
        audit_events=True,
        audit_identity=True,
        audit_baseline=True,
        audit_baseline_off=(),  # the write watches too (off by default)
        file=False,
        exec_auth=False,
    )
    a = Agent(msgspec.structs.replace(config, sensors=sensors), console=Console(io.StringIO()))
    a.start()
    try:
        assert "audit" not in a.unavailable, a.unavailable
        yield a
    finally:
        a.stop()
        shutil.rmtree(state)


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    name = f"rf{uuid.uuid4().hex[:10]}"
    yield name
    for tool in ("userdel", "groupdel"):
        subprocess.run([tool, name], capture_output=True, check=False)


def _raw(key: str, field: str, value: str) -> Callable[[dict[str, Any]], bool]:
    def match(d: dict[str, Any]) -> bool:
        records = d.get("unmapped", {}).get("audit", {}).get("records", []) if d["class_uid"] == 0 else []
        return any(r["type"] == key and r["fields"].get(field) == value for r in records)

    return match


def test_audit_feed_lines_of_a_real_agent_are_valid_ocsf_1_8_0(agent: Agent, throwaway_user: str) -> None:
    state = Path(agent.state_dir)
    key = agent.config.sensors.audit_key
    subprocess.run(["su", "nobody", "-s", "/bin/true"], stdin=subprocess.DEVNULL, check=True)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", throwaway_user], check=True)
    subprocess.run(["userdel", throwaway_user], check=True)
    intruder = f"rf-{uuid.uuid4().hex[:8]}"
    send_user_record(
        1100,
        f'op=PAM:authentication grantors=? acct="{intruder}" exe="/usr/sbin/sshd" hostname=192.0.2.9 '
        "addr=192.0.2.9 terminal=ssh res=failed",
    )
    subprocess.run([sys.executable, "-c", MEMFD, "rf-ocsf"], check=True)
    expected: dict[str, Callable[[dict[str, Any]], bool]] = {
        "su logon": lambda d: d["class_uid"] == 3002 and d["user"].get("name") == "nobody",
        "failed sshd": lambda d: (
            d["class_uid"] == 3002 and d["user"].get("name") == intruder and d["status_id"] == 2
        ),
        "group created": lambda d: d["class_uid"] == 3001 and d["activity_id"] == 1,
        "user deleted": lambda d: d["class_uid"] == 3001 and d["activity_id"] == 6,
        "raw ADD_USER": _raw("ADD_USER", "exe", "/usr/sbin/useradd"),
        "memfd": _raw("SYSCALL", "key", f"{key}:memfd"),
        "passwd watch": _raw("SYSCALL", "key", f"{key}:identity"),  # useradd wrote /etc/passwd
    }

    def missing() -> list[str]:
        lines = _lines(state, "events.jsonl")
        return [name for name, match in expected.items() if not any(match(d) for d in lines)]

    _wait_until(missing)
    agent.stop()

    events = _lines(state, "events.jsonl")
    assert {0, 3001, 3002} <= {d["class_uid"] for d in events}
    bad = {f"{d['type_uid']} {p}" for d in events for p in problems(d)}
    assert not bad, f"{len(bad)} kinds of problems in {len(events)} lines:\n" + "\n".join(sorted(bad)[:40])
