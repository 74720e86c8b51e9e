"""The breakers' logic on fake clocks: the crash-loop revert, operator rollback, the deny-rate breaker, the
start counter, the content history (agent/_content.py, agent/_breakers.py). The real agent is in
test_content_breakers_e2e.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import ConfigError, parse_config
from ringfence.agent import _breakers as breakers
from ringfence.agent._breakers import (
    BreakerError,
    ContentHistory,
    DenyRateBreaker,
    DenyRatePolicy,
    StartLoopBreaker,
    periods,
    read_history,
)
from ringfence.agent._content import (
    ContentError,
    ContentStore,
    ContentWatcher,
    CrashLoopPolicy,
    ExtensionView,
    StagedContent,
)
from ringfence.agent._status import StatusServer, send_command
from ringfence.cli import main

EXT = "ringfence.reputation"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """One extension's content with a package, the watcher over it, and what it told `on_event`."""

    def __init__(self, state: Path, crashes: int = 3, window_s: float = 60) -> None:
        self.state, self.clock = state, Clock()
        self.store = ContentStore(str(state), clock=self.clock)
        self.events: list[tuple[str, int, str]] = []
        self.store.on_event = lambda item, what, _detail: self.events.append(
            (what, item.slot, item.package_version)
        )
        self.contents = self.store.stage_all({EXT: {}}, {EXT: ("1.0", str(self.package("1.0", "good")))})
        self.item: StagedContent = self.contents[EXT]
        self.view = ExtensionView("running", 0, 0)
        self.watcher = ContentWatcher(
            self.store,
            self.contents,
            extension_state=lambda _id: self.view,
            crash_loop=CrashLoopPolicy(crashes, window_s),
        )

    def package(self, version: str, text: str) -> Path:
        d = self.state / "content-updates" / EXT / version
        d.mkdir(parents=True)
        (d / "mode").write_text(text)
        return d

    def activate(self, version: str, text: str) -> None:
        self.store.activate_package(self.item, version, str(self.package(version, text)), self.view)

    @property
    def active_text(self) -> str:
        return (Path(self.item.content_dir) / "mode").read_text()

    def fails(self, times: int, state: str = "backoff") -> None:
        v = self.view
        self.view = ExtensionView(state, v.restarts + times, v.start_failures, "", v.failures + times)
        self.watcher.check()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "state")


def test_extension_crashing_after_a_package_change_is_reverted_and_the_package_rejected(host: Host) -> None:
    host.activate("2.0", "crash")
    host.fails(2)
    assert host.item.package_version == "2.0", "two failures are under the limit of three"
    host.fails(1)
    assert host.item.package_version == "1.0" and host.active_text == "good"
    assert host.item.slot == host.item.good_slot == 1 and host.item.crash_loop_reverts == 1
    assert host.item.rejected == {"2.0"}
    assert "crash-loop breaker" in host.item.rejected_why["2.0"]
    assert "crash-loop breaker" in host.item.last_error
    assert ("crash-loop", 1, "1.0") in host.events
    on_disk = json.loads((Path(host.item.root) / "rejected.json").read_text())
    assert "crash-loop breaker" in on_disk["2.0"]
    assert json.loads((Path(host.item.root) / "good.json").read_text())["slot"] == 1
    assert ContentStore(str(host.state)).previous_packages([EXT])[EXT][0] == "1.0"


def test_crashes_counted_across_a_restart_that_first_proved_the_slot(host: Host) -> None:
    """An engine that loads its content and crashes on the first event is 'proven' by its restart; the
    breaker still puts back the slot that was good before the change."""
    host.activate("2.0", "crash")
    host.fails(1, state="running")  # restarted with 2.0 and running: proven by the old rule
    assert host.item.good_slot == host.item.slot
    host.fails(2)
    assert host.item.package_version == "1.0" and host.item.crash_loop_reverts == 1
    assert host.item.good_slot == 1


