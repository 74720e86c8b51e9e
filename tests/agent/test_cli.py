"""`ringfence run` and `ringfence status` as a user runs them: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringfence.sensors.audit import list_rule_keys

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def _write_config(path: Path, tmpfs: Path, state: Path, key: str, extra: str = "") -> Path:
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\naudit_key = "{key}"\n'
        f"[output]\nconsole_interval_s = 0.5\n{extra}"
    )
    return path


def _wait_for_status(state: Path, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        r = subprocess.run([*RINGFENCE, "status", "--json", "--state-dir", str(state)], capture_output=True)
        if r.stdout:
            return {"rc": r.returncode, **json.loads(r.stdout)}
        time.sleep(0.2)
    raise AssertionError("the agent never answered on its status socket")


def test_run_status_and_clean_shutdown_on_sigint(tmpfs: Path, tmp_path: Path) -> None:

    state = tmp_path / "state"
    config = _write_config(tmp_path / "rf.toml", tmpfs, state, "rf-cli-test", "[extensions]\nenabled = []\n")
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        doc = _wait_for_status(state, proc)
        assert doc["healthy"] and doc["rc"] == 0, doc["problems"]
        assert {s["name"] for s in doc["sensors"]} >= {"process", "audit", "file", "exec-auth"}
        subprocess.run(["/bin/true", "cli-marker"], check=True)
        human = subprocess.run(
            [*RINGFENCE, "status", "--state-dir", str(state)], capture_output=True, text=True
        )
        assert human.returncode == 0 and "healthy" in human.stdout and "exec-auth" in human.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert b"ringfence stopped" in out
    assert "rf-cli-test" not in list_rule_keys()
    assert not (state / "status.sock").exists()
    lines = (state / "events.jsonl").read_text().splitlines()
    assert any("cli-marker" in line for line in lines)
    down = subprocess.run([*RINGFENCE, "status", "--state-dir", str(state)], capture_output=True, text=True)
    assert down.returncode == 1 and "no agent is running" in down.stderr


def test_bad_config_names_key_and_file_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[broker]\nauth_deadline_ms = "soon"\n')
    r = subprocess.run([*RINGFENCE, "run", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert str(bad) in r.stderr and "broker.auth_deadline_ms" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_privilege_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test drops from root to nobody to check the message")
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *RINGFENCE,
            "run",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert r.returncode == 1, r.stderr
    assert "needs root" in r.stderr and "Traceback" not in r.stderr


def test_status_without_agent_fails_clearly(tmp_path: Path) -> None:
    r = subprocess.run([*RINGFENCE, "status", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "no agent is running" in r.stderr


def test_status_tells_which_extension_missed_deadlines(tmpfs: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    state = tmp_path / "state"
    extra = (
        '[extensions]\nenabled = ["fault.silent=tests.extensions.fault_extensions:NeverAnswers"]\n'
        f'import_paths = ["{repo}"]\n'
    )
    config = _write_config(tmp_path / "rf.toml", tmpfs, state, "rf-cli-ext", extra)
    prog = tmpfs / "prog"
    prog.write_bytes(Path("/bin/true").read_bytes())
    prog.chmod(0o755)
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for_status(state, proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert subprocess.run([str(prog)], timeout=30).returncode == 0  # never held past the deadline
            doc = _wait_for_status(state, proc)
            if any(e["id"] == "fault.silent" and e["auth_misses"] >= 1 for e in doc["extensions"]):
                break
        human = subprocess.run(
            [*RINGFENCE, "status", "--state-dir", str(state)], capture_output=True, text=True
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    section = human.stdout.split("extensions:", 1)[1]
    line = next(x for x in section.splitlines() if "fault.silent" in x)
    assert "deadline-misses=" in line and "deadline-misses=0" not in line, human.stdout


def test_missing_kernel_interface_is_named_with_what_still_works(tmpfs: Path, tmp_path: Path) -> None:
    """A sensor the kernel refuses (here: exec gating on a path that does not exist) degrades the agent,
    says which interface and what still works, and status exits non-zero."""
    state = tmp_path / "state"
    config = _write_config(
        tmp_path / "rf.toml", tmpfs, state, "rf-cli-degraded", "[extensions]\nenabled = []\n"
    )
    config.write_text(
        config.read_text().replace(f'exec_mounts = ["{tmpfs}"]', 'exec_mounts = ["/nonexistent-rf"]')
    )
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        doc = _wait_for_status(state, proc)
    finally:
        proc.send_signal(signal.SIGTERM)  # systemd stops it this way
        out, err = proc.communicate(timeout=60)
    assert doc["rc"] == 1 and not doc["healthy"]
    assert "fanotify exec permission" in doc["unavailable"]["exec-auth"]
    assert "sensor exec-auth unavailable" in out and "no exec can be blocked" in out
    assert "Traceback" not in err and proc.returncode == 0


def test_extensions_list_shows_pip_installed_vendor_with_its_manifest(tmp_path: Path) -> None:
    r = subprocess.run(
        [*RINGFENCE, "extensions", "list", "--manifests"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    acme = next(i for i, x in enumerate(lines) if x.startswith("acme.suspicious-tmp-exec"))
    assert "acme-ringfence-extension" in lines[acme]
    assert "vendor Acme Security" in lines[acme + 1] and "subscribes process" in lines[acme + 1]
    rep = next(i for i, x in enumerate(lines) if x.startswith("ringfence.reputation"))
    assert "enabled" in lines[rep] and "auth auth.exec" in lines[rep + 1]


def test_signals_in_quick_succession_still_stop_the_agent(tmpfs: Path, tmp_path: Path) -> None:
    """SIGINT then SIGTERM (Ctrl-C, then systemd) while the console loop is busy: a signal handler that
    takes a lock deadlocked the agent here once."""
    state = tmp_path / "state"
    config = _write_config(
        tmp_path / "rf.toml", tmpfs, state, "rf-cli-signals", "[extensions]\nenabled = []\n"
    )
    config.write_text(config.read_text().replace("console_interval_s = 0.5", "console_interval_s = 0.001"))
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_status(state, proc)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "rf-cli-signals" not in list_rule_keys()
