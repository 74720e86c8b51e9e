"""Shadow runs with the real agent: each new signed version of the test engine `e2e.probe` (an AUTH
extension, tests/agent/e2e_extensions.py) first runs in a second, sandboxed instance beside the active
one. A good release is promoted; a release that crashes, hangs or denies is rejected there and never
reaches the active instance. Every exec completes throughout (`Execs` fails on one that hangs), and none
is denied: the shadow's DENY is advice that nobody waits for."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import Config
from ringfence.agent._config import ContentSection
from ringfence.cli import main
from tests.agent.helpers import eventually
from tests.agent.test_content_breakers_e2e import PROBE, Execs, _publish, config_with, health, probe_content
from tests.agent.test_updates_e2e import Served

pytestmark = pytest.mark.kernel

SHADOW = f"{PROBE}@shadow"
BAKE_S = 3.0


def _config(tmpfs: Path, state: Path, server: Served, keys: Path) -> Config:
    config = config_with(tmpfs, state, None)
    content = ContentSection(
        url=server.url, update_interval_s=1, root=str(keys / "root.json"), failure_grace_s=3600,
        shadow_bake_s=BAKE_S,
    )  # fmt: skip
    return msgspec.structs.replace(config, content=content)


def _instances(state: Path) -> dict[str, object]:
    return {e.id: e for e in health(state).extensions}


def _proven(state: Path, version: str) -> bool:
    p = probe_content(state)
    return p.active == version and p.good == version and not p.trial  # type: ignore[attr-defined]


def _no_shadow_left(state: Path) -> bool:
    """The shadow instance is gone: not supervised, and its cgroup removed."""
    left = glob.glob(f"/sys/fs/cgroup/**/{SHADOW}", recursive=True)
    return SHADOW not in _instances(state) and not left


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path, Served]:
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    assert main(["content", "keys", "init", str(keys)]) == 0
    _publish(tmp_path, repo, keys, "1.0", "allow")
    return keys, repo, Served(repo)


def _first_release_runs(
    start_agent: object, tmpfs: Path, shared_dir: Path, served: tuple[Path, Path, Served], target: Path
) -> tuple[Path, Execs]:
    keys, _, server = served
    state = shared_dir / "state"
    start_agent(_config(tmpfs, state, server, keys))  # type: ignore[operator]
    execs = Execs(target)
    assert execs.until(lambda: _proven(state, "1.0"), timeout_s=60), probe_content(state)
    return state, execs


def test_releases_bake_in_a_shadow_instance_bad_ones_are_rejected_there_and_a_good_one_is_promoted(
    start_agent: object, tmpfs: Path, shared_dir: Path, tmp_path: Path, served: tuple[Path, Path, Served],
    target: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """One agent, five releases: 1.0 (the first, good), 2.0 crashes on every exec, 3.0 answers past its
    deadline, 4.0 denies every exec, 5.0 denies one file (a blocklist entry for the program running
    here). Each bad one is rejected in shadow for its own reason and never reaches the active instance,
    which never fails; no exec is denied or hangs until 5.0, promoted, blocks its one file."""
    keys, repo, server = served
    try:
        state, execs = _first_release_runs(start_agent, tmpfs, shared_dir, served, target)
        others = [Execs(shutil.copy2(target, tmpfs / f"program-{n}")) for n in range(3)]
        before = health(state).broker.auth.unanswered_at_deadline  # type: ignore[union-attr]
        for version, mode, why in (
            ("2.0", "crash", "its shadow instance failed"),
            ("3.0", "hang", "missed"),
            ("4.0", "deny-all", "4 different files"),
        ):
            _publish(tmp_path, repo, keys, version, mode)

            def rejected(version: str = version) -> bool:
                return version in probe_content(state).rejected  # type: ignore[attr-defined]

            assert execs.until(lambda: [o.once() for o in others] and rejected(), timeout_s=60), (
                probe_content(state)
            )
            p = probe_content(state)
            reason = p.rejected[version]  # type: ignore[attr-defined]
            assert why in reason and "rejected in shadow" in reason, (version, reason)
            assert p.active == "1.0" and p.reverts == 0, p  # type: ignore[attr-defined]
            assert eventually(lambda: _no_shadow_left(state), 30), health(state).extensions
            for _ in range(3):
                assert execs.once()
        sub = health(state).broker.auth.subscribers[SHADOW]  # type: ignore[union-attr]
        assert sub.shadow and sub.denied >= 3 and sub.deadline_misses >= 1, sub  # it did try to block
        assert execs.denied == 0 and all(o.denied == 0 for o in others)  # the shadows' verdicts bound nothing
        auth = health(state).broker.auth  # type: ignore[union-attr]
        assert auth.unanswered_at_deadline == before  # the active instance answered every request in time
        active = _instances(state)[PROBE]
        assert active.state == "running" and active.failures == 0 and active.restarts == 0, active  # type: ignore[attr-defined]
        kept = (Path(state) / "content" / PROBE / "rejected.json").read_text()
        assert kept.count("rejected in shadow") == 3  # kept: a restart never tries them again

        # 5.0 denies probe-target only: one file, denied again and again while it bakes. Then the other
        # programs run (the deny-rate breaker would take 5.0's power to block if most execs were denied)
        _publish(tmp_path, repo, keys, "5.0", "deny")
        assert execs.until(lambda: SHADOW in _instances(state), timeout_s=30), health(state).extensions
        shadow = _instances(state)[SHADOW]
        assert shadow.shadow and "5.0" in (shadow.content_version or "")  # type: ignore[attr-defined]
        assert probe_content(state).active == "1.0"  # type: ignore[attr-defined]  # not before its bake
        for _ in range(5):
            assert execs.once()  # the shadow would deny these; they run
        assert others[0].until(lambda: _proven(state, "5.0"), timeout_s=60), probe_content(state)
        assert not execs.once() and all(o.once() for o in others)  # 5.0 is active: it blocks its one file
        assert execs.denied == 1
        p = probe_content(state)
        assert (p.shadow_promoted, p.shadow_rejected) == (2, 3)  # type: ignore[attr-defined]
        assert [line.split(" ", 2)[:2] for line in p.shadow_results] == [  # type: ignore[attr-defined]
            ["1.0", "promoted:"],  # the first release baked too: every version an engine runs did
            ["2.0", "rejected"],
            ["3.0", "rejected"],
            ["4.0", "rejected"],
            ["5.0", "promoted:"],
        ]
        assert eventually(lambda: _no_shadow_left(state), 30), health(state).extensions

        capsys.readouterr()
        assert main(["content", "history", PROBE, "--json", "--state-dir", str(state)]) == 0
        events = [e["event"] for e in json.loads(capsys.readouterr().out)["breaker_events"]]
        assert (events.count("shadow-started"), events.count("shadow-promoted")) == (5, 2), events
        assert events.count("shadow-rejected") == 3, events
    finally:
        server.stop()