def test_quarantine_by_the_supervisor_after_a_change_reverts_even_under_the_limit(tmp_path: Path) -> None:
    host = Host(tmp_path / "state", crashes=10)
    host.activate("2.0", "crash")
    host.fails(2)
    assert host.item.package_version == "2.0"
    host.fails(3, state="quarantined")
    assert host.item.package_version == "1.0" and host.item.crash_loop_reverts == 1
    assert ("crash-loop", 1, "1.0") in host.events


def test_crashes_after_the_window_do_not_revert(host: Host) -> None:
    host.activate("2.0", "fine")
    host.clock.now += 61
    host.fails(5)
    assert host.item.package_version == "2.0" and host.item.crash_loop_reverts == 0


def test_operator_file_change_that_crash_loops_goes_back_and_is_not_staged_again(tmp_path: Path) -> None:
    origin = tmp_path / "mode"
    origin.write_text("good\n")
    store = ContentStore(str(tmp_path / "state"))
    contents = store.stage_all({EXT: {"mode": str(origin)}})
    item = contents[EXT]
    view = [ExtensionView("running", 0, 0)]
    watcher = ContentWatcher(store, contents, extension_state=lambda _id: view[0])
    origin.write_text("crash\n")
    watcher.check()
    watcher.check()
    assert item.slot == 2
    view[0] = ExtensionView("backoff", 3, 0, "", 3)
    watcher.check()
    assert item.slot == 1 and (Path(item.content_dir) / "mode").read_text() == "good\n"
    watcher.check()
    watcher.check()
    assert item.slot == 1, "the file that crash-looped the engine was staged again"


def test_crash_loop_revert_keeps_working_when_the_good_slot_is_older_than_the_kept_ones(host: Host) -> None:
    for n in range(2, 7):  # changes on changes, none proven: the good slot must survive pruning
        host.activate(f"{n}.0", "crash")
    host.fails(3)
    assert host.item.package_version == "1.0" and host.active_text == "good"


def test_rollback_to_last_known_good_rejects_the_version_left(host: Host) -> None:
    host.activate("2.0", "new")
    message = host.store.rollback(host.item, None)
    assert "rolled back by the operator" in message and host.item.package_version == "1.0"
    assert host.item.rejected_why == {"2.0": "rolled back by the operator"}
    assert ("rolled-back", 1, "1.0") in host.events


def test_rollback_of_a_proven_version_goes_to_the_slot_before_it(host: Host) -> None:
    host.activate("2.0", "new")
    for _ in range(10):
        host.watcher.check()
    assert host.item.good_slot == host.item.slot
    host.store.rollback(host.item, None)
    assert host.item.package_version == "1.0" and host.active_text == "good"


def test_rollback_to_a_version_rejects_the_newer_staged_ones(host: Host) -> None:
    host.activate("2.0", "two")
    host.activate("3.0", "three")
    host.store.rollback(host.item, "1.0", newer_than=lambda v: [x for x in ("1.0", "2.0", "3.0") if x > v])
    assert host.item.package_version == "1.0" and host.item.rejected == {"2.0", "3.0"}
    assert host.item.good_slot == host.item.slot


def test_rollback_refuses_unknown_and_active_versions_naming_the_kept_slots(host: Host) -> None:
    host.activate("2.0", "two")
    with pytest.raises(ContentError, match=r"no kept slot holds version 9\.9 \(kept slots: 1 1\.0, 2 2\.0\)"):
        host.store.rollback(host.item, "9.9")
    with pytest.raises(ContentError, match="is the active one already"):
        host.store.rollback(host.item, "2.0")
    assert host.item.package_version == "2.0" and host.item.rejected == set()


def test_rollback_with_nothing_older_says_so(host: Host) -> None:
    with pytest.raises(ContentError, match="nothing to roll back to"):
        host.store.rollback(host.item, None)


# -- the deny-rate breaker ---------------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.asked, self.denied = 0, 0

    def __call__(self) -> dict[str, tuple[int, int]]:
        return {EXT: (self.asked, self.denied)}

    def add(self, asked: int, denied: int) -> None:
        self.asked += asked
        self.denied += denied


