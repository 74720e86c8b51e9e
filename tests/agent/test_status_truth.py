"""`ringfence status` and the metrics listener tell the truth, against a real agent run as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.helpers import end_agent

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    tmp_path: Path, tmpfs: Path, key: str, *, extensions: list[str], agent: str = "", more: str = ""
) -> Path:
    path = tmp_path / "rf.toml"
    enabled = ", ".join(f'"{e}"' for e in extensions)
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n{agent}'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\naudit_key = "{key}"\n'
        "[output]\nconsole_interval_s = 0.5\n"
        f'[extensions]\nenabled = [{enabled}]\nimport_paths = ["{REPO}"]\n{more}'
    )
    return path


def _status(state: Path) -> tuple[int, dict]:
    r = subprocess.run([*RINGFENCE, "status", "--json", "--state-dir", str(state)], capture_output=True)
    return r.returncode, (json.loads(r.stdout) if r.stdout else {})


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    """Wait for a condition with a generous deadline (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.2)


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*RINGFENCE, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        end_agent(proc, drain=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_run_refuses_a_relative_state_dir_on_the_command_line_like_the_config_file(tmp_path: Path) -> None:
    r = subprocess.run(
        [*RINGFENCE, "run", "--state-dir", "relative/dir"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 1
    assert "command line: key agent.state_dir: must be an absolute path" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "relative").exists()


def test_failing_setup_degrades_status_with_its_own_error_one_line_per_failure_traceback_in_the_log(
    tmp_path: Path, tmpfs: Path, run_agent: Callable[[Path], subprocess.Popen[str]]
) -> None:
    port = _free_port()
    config = _config(
        tmp_path,
        tmpfs,
        "rf-t-truth1",
        extensions=["fault.setup=tests.extensions.fault_extensions:SetupFails"],
        agent=f'metrics_listen = "127.0.0.1:{port}"\n',
    )
    state = tmp_path / "state"
    proc = run_agent(config)
    _until("status answers", lambda: bool(_status(state)[1]), proc)
    rc, doc = _status(state)
    assert rc == 1 and not doc["healthy"]  # backoff or already quarantined: never "healthy"
    own = "PermissionError: cannot open the blocklist /root/x/bl.txt: Permission denied"
    assert any(p.startswith("extension fault.setup ") and own in p for p in doc["problems"]), doc["problems"]
    human = subprocess.run([*RINGFENCE, "status", "--state-dir", str(state)], capture_output=True, text=True)
    assert human.returncode == 1 and own in human.stdout.splitlines()[0]

    _until("quarantine", lambda: _status(state)[1]["extensions"][0]["state"] == "quarantined", proc)
    metrics = _scrape(port)
    assert metrics[("ringfence_healthy", ())] == 0
    assert (
        metrics[("ringfence_extension_state", (("extension", "fault.setup"), ("state", "quarantined")))] == 1
    )
    assert metrics[("ringfence_extension_state", (("extension", "fault.setup"), ("state", "running")))] == 0
    assert metrics[("ringfence_extension_restarts_total", (("extension", "fault.setup"),))] >= 1
    listening = [c for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]
    failures = _status(state)[1]["extensions"][0]["failures"]

    _, err = _stop(proc)
    assert "Traceback" not in err
    ended = [line for line in err.splitlines() if "extension fault.setup" in line and " ended: " in line]
    assert len(ended) == failures, err  # one line per failure on the terminal
    assert all(own in line for line in ended)
    log = (state / "agent.log").read_text()
    assert log.count("Traceback (most recent call last)") == failures  # the traceback once per failure
    assert (state / "agent.log").stat().st_mode & 0o077 == 0


def test_drops_make_status_degraded_then_healthy_once_the_window_passes(
    tmp_path: Path, tmpfs: Path, run_agent: Callable[[Path], subprocess.Popen[str]]
) -> None:
    port = _free_port()
    config = _config(
        tmp_path,
        tmpfs,
        "rf-t-truth2",
        extensions=["fault.stuck=tests.extensions.fault_extensions:Stuck"],
        agent=f'drop_window_s = 3\nmetrics_listen = "127.0.0.1:{port}"\n',
    )
    state = tmp_path / "state"
    proc = run_agent(config)
    _until("status answers", lambda: bool(_status(state)[1]), proc)
    rc, doc = _status(state)
    assert rc == 0, doc["problems"]
    storm = tmpfs / "storm"
    storm.mkdir()
    stop = threading.Event()

    def write_until_stopped() -> None:
        """File events for the stuck extension until the drops show: written without a pause, so the
        drops are still inside the 3 s window when status is read (a storm of rounds, then a look, was
        past it on a loaded VM once the unlinks no longer counted as drops of their own)."""
        i = 0
        while not stop.is_set():
            (storm / f"f{i % 500}").write_bytes(b"x")
            i += 1

    writer = threading.Thread(target=write_until_stopped, daemon=True)
    writer.start()
    try:
        _until(
            "a stage drops events",
            lambda: any("dropped events" in p for p in _status(state)[1]["problems"]),
            proc,
        )
        rc, doc = _status(state)
    finally:
        stop.set()
        writer.join(30)
    assert rc == 1
    line = next(p for p in doc["problems"] if "dropped events" in p)
    assert "in all" in line and "degraded for 3 s after a drop" in line
    metrics = _scrape(port)
    assert metrics[("ringfence_healthy", ())] == 0
    stage = line.split(" dropped events")[0]  # whichever stage it was: the sensor, the broker, the extension
    assert metrics[("ringfence_dropped_events_total", (("stage", stage),))] >= 1

    _until("healthy again, no new drop for 3 s", lambda: _status(state)[0] == 0, proc)
    doc = _status(state)[1]
    assert any(d["stage"] == stage and d["total"] >= 1 for d in doc["drops"]), doc["drops"]
    _stop(proc)


def test_extension_not_started_after_the_ready_timeout_degrades_status(
    tmp_path: Path, tmpfs: Path, run_agent: Callable[[Path], subprocess.Popen[str]]
) -> None:
    config = _config(
        tmp_path,
        tmpfs,
        "rf-t-truth3",
        extensions=["fault.hangs=tests.extensions.fault_extensions:SetupHangs"],
        more="ready_timeout_s = 2\n",  # the operator's: the default 20 s would only make this test slower
    )
    state = tmp_path / "state"
    proc = run_agent(config)
    _until("status answers (after the ready timeout)", lambda: bool(_status(state)[1]), proc)
    rc, doc = _status(state)
    assert rc == 1
    line = next(p for p in doc["problems"] if p.startswith("extension fault.hangs "))
    assert "no handshake" in line, line  # still starting, or just timed out at the handshake deadline
    _, err = _stop(proc)
    assert "not every extension was ready within 2 s (extensions.ready_timeout_s)" in err, err


def test_metrics_port_in_use_is_a_one_line_error_and_the_agent_leaves_nothing_behind(
    tmp_path: Path, tmpfs: Path
) -> None:
    from ringfence.sensors.audit import list_rule_keys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = _config(
            tmp_path, tmpfs, "rf-t-truth4", extensions=[], agent=f'metrics_listen = "127.0.0.1:{port}"\n'
        )
        r = subprocess.run(
            [*RINGFENCE, "run", "--config", str(config)], capture_output=True, text=True, timeout=120
        )
    assert r.returncode == 1, r.stderr
    assert f"agent.metrics_listen 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert "rf-t-truth4" not in list_rule_keys()
    assert not (tmp_path / "state" / "status.sock").exists()
