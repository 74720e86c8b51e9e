"""The content breakers with the real agent: the test extension `e2e.probe` (tests/agent/e2e_extensions.py,
sandboxed like any other) answers AUTH for execs on the test's tmpfs as its content file `mode` says.
Every exec here must complete (allowed or denied, never hung): `runs` has a 30 s guard, and the agent
answers by the AUTH deadline whatever the extension does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import Agent, Config, read_status
from ringfence.agent._config import ContentSection
from ringfence.cli import _render_status, main
from ringfence.events import Health
from tests.agent.helpers import eventually, runs, scoped_config
from tests.agent.test_updates_e2e import Served

REPO = str(Path(__file__).resolve().parents[2])
PROBE = "e2e.probe"
ENTRY = f"{PROBE}=tests.agent.e2e_extensions:ContentProbe"
RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def health(state: Path) -> Health:
    return msgspec.json.decode(read_status(str(state)), type=Health)


def probe_content(state: Path) -> msgspec.Struct:
    content = health(state).content
    assert content is not None
    return content.extensions[PROBE]


def config_with(tmpfs: Path, state: Path, mode_file: Path | None, **content: object) -> Config:
    config = scoped_config(tmpfs, state, extensions=(ENTRY,), import_paths=(REPO,))
    files = {PROBE: {"mode": str(mode_file)}} if mode_file is not None else {}
    return msgspec.structs.replace(
        config,
        extensions=msgspec.structs.replace(config.extensions, content=files),
        content=msgspec.structs.replace(config.content, **content),
    )


class Execs:
    """Runs `target` again and again, counting outcomes; any exec that does not complete fails the test."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.ran = self.denied = 0

    def once(self) -> bool:
        ok = runs(self.target)  # raises subprocess.TimeoutExpired if the exec hung
        self.ran, self.denied = self.ran + ok, self.denied + (not ok)
        return ok

    def until(self, done: Callable[[], bool], timeout_s: float = 60) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.once()
            if done():
                return True
            time.sleep(0.1)
        return False


def _publish(tmp: Path, repo: Path, keys: Path, version: str, mode: str) -> None:
    pkg = tmp / f"pkg-{version}"
    pkg.mkdir()
    (pkg / "manifest.toml").write_text(f'name = "probe"\nengine = "{PROBE}"\nversion = "{version}"\n')
    (pkg / "mode").write_text(f"{mode}\n")
    assert main(["content", "publish", str(pkg), "--repo", str(repo), "--keys", str(keys)]) == 0


def test_update_that_crashes_the_engine_on_every_exec_is_reverted_and_rejected_within_seconds(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, tmp_path: Path, target: Path
) -> None:
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", shared_dir / "state"
    assert main(["content", "keys", "init", str(keys)]) == 0
    _publish(tmp_path, repo, keys, "1.0", "allow")
    server = Served(repo)
    try:
        config = config_with(tmpfs, state, None)
        config = msgspec.structs.replace(
            config,
            content=ContentSection(
                url=server.url, update_interval_s=1, root=str(keys / "root.json"), failure_grace_s=3600,
                shadow_bake_s=0,  # no shadow run: the crash-loop breaker is the line behind it
            ),
        )  # fmt: skip
        start_agent(config)
        execs = Execs(target)

        def proven(version: str) -> bool:
            p = probe_content(state)
            return p.active == version and p.good == version and not p.trial  # type: ignore[attr-defined]

        assert execs.until(lambda: proven("1.0")), probe_content(state)
        _publish(tmp_path, repo, keys, "2.0", "crash")

        def reverted() -> bool:
            return probe_content(state).crash_loop_reverts >= 1  # type: ignore[attr-defined]

        assert execs.until(reverted), probe_content(state)
        assert execs.denied == 0, "a fail-open engine that crashes must never block an exec"
        p = probe_content(state)
        assert p.active == "1.0" and p.good == "1.0"  # type: ignore[attr-defined]
        assert "crash-loop breaker" in p.rejected["2.0"]  # type: ignore[attr-defined]
        assert (state / "content" / PROBE / "active" / "mode").read_text() == "allow\n"

        def back() -> bool:
            ext = {e.id: e for e in health(state).extensions}[PROBE]
            return ext.state == "running"

        assert eventually(back, timeout_s=30), health(state).extensions
        assert {e.id: e for e in health(state).extensions}[PROBE].crashes >= 3
        assert any("crash-loop breaker" in line for line in health(state).problems), health(state).problems
        allowed = health(state).broker.auth.subscribers[PROBE].allowed
        for _ in range(5):  # it runs on the good content again, and is asked: no crash now
            assert execs.once()
        assert health(state).broker.auth.subscribers[PROBE].allowed >= allowed + 5
        updates = health(state).content_updates
        assert updates is not None and updates.engines[PROBE].active == "1.0"
        assert "2.0" in updates.engines[PROBE].rejected
        entries = [json.loads(line) for line in (state / "content-history.jsonl").read_text().splitlines()]
        assert any(e["event"] == "crash-loop" and e["version"] == "1.0" for e in entries)
    finally:
        server.stop()