def _deny_breaker(state: Path, counts: Counts, clock: Clock, advisory: dict[str, bool]) -> DenyRateBreaker:
    policy = DenyRatePolicy(factor=5, min_rate=0.2, min_requests=10, window_s=60, watch_s=600)
    return DenyRateBreaker(str(state), policy, counts, advisory.__setitem__, clock=clock, wall_ns=lambda: 7)


def test_deny_rate_jump_after_a_change_trips_and_persists_until_restored(tmp_path: Path) -> None:
    counts, clock, advisory = Counts(), Clock(), {}
    breaker = _deny_breaker(tmp_path, counts, clock, advisory)
    for _ in range(5):
        counts.add(20, 1)  # 5 % before the change
        clock.now += 10
        breaker.sample()
    breaker.content_changed(EXT)
    counts.add(5, 5)
    clock.now += 1
    breaker.sample()
    assert advisory == {}, "5 requests are under the minimum of 10"
    counts.add(5, 5)
    clock.now += 1
    breaker.sample()
    assert advisory == {EXT: True}
    assert "denied 10 of 10" in breaker.advisory()[EXT].reason
    again: dict[str, bool] = {}
    _deny_breaker(tmp_path, Counts(), Clock(), again)  # the next run starts advisory
    assert again == {EXT: True}
    assert breaker.restore(EXT).startswith(f"{EXT}: blocking restored")
    assert advisory == {EXT: False}
    fresh: dict[str, bool] = {}
    _deny_breaker(tmp_path, Counts(), Clock(), fresh)
    assert fresh == {}
    with pytest.raises(BreakerError, match="has its power to block"):
        breaker.restore(EXT)


def test_deny_rate_within_the_factor_of_the_rate_before_does_not_trip(tmp_path: Path) -> None:
    counts, clock, advisory = Counts(), Clock(), {}
    breaker = _deny_breaker(tmp_path, counts, clock, advisory)
    for _ in range(5):
        counts.add(20, 10)  # a blocklist engine that denies half of everything, always
        clock.now += 10
        breaker.sample()
    breaker.content_changed(EXT)
    for _ in range(10):
        counts.add(20, 12)
        clock.now += 1
        breaker.sample()
    assert advisory == {}


def test_deny_rate_without_a_content_change_never_trips(tmp_path: Path) -> None:
    counts, clock, advisory = Counts(), Clock(), {}
    breaker = _deny_breaker(tmp_path, counts, clock, advisory)
    for _ in range(10):
        counts.add(20, 20)
        clock.now += 1
        breaker.sample()
    assert advisory == {}


def test_deny_rate_jump_after_the_watch_does_not_trip(tmp_path: Path) -> None:
    counts, clock, advisory = Counts(), Clock(), {}
    breaker = _deny_breaker(tmp_path, counts, clock, advisory)
    breaker.content_changed(EXT)
    clock.now += 601
    counts.add(50, 50)
    breaker.sample()
    assert advisory == {}


def test_unreadable_breaker_state_is_logged_and_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / breakers.BREAKERS).write_text("{not json")
    advisory: dict[str, bool] = {}
    _deny_breaker(tmp_path, Counts(), Clock(), advisory)
    assert advisory == {} and "unreadable" in caplog.text
    assert (tmp_path / (breakers.BREAKERS + ".bad")).exists()


# -- the start-loop breaker --------------------------------------------------------------------------------


class Wall:
    def __init__(self) -> None:
        self.ns = 10**18

    def __call__(self) -> int:
        return self.ns

    def advance(self, s: float) -> None:
        self.ns += int(s * 1e9)


def _starts(state: Path, wall: Wall) -> StartLoopBreaker:
    return StartLoopBreaker(str(state), starts=3, window_s=600, wall_ns=wall)


