"""The update thread on a fake clock with FakeContentUpdates: schedule, backoff, activation, never raising."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import ConfigError, parse_config
from ringfence.agent._content import TRIAL_CHECKS, ContentStore, ContentWatcher, ExtensionView, StagedContent
from ringfence.agent._updates import ContentUpdateLoop, choose
from ringfence.content import FakeContentUpdates as Fake
from ringfence.content import UpdateReport, UpdateSchedule

ENGINE = "ringfence.reputation"
OK = UpdateReport(ok=True)
DOWN = UpdateReport(ok=False, problems=["http://127.0.0.1:1/metadata/timestamp.json: download failed"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stage_package(state: Path, version: str, files: dict[str, str], engine: str = ENGINE) -> Path:
    """What the TUF client leaves: STATE/content-updates/ENGINE/VERSION/ with the manifest, root's, 0600."""
    d = state / "content-updates" / engine / version
    d.mkdir(parents=True, mode=0o700)
    (d / "manifest.toml").write_text(f'name = "lists"\nengine = "{engine}"\nversion = "{version}"\n')
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        (d / name).write_text(text)
    for p in d.rglob("*"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    return d


class Host:
    def __init__(self, state: Path, origins: dict[str, str] | None = None) -> None:
        self.state = state
        self.store = ContentStore(str(state))
        self.contents = self.store.stage_all({ENGINE: origins or {}})
        self.item: StagedContent = self.contents[ENGINE]
        self.item.good_slot = self.item.slot
        self.clock = Clock()
        self.view = ExtensionView("running", 0, 0)
        self.watcher = ContentWatcher(self.store, self.contents, extension_state=lambda _id: self.view)

    def prove(self) -> None:
        """The extension runs the whole trial with the active package and reports no problem."""
        for _ in range(TRIAL_CHECKS):
            self.watcher.check()
        assert not self.item.package_on_trial and self.item.good_slot == self.item.slot

    def loop(
        self, updates: object, follow: str | dict[str, str] = "newest", **kw: object
    ) -> ContentUpdateLoop:
        schedule = UpdateSchedule(interval_s=3600, retry_min_s=60, retry_max_s=600)
        return ContentUpdateLoop(
            updates,  # type: ignore[arg-type]
            schedule,
            self.store,
            self.contents,
            state_dir=str(self.state),
            url="http://127.0.0.1:1",
            follow=follow,
            clock=self.clock,
            wall_ns=lambda: 1_700_000_000 * 10**9,
            extension_state=lambda _id: self.view,
            **kw,  # type: ignore[arg-type]
        )

    @property
    def active(self) -> Path:
        return Path(self.item.content_dir)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "state")


def test_update_runs_at_first_look_then_only_each_interval(host: Host) -> None:
    updates = Fake(OK)
    loop = host.loop(updates)
    assert loop.step() is OK and updates.calls == 1
    host.clock.now += 3599
    assert loop.step() is None and updates.calls == 1
    host.clock.now += 1
    assert loop.step() is OK and updates.calls == 2


def test_unreachable_repository_backs_off_and_keeps_the_active_package(host: Host) -> None:
    stage_package(host.state, "1.0", {"blocklist.txt": "a" * 64 + "\n"})
    updates = Fake(OK, DOWN)
    loop = host.loop(updates)
    loop.step()
    slot = host.item.slot
    assert host.item.package_version == "1.0"
    host.clock.now += 3600
    assert loop.step() is DOWN  # the first failure: retried after 60 s, then 120, 240, ...
    for wait in (60, 120, 240):
        host.clock.now += wait - 1
        assert loop.step() is None
        host.clock.now += 1
        assert loop.step() is DOWN
    assert updates.calls == 5
    assert (host.item.slot, host.item.package_version) == (slot, "1.0")
    assert (host.active / "blocklist.txt").read_text() == "a" * 64 + "\n"
    status = loop.status()
    assert not status.ok and status.failures >= 2 and "download failed" in status.problems[0]