def test_engine_quarantined_by_its_new_content_is_released_on_the_last_known_good(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path, target: Path
) -> None:
    """With a crash limit above the supervisor's own (5 within 60 s), the supervisor quarantines first; the
    breaker then reverts the change and brings the engine back, into the broker's AUTH set again."""
    state, mode = shared_dir / "state", root_only_dir / "mode"
    mode.write_text("allow\n")
    start_agent(config_with(tmpfs, state, mode, crash_loop_crashes=20))
    execs = Execs(target)
    mode.write_text("crash\n")
    active = state / "content" / PROBE / "active" / "mode"
    assert eventually(lambda: active.read_text() == "crash\n", timeout_s=30)
    assert execs.until(lambda: probe_content(state).crash_loop_reverts >= 1, timeout_s=90), health(state)  # type: ignore[attr-defined]
    assert execs.denied == 0
    assert active.read_text() == "allow\n"

    def rejoined() -> bool:
        h = health(state)
        probe = {e.id: e for e in h.extensions}[PROBE]
        return probe.state == "running" and PROBE not in h.broker.auth.absent

    assert eventually(rejoined, timeout_s=30), health(state)
    probe = {e.id: e for e in health(state).extensions}[PROBE]
    assert probe.quarantine_reason is None and probe.crashes >= 5
    asked = health(state).broker.auth.subscribers[PROBE].asked
    for _ in range(3):
        assert execs.once()
    assert health(state).broker.auth.subscribers[PROBE].asked >= asked + 3, "not asked again after release"