def test_three_unclean_starts_after_a_content_change_start_safe(tmp_path: Path) -> None:
    wall = Wall()
    first = _starts(tmp_path, wall)
    assert first.on_start() == ""
    first.content_changed()  # then it dies (kill -9: nothing more is written)
    wall.advance(5)
    assert _starts(tmp_path, wall).on_start() == ""
    wall.advance(5)
    third = _starts(tmp_path, wall)
    assert "3 starts within 600 s" in third.on_start() and third.unclean_starts == 3
    third.clean()
    wall.advance(5)
    assert _starts(tmp_path, wall).on_start() == "", "a clean run starts the count over"


def test_unclean_starts_without_a_content_change_start_normally(tmp_path: Path) -> None:
    wall = Wall()
    for _ in range(5):
        assert _starts(tmp_path, wall).on_start() == ""
        wall.advance(1)


def test_unclean_starts_spread_over_more_than_the_window_start_normally(tmp_path: Path) -> None:
    wall = Wall()
    for _ in range(4):
        b = _starts(tmp_path, wall)
        assert b.on_start() == ""
        b.content_changed()
        wall.advance(400)


def test_garbled_start_record_counts_from_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / breakers.STARTS).write_bytes(b"\x00garbage")
    b = _starts(tmp_path, Wall())
    assert b.on_start() == "" and b.unclean_starts == 1 and "unreadable" in caplog.text
    assert json.loads((tmp_path / breakers.STARTS).read_text())["starts"]


# -- the history ---------------------------------------------------------------------------------------------


def test_history_periods_say_how_each_version_ended(tmp_path: Path) -> None:
    wall = Wall()
    history = ContentHistory(str(tmp_path), wall_ns=wall)
    for event, slot, version in [
        ("started", 1, "1.0"),
        ("activated", 2, "2.0"),
        ("crash-loop", 1, "1.0"),
        ("activated", 3, "2.1"),
        ("promoted", 3, "2.1"),
        ("rolled-back", 1, "1.0"),
        ("blocking-removed", 1, "1.0"),
    ]:
        wall.advance(1)
        history.append(EXT, event, slot, version, f"detail of {event}")
    entries, skipped = read_history(history.path)
    assert skipped == 0 and len(entries) == 7
    rows = periods(entries)[EXT]
    assert [(r.version, r.ended) for r in rows] == [
        ("1.0", "replaced by newer content"),
        ("2.0", "reverted by the crash-loop breaker"),
        ("1.0", "replaced by newer content"),
        ("2.1", "rolled back by an operator"),
        ("1.0", ""),
    ]
    assert rows[3].promoted_ns and rows[1].detail == "detail of crash-loop"


def test_history_is_bounded_and_a_torn_last_line_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breakers, "HISTORY_MAX_LINES", 20)
    monkeypatch.setattr(breakers, "HISTORY_KEEP_LINES", 10)
    history = ContentHistory(str(tmp_path))
    for n in range(35):
        history.append(EXT, "activated", n, "")
    entries, _ = read_history(history.path)
    assert 10 <= len(entries) <= 20 and entries[-1].slot == 34
    with open(history.path, "ab") as f:
        f.write(b'{"at_ns": 1, "extens')  # a kill -9 in the middle of a write
    entries, _ = read_history(history.path)
    assert entries[-1].slot == 34
    assert oct(os.stat(history.path).st_mode & 0o777) == "0o600"