def test_failure_degrades_only_past_the_grace_period(host: Host) -> None:
    loop = host.loop(Fake(DOWN), failure_grace_s=3600)
    loop.step()
    assert loop.problems() == []
    host.clock.now += 3600
    loop.step()
    assert loop.problems() == []
    host.clock.now += 1
    [line] = loop.problems()
    assert "content updates failing for 3601 s" in line and "download failed" in line


def test_a_clean_update_ends_the_degraded_state(host: Host) -> None:
    loop = host.loop(Fake(DOWN, OK), failure_grace_s=10)
    loop.step()
    host.clock.now += 3600
    assert loop.problems()
    loop.step()
    assert loop.problems() == [] and loop.status().failing_since_ns == 0


def test_staged_package_becomes_the_active_slot_without_its_manifest(host: Host) -> None:
    stage_package(host.state, "1.0", {"blocklist.txt": "b" * 64 + "\n", "more/list.ioc": "evil.example\n"})
    loop = host.loop(Fake(OK))
    before = host.item.slot
    loop.step()
    assert host.item.slot == before + 1 and host.item.package_version == "1.0"
    assert sorted(p.name for p in host.active.iterdir()) == [".package", "blocklist.txt", "more"]
    assert (host.active / "more" / "list.ioc").read_text() == "evil.example\n"
    assert oct((host.active / "blocklist.txt").stat().st_mode & 0o777) == "0o644"
    assert loop.status().engines[ENGINE].active == "1.0"
    loop.step()  # not due, and nothing new: no slot churn
    host.clock.now += 3600
    loop.step()
    assert host.item.slot == before + 1


