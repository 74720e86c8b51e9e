"""A real agent's own recording, replayed: what `ringfence run` raised live on a real exec, `ringfence
replay` raises again from its events.jsonl, field for field (the finding's time, id and sequence are the
replay's own)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import end_agent, eventually
from tests.kernel import mounted_tmpfs

pytestmark = pytest.mark.kernel

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


@pytest.fixture
def recorded() -> Iterator[tuple[Path, str, list[dict]]]:
    """An agent run (defaults: the Sigma engine and the default pack) that saw a reverse-shell-like
    exec (harmless: bash runs `true` with the redirection as an argument); its state dir, the marker and
    the live findings about that exec."""
    base = Path(tempfile.mkdtemp(prefix="rf-replay-e2e-", dir="/tmp"))
    base.chmod(0o755)
    marker = f"rf-replay-{uuid.uuid4().hex[:10]}"
    with mounted_tmpfs(base / "mnt") as mnt:
        config = base / "rf.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{base / "state"}"\n'
            f'[sensors]\nexec_mounts = ["{mnt}"]\naudit_key = "rf-t-{marker[-8:]}"\n'
            "[output]\nconsole_interval_s = 0\n"
        )
        proc = subprocess.Popen(
            [*RINGFENCE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if " running on " in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        findings = base / "state" / "findings.jsonl"

        def live() -> list[dict]:
            if not findings.exists():
                return []
            return [json.loads(x) for x in findings.read_bytes().splitlines() if marker.encode() in x]

        try:
            assert ready.wait(90), "".join(lines)
            subprocess.run(["/bin/bash", "-c", f"true 'exec 3<>/dev/tcp/127.0.0.1/9' {marker}"], check=True)
            assert eventually(lambda: bool(live()), 30), "".join(lines)
        finally:
            end_agent(proc, signal.SIGTERM)
        try:
            yield base / "state", marker, live()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _comparable(finding: dict) -> dict:
    info = {k: v for k, v in finding["finding_info"].items() if k != "uid"}
    return {"info": info, "evidences": finding.get("evidences"), "severity": finding["severity_id"],
            "source": finding["metadata"]["log_name"], "host": finding["device"]["hostname"]}  # fmt: skip


def test_a_real_agents_recording_replays_into_the_findings_it_raised_live(recorded) -> None:
    state, marker, live = recorded
    out = state.parent / "replayed.jsonl"
    r = subprocess.run(
        [*RINGFENCE, "replay", str(state / "events.jsonl"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    replayed = [json.loads(x) for x in out.read_bytes().splitlines() if marker.encode() in x]
    assert live and any(
        f["finding_info"]["analytic"]["name"] == "6c1f0c7e-0b4e-4e43-9a51-1e7d3a0c0001" for f in live
    )
    key = lambda f: json.dumps(_comparable(f), sort_keys=True)  # noqa: E731
    assert sorted(map(key, replayed)) == sorted(map(key, live))