def test_history_cli_text_json_and_an_unknown_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = ContentHistory(str(tmp_path))
    history.append(EXT, "started", 1, "1.0")
    history.append(EXT, "activated", 2, "2.0")
    history.append(EXT, "crash-loop", 1, "1.0", "failed 3 times")
    assert main(["content", "history", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "package 2.0 (activated)" in out and "reverted by the crash-loop breaker" in out
    assert main(["content", "history", EXT, "--json", "--state-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["ended"] for p in doc["extensions"][EXT]][1] == "reverted by the crash-loop breaker"
    assert main(["content", "history", "nope", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no content history for extension 'nope'" in err and EXT in err


def test_commands_without_an_agent_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["rollback", EXT], ["restore-blocking", EXT], ["status"]):
        assert main(["content", *argv, "--state-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no agent is running" in err


def test_rollback_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["content", "rollback"])
    assert e.value.code == 2


def test_status_socket_carries_a_command_and_its_answer_and_still_serves_health(tmp_path: Path) -> None:
    got: list[dict[str, object]] = []

    def handle(request: dict[str, object]) -> dict[str, object]:
        got.append(request)
        return {"ok": False, "error": "no such extension"}

    server = StatusServer(str(tmp_path), lambda: b'{"health": 1}', handle)
    server.start()
    try:
        answer = send_command(str(tmp_path), {"command": "content-rollback", "extension": "x", "to": None})
        assert answer == {"ok": False, "error": "no such extension"}
        assert got == [{"command": "content-rollback", "extension": "x", "to": None}]
        assert main(["content", "rollback", "x", "--state-dir", str(tmp_path)]) == 1
        from ringfence.agent import read_status

        assert read_status(str(tmp_path)) == b'{"health": 1}'
    finally:
        server.stop()


def test_breaker_config_is_checked_with_every_problem_named() -> None:
    text = (
        b"[content]\ncrash_loop_crashes = 0\nstart_loop_starts = 1\ndeny_rate_min = 0\n"
        b"deny_rate_window_s = 600\ndeny_rate_watch_s = 60\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "rf.toml")
    message = str(raised.value)
    for key in ("crash_loop_crashes", "start_loop_starts", "deny_rate_min", "deny_rate_watch_s"):
        assert f"content.{key}" in message
    assert "rf.toml:2" in message
    defaults = parse_config(b"", "rf.toml").content
    assert (defaults.crash_loop_crashes, defaults.start_loop_starts) == (3, 3)
    assert msgspec.structs.asdict(defaults)["deny_rate_factor"] == 10.0


def test_heartbeat_carries_the_content_section_and_an_older_one_without_it_decodes() -> None:
    from ringfence.events import ContentHostStatus, ExtensionContentStatus, Heartbeat, decode_heartbeat
    from tests.agent.test_updates import _health_doc

    content = ContentHostStatus(
        safe_mode="3 starts ...",
        extensions={
            EXT: ExtensionContentStatus(active="1.0", blocking=False, rejected={"2.0": "crash loop"})
        },
    )
    doc = _health_doc() | {"content": msgspec.to_builtins(content)}
    beat = {"host_id": "h", "sequence": 1, "sent_at_ns": 1, "health": doc, "schema_version": 1}
    back = decode_heartbeat(msgspec.json.encode(beat))
    assert isinstance(back, Heartbeat) and back.health.content == content
    older = {**beat, "health": _health_doc()}
    assert decode_heartbeat(msgspec.json.encode(older)).health.content is None


def test_while_a_slot_is_written_the_item_names_only_the_package_in_force(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status reads the item without the store's lock: a shadow's candidate slot, or a package still
    being copied in, must not show as active (the content bench saw a baking 2.0 named active)."""
    from ringfence.agent import _content

    seen: list[tuple[str, int]] = []
    copy = _content._copy

    def watched(origin: str, dest: str) -> None:
        seen.append((host.item.package_version, host.item.slot))
        copy(origin, dest)

    monkeypatch.setattr(_content, "_copy", watched)
    host.store.stage_candidate(host.item, "2.0", str(host.package("2.0", "candidate")))
    assert seen and set(seen) == {("1.0", 1)}, "the candidate's copy showed it as the package in force"
    assert (host.item.package_version, host.item.slot) == ("1.0", 1)
    seen.clear()
    host.activate("3.0", "next")
    assert seen and set(seen) == {("1.0", 1)}, "a package showed as active before its slot was"
    assert host.item.package_version == "3.0" and host.active_text == "next"
    monkeypatch.setattr(_content, "_copy", lambda *_: (_ for _ in ()).throw(ContentError("disk full")))
    with pytest.raises(ContentError):
        host.activate("4.0", "never")
    assert host.item.package_version == "3.0" and host.active_text == "next"