def test_newer_staged_version_is_activated_on_the_next_update(host: Host) -> None:
    stage_package(host.state, "1.0", {"blocklist.txt": "1\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    stage_package(host.state, "1.1", {"blocklist.txt": "2\n"})
    host.clock.now += 3600
    loop.step()
    assert host.item.package_version == "1.1" and (host.active / "blocklist.txt").read_text() == "2\n"


def test_operator_file_is_kept_over_a_package_file_of_the_same_name(tmp_path: Path) -> None:
    operator = tmp_path / "ops" / "blocklist.txt"
    operator.parent.mkdir()
    operator.write_text("operator\n")
    h = Host(tmp_path / "state", {"blocklist.txt": str(operator)})
    stage_package(h.state, "1.0", {"blocklist.txt": "package\n", "extra.txt": "x\n"})
    h.loop(Fake(OK)).step()
    assert (h.active / "blocklist.txt").read_text() == "operator\n"
    assert (h.active / "extra.txt").read_text() == "x\n"


def test_operator_file_change_keeps_the_package_in_the_new_slot(tmp_path: Path) -> None:
    operator = tmp_path / "ops" / "own.txt"
    operator.parent.mkdir()
    operator.write_text("one\n")
    h = Host(tmp_path / "state", {"own.txt": str(operator)})
    stage_package(h.state, "1.0", {"pkg.txt": "p\n"})
    h.loop(Fake(OK)).step()
    operator.write_text("two\n")
    h.store.stage(h.item)  # what the content watcher does on a change
    assert (h.active / "own.txt").read_text() == "two\n" and (h.active / "pkg.txt").read_text() == "p\n"
    assert h.item.package_version == "1.0"


def test_follow_n_minus_1_runs_the_second_newest_staged(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "old\n"})
    loop = host.loop(Fake(OK), follow="n-1")
    loop.step()
    assert host.item.package_version == ""
    assert "only one version staged" in loop.status().engines[ENGINE].problem
    stage_package(host.state, "2.0", {"l.txt": "new\n"})
    host.clock.now += 3600
    loop.step()
    assert host.item.package_version == "1.0" and (host.active / "l.txt").read_text() == "old\n"


def test_pinned_version_runs_and_a_missing_pin_is_reported(host: Host) -> None:
    for v in ("1.0", "1.1", "1.2"):
        stage_package(host.state, v, {"l.txt": f"{v}\n"})
    loop = host.loop(Fake(OK), follow={ENGINE: "1.1"})
    loop.step()
    assert host.item.package_version == "1.1"
    pinned = host.loop(Fake(OK), follow={ENGINE: "9.9"})
    pinned.step()
    assert host.item.package_version == "1.1"  # the pin that cannot be met changes nothing
    assert "9.9 is not staged" in pinned.status().engines[ENGINE].problem


def test_package_for_an_engine_not_enabled_is_reported_not_activated(host: Host) -> None:
    stage_package(host.state, "1.0", {"r.yml": "title: x\n"}, engine="ringfence.sigma")
    loop = host.loop(Fake(OK))
    loop.step()
    assert "not an enabled extension" in loop.status().engines["ringfence.sigma"].problem
    assert host.item.package_version == ""


def test_package_reverted_after_a_failed_start_is_not_activated_again(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "good\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    host.prove()
    stage_package(host.state, "2.0", {"l.txt": "bad\n"})
    host.clock.now += 3600
    loop.step()
    assert host.item.package_version == "2.0"
    host.store.revert(host.item)  # what the watcher does when the engine fails to start with it
    assert host.item.package_version == "1.0" and (host.active / "l.txt").read_text() == "good\n"
    host.clock.now += 3600
    loop.step()
    assert host.item.package_version == "1.0"
    assert loop.status().engines[ENGINE].rejected == ["2.0"]


def test_package_file_others_could_change_is_refused_and_the_slot_stays(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "good\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    slot = host.item.slot
    bad = stage_package(host.state, "2.0", {"l.txt": "planted\n"})
    (bad / "l.txt").chmod(0o666)
    host.clock.now += 3600
    loop.step()
    assert (host.item.slot, host.item.package_version) == (slot, "1.0")
    assert (host.active / "l.txt").read_text() == "good\n"
    problem = loop.status().engines[ENGINE].problem
    assert "package 2.0 not activated" in problem and "only root may be able" in problem


class Raising:
    def __init__(self) -> None:
        self.calls = 0

    def update(self) -> UpdateReport:
        self.calls += 1
        raise RuntimeError("a bug in the client")


def test_exception_in_a_round_is_counted_and_the_thread_goes_on(host: Host) -> None:
    updates = Raising()
    loop = host.loop(updates)
    loop._schedule = UpdateSchedule(interval_s=0.01, retry_min_s=0.01, retry_max_s=0.01)
    loop._clock = time.monotonic
    loop.start()
    try:
        deadline = time.monotonic() + 15
        while loop.round_errors < 2 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert loop.round_errors >= 2 and updates.calls >= 2
        assert loop._thread.is_alive()
    finally:
        loop.stop()
    assert not loop._thread.is_alive()


def test_choose_never_picks_a_rejected_version() -> None:
    assert choose(["1", "2", "3"], "newest", {"3"}) == ("2", "")
    assert choose(["1", "2", "3"], "n-1", {"3"}) == ("1", "")
    assert choose(["1"], "newest", {"1"})[0] is None
    assert choose(["1", "2"], "2", {"2"}) == (None, "pinned 2 was rejected by the engine")


def test_content_config_problems_are_all_reported_with_key_and_line() -> None:
    text = b"""[content]
url = "ftp://mirror"
update_interval_s = 0
root = "keys/root.json"
failure_grace_s = -1
follow = "1.2"
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "/etc/ringfence/ringfence.toml")
    got = {(p.key, p.line) for p in e.value.problems}
    assert got == {
        ("content.url", 2),
        ("content.update_interval_s", 3),
        ("content.root", 4),
        ("content.failure_grace_s", 5),
        ("content.follow", 6),
    }


def test_follow_table_checks_each_engine_and_version() -> None:
    text = b"""[content]
url = "https://content.example/repo"
follow = { "ringfence.sigma" = "n-1", "ringfence.ioc" = "2026.12.2", "ringfence.yara" = "latest" }
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.toml")
    [problem] = e.value.problems
    assert problem.key == 'content.follow."ringfence.yara"' and "'latest'" in problem.message
    ok = parse_config(text.replace(b'"latest"', b'"newest"'), "c.toml")
    assert ok.content.follow == {
        "ringfence.sigma": "n-1",
        "ringfence.ioc": "2026.12.2",
        "ringfence.yara": "newest",
    }


def test_follow_of_a_wrong_type_is_a_config_problem() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(b"[content]\nfollow = 3\n", "c.toml")
    assert [p.key for p in e.value.problems] == ["content.follow"]


def test_no_url_means_no_updates_by_default() -> None:
    config = parse_config(b"", "c.toml")
    assert config.content.url == "" and config.content.follow == "newest"
    assert os.path.isabs(config.agent.state_dir)


def test_a_restart_runs_the_package_active_before_it_not_a_newer_unproven_one(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "proven\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    host.prove()
    stage_package(host.state, "2.0", {"l.txt": "on trial\n"})
    host.clock.now += 3600
    loop.step()
    assert host.item.package_version == "2.0" and host.item.package_on_trial

    store = ContentStore(str(host.state))  # the next run of the agent
    packages = store.previous_packages([ENGINE])
    assert packages == {ENGINE: ("1.0", str(host.state / "content-updates" / ENGINE / "1.0"))}
    item = store.stage_all({ENGINE: {}}, packages)[ENGINE]
    assert item.package_version == "1.0"
    assert (Path(item.content_dir) / "l.txt").read_text() == "proven\n"


def test_a_rejected_version_stays_rejected_after_a_restart(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "good\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    host.prove()
    stage_package(host.state, "2.0", {"l.txt": "bad\n"})
    host.clock.now += 3600
    loop.step()
    host.store.revert(host.item)

    again = Host(host.state)
    assert again.item.rejected == {"2.0"}
    again.loop(Fake(OK)).step()
    assert again.item.package_version == "1.0"


def test_an_unreadable_rejected_record_is_logged_and_taken_as_empty(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    (Path(host.item.root) / "rejected.json").write_text("{not json")
    again = Host(host.state)
    assert again.item.rejected == set()
    assert "rejected.json: unreadable" in caplog.text


def test_a_garbled_good_record_is_taken_as_no_package(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    stage_package(host.state, "1.0", {"l.txt": "x\n"})
    host.loop(Fake(OK)).step()
    host.prove()
    good = Path(host.item.root) / "good.json"
    assert ContentStore(str(host.state)).previous_packages([ENGINE])[ENGINE][0] == "1.0"
    good.write_text("[1, 2]")
    assert ContentStore(str(host.state)).previous_packages([ENGINE]) == {}
    assert "good.json: unreadable package mark" in caplog.text


def _health_doc() -> dict[str, object]:
    from ringfence.events import AuthStatistics, BrokerStatistics, Health

    h = Health(
        version="0",
        pid=1,
        host="h",
        state_dir="/s",
        started_at_ns=0,
        uptime_s=0,
        healthy=True,
        problems=[],
        sensors=[],
        unavailable={},
        broker=BrokerStatistics(kinds={}, auth=AuthStatistics(), subscribers=[]),
        outputs=[],
        extensions=[],
        memory_rss_bytes=0,
        cpu_user_s=0,
        cpu_system_s=0,
        threads=1,
    )
    return msgspec.to_builtins(h)  # type: ignore[no-any-return]


def test_health_from_an_agent_without_content_updates_still_decodes() -> None:
    from ringfence.events import Health

    doc = _health_doc()
    del doc["content_updates"]
    assert msgspec.json.decode(msgspec.json.encode(doc), type=Health).content_updates is None


def test_health_with_content_updates_round_trips(host: Host) -> None:
    from ringfence.events import Health

    stage_package(host.state, "1.0", {"l.txt": "x\n"})
    loop = host.loop(Fake(DOWN))
    loop.step()
    doc = _health_doc() | {"content_updates": msgspec.to_builtins(loop.status())}
    back = msgspec.json.decode(msgspec.json.encode(doc), type=Health).content_updates
    assert back is not None and back.engines[ENGINE].active == "1.0" and back.failures == 1
    assert back.problems == DOWN.problems and back.url == "http://127.0.0.1:1"


def test_package_the_running_engine_refuses_is_given_up_for_the_last_good_one(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "good\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    host.prove()
    stage_package(host.state, "1.1", {"l.txt": "refused\n"})
    host.clock.now += 3600
    loop.step()
    assert loop.status().engines[ENGINE].trial
    host.watcher.check()
    host.view = ExtensionView("running", 0, 0, "new IOC content rejected, 1 entries stay in force: ...")
    host.watcher.check()
    assert host.item.package_version == "1.0" and (host.active / "l.txt").read_text() == "good\n"
    assert "package 1.1) was rejected by the running extension" in host.item.last_error
    status = loop.status().engines[ENGINE]
    assert status.rejected == ["1.1"] and not status.trial


def test_a_problem_after_the_trial_does_not_revert_a_proven_package(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "one\n"})
    loop = host.loop(Fake(OK))
    loop.step()
    host.prove()
    host.view = ExtensionView("running", 0, 0, "some later trouble")
    host.watcher.check()
    assert host.item.package_version == "1.0" and host.item.rejected == set()


def test_a_problem_already_there_before_the_package_is_not_taken_as_its_refusal(host: Host) -> None:
    host.view = ExtensionView("running", 0, 0, "an operator file was refused")
    stage_package(host.state, "1.0", {"l.txt": "one\n"})
    host.loop(Fake(OK)).step()
    host.watcher.check()
    assert host.item.package_version == "1.0" and host.item.package_on_trial


def test_a_restart_before_any_package_was_proven_runs_none(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "x\n"})
    host.loop(Fake(OK)).step()
    assert ContentStore(str(host.state)).previous_packages([ENGINE]) == {}


def test_expiry_warnings_reach_status_and_the_log_once(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    warned = UpdateReport(ok=True, warnings=["root expires in 12 days (2026-12-14): rotate it"])
    loop = host.loop(Fake(warned))
    loop.step()
    host.clock.now += 3600
    loop.step()
    assert loop.status().warnings == warned.warnings
    assert caplog.text.count("root expires in 12 days") == 1


def test_an_update_that_outlives_stop_activates_nothing(host: Host) -> None:
    stage_package(host.state, "1.0", {"l.txt": "x\n"})
    loop = host.loop(Fake(OK))
    loop.stop()
    assert loop.step() is OK
    assert host.item.package_version == ""


def test_slots_staged_under_a_umask_of_077_stay_readable_by_the_sandbox(tmp_path: Path) -> None:
    """The umask is the whole process's: the operator's (077 is common for root) or one another thread
    set for a moment must never make a slot unreadable to `ringfence-ext`, which cannot then load it
    (a CI failure: the status socket's bind used to set 0177 while the update thread staged a slot)."""
    operator = tmp_path / "ops" / "own.txt"
    operator.parent.mkdir()
    operator.write_text("one\n")
    old = os.umask(0o077)
    try:
        h = Host(tmp_path / "state", {"own.txt": str(operator)})
        stage_package(h.state, "1.0", {"rules/deep/pkg.txt": "p\n"})
        h.loop(Fake(OK)).step()
    finally:
        os.umask(old)
    assert (h.active / "rules" / "deep" / "pkg.txt").read_text() == "p\n"
    slot = h.active.resolve()
    for path in [slot, *slot.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {mode:o}"


def test_a_version_the_contract_check_refuses_never_goes_active_and_is_checked_once(host: Host) -> None:
    """The check (agent/_validate.py's package_problem in the agent; a fake here: the real one is run by
    tests/content/test_validate.py and end to end by test_updates_e2e.py) runs before activation."""
    asked: list[tuple[str, str]] = []

    def check(engine: str, path: str) -> str | None:
        asked.append((engine, os.path.basename(path)))
        return "refused before loading: x.ioc: error [contract]: ..." if path.endswith("1.1") else None

    stage_package(host.state, "1.0", {"blocklist.txt": "1\n"})
    loop = host.loop(Fake(OK), check=check)
    loop.step()
    assert host.item.package_version == "1.0"
    stage_package(host.state, "1.1", {"blocklist.txt": "2\n"})
    for _ in range(3):
        host.clock.now += 3600
        loop.step()
    assert host.item.package_version == "1.0" and (host.active / "blocklist.txt").read_text() == "1\n"
    engine = loop.status().engines[ENGINE]
    assert engine.rejected == ["1.1"] and engine.problem.startswith("package 1.1 refused before loading")
    assert asked == [(ENGINE, "1.0"), (ENGINE, "1.1")]  # once per version, not once per round


def test_with_a_fleet_an_engine_runs_the_assigned_version_and_goes_back_when_told(
    host: Host, tmp_path: Path
) -> None:
    from ringfence.fleet import FleetAssignments

    for version in ("1.0", "2.0", "3.0"):
        stage_package(host.state, version, {"blocklist.txt": version + "\n"})
    assignments = FleetAssignments(str(tmp_path / "fleet-assignments.json"))
    loop = host.loop(Fake(OK, OK, OK), assignments=assignments)
    assignments.on_change = loop.nudge
    loop.step()
    assert host.item.package_version == "", "nothing assigned: nothing new, not even the newest staged"
    assert "assigned no version" in loop.status().engines[ENGINE].problem
    assert loop.status().engines[ENGINE].follow == "fleet: none assigned yet"

    assert assignments.offer({ENGINE: "2.0"})
    loop.step()  # the change nudged the schedule: this look updates and activates, not an hour later
    assert host.item.package_version == "2.0" and loop.status().engines[ENGINE].follow == "fleet: 2.0"
    host.prove()
    assignments.offer({ENGINE: "1.0"})  # the rollout halted: back to last-known-good, older than active
    loop.step()
    assert host.item.package_version == "1.0"
    assert (host.active / "blocklist.txt").read_text() == "1.0\n"


def test_fleet_assignments_are_parsed_as_hostile_and_kept_across_a_restart(tmp_path: Path) -> None:
    from ringfence.fleet import FleetAssignments

    path = tmp_path / "fleet-assignments.json"
    a = FleetAssignments(str(path))
    assert a.offer({ENGINE: "2026.12.3"}) and not a.offer({ENGINE: "2026.12.3"}), "unchanged: no change"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for bad, message in (
        ([ENGINE], "an object of engine -> version"),
        ({ENGINE: "../../etc"}, "is not a package version"),
        ({ENGINE: 3}, "is not a package version"),
        ({"../x": "1.0"}, "is not an engine id"),
        ({f"e{i}": "1" for i in range(65)}, "at most 64"),
    ):
        assert not a.offer(bad)
        assert message in a.problem and a.current() == {ENGINE: "2026.12.3"}, "the last good ones kept"
    assert a.offer({}) and a.problem == "" and a.current() == {}
    a.offer({ENGINE: "4.1"})
    assert FleetAssignments(str(path)).current() == {ENGINE: "4.1"}, "what a restart follows"
    path.write_text("{not json")
    broken = FleetAssignments(str(path))
    assert broken.current() == {} and "ignored, the server's next answer replaces it" in broken.problem