def test_deny_rate_jump_removes_blocking_until_restored_and_both_survive_a_restart(
    start_agent: Callable[[Config], Agent],
    agents: list[Agent],
    tmpfs: Path,
    shared_dir: Path,
    root_only_dir: Path,
    target: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = shared_dir / "state"
    mode = root_only_dir / "mode"
    mode.write_text("allow\n")
    config = config_with(
        tmpfs, state, mode, deny_rate_min_requests=5, deny_rate_min=0.5, deny_rate_window_s=60
    )
    agent = start_agent(config)
    execs = Execs(target)
    for _ in range(5):
        assert execs.once()
    mode.write_text("deny\n")  # the update: every exec of the target denied from now on
    assert eventually(lambda: not runs(target), timeout_s=30), "the new content never took effect"
    assert execs.until(lambda: not probe_content(state).blocking), probe_content(state)  # type: ignore[attr-defined]
    assert execs.denied >= 1
    assert execs.until(execs.once), "still blocked after the breaker tripped"
    p = probe_content(state)
    assert p.would_be_denies >= 1 and "probe-target: probe: deny mode" in p.last_would_be_deny  # type: ignore[attr-defined]
    h = health(state)
    assert not h.healthy and any(f"extension {PROBE} cannot block" in line for line in h.problems)
    assert h.broker.auth.subscribers[PROBE].advisory_denied >= 1
    assert "ADVISORY (deny-rate breaker)" in _render_status(h)
    assert main(["content", "status", "--state-dir", str(state)]) == 1
    out = capsys.readouterr().out
    assert "blocking    NO, advisory since" in out and "would-be denies" in out
    assert main(["content", "status", "--json", "--state-dir", str(state)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["extensions"][PROBE]["blocking"] is False and doc["safe_mode"] == ""
    findings = (state / "findings.jsonl").read_text()
    assert "deny-rate-breaker" in findings

    agent.stop()
    agents.remove(agent)
    agent = start_agent(config)  # tripped is tripped: still advisory after a restart
    assert not probe_content(state).blocking  # type: ignore[attr-defined]
    assert execs.once(), "a restart gave the tripped extension its power to block back"

    assert main(["content", "restore-blocking", "nope", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no extension 'nope' runs here (enabled: {PROBE})" in err
    assert main(["content", "restore-blocking", PROBE, "--state-dir", str(state)]) == 0
    assert "blocking restored" in capsys.readouterr().out
    assert not execs.once(), "restored, yet the DENY did not block"
    assert main(["content", "restore-blocking", PROBE, "--state-dir", str(state)]) == 1
    assert "has its power to block" in capsys.readouterr().err

    agent.stop()
    agents.remove(agent)
    start_agent(config)
    assert probe_content(state).blocking  # type: ignore[attr-defined]
    assert not execs.once(), "restored blocking was lost in a restart"
    assert main(["content", "history", PROBE, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "blocking-removed" in out and "blocking-restored" in out


def test_rollback_status_and_history_through_the_running_agent(
    start_agent: Callable[[Config], Agent],
    tmpfs: Path,
    shared_dir: Path,
    root_only_dir: Path,
    target: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = shared_dir / "state"
    mode = root_only_dir / "mode"
    mode.write_text("allow\n")
    start_agent(config_with(tmpfs, state, mode))
    active = state / "content" / PROBE / "active" / "mode"
    mode.write_text("deny\n")
    assert eventually(lambda: active.read_text() == "deny\n", timeout_s=30)
    assert eventually(lambda: not runs(target), timeout_s=30)

    assert main(["content", "rollback", "nope", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no content for extension 'nope'" in err and PROBE in err
    assert main(["content", "rollback", PROBE, "--to", "9.9", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no kept slot holds version 9.9" in err

    assert main(["content", "rollback", PROBE, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "rolled back by the operator: slot 1" in out
    assert active.read_text() == "allow\n"
    assert eventually(lambda: runs(target), timeout_s=30), "the rolled-back content still denies"
    p = probe_content(state)
    assert (p.active_slot, p.good_slot, p.reverts) == (1, 1, 1)  # type: ignore[attr-defined]
    assert main(["content", "status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROBE) and "active      slot 1 (operator files only)" in out
    assert "blocking    yes" in out and "rolled back by the operator" in out
    assert main(["content", "history", "--json", "--state-dir", str(state)]) == 0
    rows = json.loads(capsys.readouterr().out)["extensions"][PROBE]
    assert [r["ended"] for r in rows[-2:]] == ["rolled back by an operator", ""]
    assert [r["slot"] for r in rows[-2:]] == [2, 1]


def _write_config(path: Path, tmpfs: Path, state: Path, mode: Path, clean_s: float) -> None:
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\nclose_write_paths = []\n'
        f'audit_key = "rf-t-{uuid.uuid4().hex[:8]}"\n'
        "[output]\nconsole_interval_s = 0\n"
        f'[extensions]\nenabled = ["{ENTRY}"]\nimport_paths = ["{REPO}"]\n'
        f'[extensions.content."{PROBE}"]\nmode = "{mode}"\n'
        f"[content]\nstart_loop_starts = 4\nstart_loop_window_s = 900\nstart_loop_clean_s = {clean_s}\n"
    )


def _activations(state: Path) -> int:
    return (state / "content-history.jsonl").read_text().count('"activated"')


class Run:
    """`ringfence run` in a process of the test's own."""

    def __init__(self, config: Path, state: Path) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [*RINGFENCE, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def up(self) -> Health:
        def answering() -> bool:
            try:
                return any(e.state == "running" for e in health(self.state).extensions)
            except Exception:
                assert self.proc.poll() is None, self.proc.communicate()[1]
                return False

        assert eventually(answering, timeout_s=60), "the agent did not start"
        return health(self.state)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=60)


def test_agent_killed_in_a_slot_swap_loop_always_restarts_and_a_start_loop_starts_safe(
    tmpfs: Path, shared_dir: Path, root_only_dir: Path, tmp_path: Path, target: Path
) -> None:
    state, mode = shared_dir / "state", root_only_dir / "mode"
    mode.write_text("allow good\n")
    clean_cfg, crash_cfg = tmp_path / "clean.toml", tmp_path / "crash.toml"
    _write_config(clean_cfg, tmpfs, state, mode, clean_s=2)
    _write_config(crash_cfg, tmpfs, state, mode, clean_s=3600)
    good = state / "content" / PROBE / "good.json"
    first = Run(clean_cfg, state)
    try:
        first.up()
        assert eventually(good.exists, timeout_s=30), "the clean run recorded no last-known-good"
        good_slot = json.loads(good.read_text())["slot"]
    finally:
        first.stop()
    assert first.proc.returncode == 0

    stop_writing = threading.Event()
    swaps = [0]

    def swap_loop() -> None:  # a new version every 1.1 s: the watcher stages it about a second later
        while not stop_writing.wait(1.1):
            swaps[0] += 1
            tmp = mode.with_suffix(".tmp")
            tmp.write_text(f"allow {swaps[0]}\n")
            tmp.chmod(0o600)
            os.replace(tmp, mode)

    writer = threading.Thread(target=swap_loop, daemon=True)
    writer.start()
    rng = random.Random(8)
    try:
        for n in range(3):  # killed at random moments while slots are being swapped
            run = Run(crash_cfg, state)
            try:
                h = run.up()
                assert h.content is not None and h.content.safe_mode == "", (
                    f"start {n + 1} went safe too soon"
                )
                before = _activations(state)
                assert eventually(lambda b=before: _activations(state) > b, timeout_s=30)
                time.sleep(rng.uniform(0, 1.5))
                assert runs(target)
            finally:
                run.kill()
            active = state / "content" / PROBE / "active"
            assert (active / "mode").read_text().startswith("allow"), "a kill left no whole slot active"
        stop_writing.set()
        writer.join(timeout=5)
        safe = Run(crash_cfg, state)
        try:
            h = safe.up()  # the fourth start without a clean run, after content changes: safe
            assert h.content is not None and "start-loop breaker" in h.content.safe_mode
            assert any("safe start" in line for line in h.problems) and not h.healthy
            assert h.content.extensions[PROBE].active_slot == good_slot
            assert (state / "content" / PROBE / "active" / "mode").read_text() == "allow good\n"
            assert h.content_updates is None
            assert runs(target)
        finally:
            safe.stop()
        assert safe.proc.returncode == 0
    finally:
        stop_writing.set()
        writer.join(timeout=5)
        subprocess.run(
            [*RINGFENCE, "cleanup", "--config", str(crash_cfg), "--empty-now"], check=False, timeout=60
        )
