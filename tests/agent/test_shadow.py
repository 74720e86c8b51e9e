"""The shadow bake's decisions (agent/_shadow.py) through the real update loop and content store, with a
fake extension host: counters the test sets, a clock it moves. The real instances, broker and sandbox
are in tests/agent/test_shadow_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfence.agent._shadow import BUSY, ShadowPolicy, ShadowRuns, shadow_id
from ringfence.content import FakeContentUpdates as Fake
from ringfence.events import ExtensionStatistics, SubscriberAuthStatistics
from tests.agent.test_updates import ENGINE, OK, Host, stage_package

SID = shadow_id(ENGINE)
BAKE_S = 60.0


class FakeShadowHost:
    def __init__(self) -> None:
        self.ext: dict[str, ExtensionStatistics] = {ENGINE: ExtensionStatistics(id=ENGINE, state="running")}
        self.auths: dict[str, SubscriberAuthStatistics] = {}
        self.started: list[str] = []  # content dirs
        self.retired: list[str] = []
        self.answer = ""

    def start_shadow(self, ext_id: str, content_dir: str) -> str:
        if self.answer:
            return self.answer
        self.started.append(content_dir)
        self.ext[shadow_id(ext_id)] = ExtensionStatistics(id=shadow_id(ext_id), state="starting", shadow=True)
        return ""

    def retire_shadow(self, ext_id: str, reason: str) -> None:
        self.retired.append(reason)
        self.ext.pop(shadow_id(ext_id), None)

    def extension(self, instance_id: str) -> ExtensionStatistics | None:
        return self.ext.get(instance_id)

    def auth(self, instance_id: str) -> SubscriberAuthStatistics | None:
        return self.auths.get(instance_id)

    def run(self, instance_id: str, **counters: object) -> None:
        st = self.ext[instance_id]
        st.state = "running"
        for name, value in counters.items():
            setattr(st, name, value)


class Bake:
    def __init__(self, tmp_path: Path, **policy: float) -> None:
        self.host = Host(tmp_path / "state")
        self.fake = FakeShadowHost()
        self.runs = ShadowRuns(
            ShadowPolicy(bake_s=BAKE_S, **policy), self.fake, self.host.store, clock=self.host.clock
        )
        self.loop = self.host.loop(Fake([OK] * 100), shadow=self.runs)
        self.item = self.host.item

    def publish(self, version: str, text: str = "x\n") -> None:
        stage_package(self.host.state, version, {"blocklist.txt": text})

    def look(self, after_s: float = 1.0) -> None:
        self.host.clock.now += after_s
        self.loop.activate()

    def status(self) -> str:
        return self.runs.status(ENGINE)


@pytest.fixture
def bake(tmp_path: Path) -> Bake:
    return Bake(tmp_path)


def test_a_clean_bake_promotes_the_very_slot_it_ran_on(bake: Bake) -> None:
    bake.publish("1.0")
    bake.look()
    assert len(bake.fake.started) == 1 and bake.item.package_version == ""  # not active yet
    candidate = bake.fake.started[0]
    assert (Path(candidate) / "blocklist.txt").read_text() == "x\n"
    bake.look()
    assert "starting" in bake.status()
    bake.fake.run(SID, events_delivered=500, cpu_seconds=0.05, findings_emitted=2)
    bake.fake.run(ENGINE, events_delivered=0, cpu_seconds=1.0)
    bake.look()  # it runs: the window starts now
    bake.fake.run(ENGINE, events_delivered=500, cpu_seconds=1.05, findings_emitted=1)
    bake.fake.run(SID, events_delivered=1000, cpu_seconds=0.1, findings_emitted=4)
    bake.look(BAKE_S / 2)
    assert "baking in shadow" in bake.status() and bake.item.package_version == ""
    bake.look(BAKE_S)
    assert bake.item.package_version == "1.0" and bake.item.package_on_trial
    assert Path(bake.item.content_dir).resolve() == Path(candidate).resolve()  # the baked bytes
    assert bake.runs.promoted == {ENGINE: 1} and bake.fake.retired == ["package 1.0 promoted"]
    assert bake.status() == "" and bake.item.candidate_slot == 0


@pytest.mark.parametrize(
    ("shadow", "auth", "why"),
    [
        (
            {"state": "backoff", "failures": 1, "last_error": "exited with status 3"},
            None,
            "exited with status 3",
        ),
        ({"restarts": 1}, None, "failed"),
        ({}, SubscriberAuthStatistics(deadline_misses=1), "missed 1 AUTH deadline"),
        ({"last_error": "blocklist.txt line 1: not a sha256"}, None, "reported a problem"),
    ],
)
def test_a_failure_in_shadow_rejects_at_once_without_waiting_for_the_bake(
    bake: Bake, shadow: dict[str, object], auth: SubscriberAuthStatistics | None, why: str
) -> None:
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.fake.run(SID, **shadow)
    if "state" in shadow:
        bake.fake.ext[SID].state = str(shadow["state"])
    if auth is not None:
        bake.fake.auths[SID] = auth
    bake.look()
    assert "1.0" in bake.item.rejected and why in bake.item.rejected_why["1.0"]
    assert bake.item.package_version == "" and bake.item.candidate_slot == 0
    assert bake.runs.rejected == {ENGINE: 1}
    assert "rejected in shadow" in (bake.host.state / "content" / ENGINE / "rejected.json").read_text()
    bake.look(BAKE_S * 2)
    assert len(bake.fake.started) == 1  # never tried again


def test_deadline_misses_of_an_earlier_shadow_do_not_count_against_the_next(bake: Bake) -> None:
    bake.fake.auths[SID] = SubscriberAuthStatistics(deadline_misses=5, shadow=True)  # an earlier bake's
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.look(BAKE_S + 1)
    assert bake.item.package_version == "1.0"


def _judged(bake: Bake, shadow: dict[str, object], active: dict[str, object]) -> str:
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.fake.run(SID, **shadow)
    bake.fake.run(ENGINE, **active)
    bake.look(BAKE_S + 1)
    return bake.item.rejected_why.get("1.0", "")


def test_a_shadow_much_costlier_per_event_is_rejected(bake: Bake) -> None:
    why = _judged(
        bake, {"events_delivered": 1000, "cpu_seconds": 10.0}, {"events_delivered": 1000, "cpu_seconds": 0.5}
    )
    assert "CPU per event 10000 us in shadow against 500 us active" in why


def test_cost_is_not_compared_on_too_few_events(bake: Bake) -> None:
    assert _judged(bake, {"events_delivered": 50, "cpu_seconds": 10.0}, {"events_delivered": 50}) == ""
    assert bake.item.package_version == "1.0"


def test_slow_auth_answers_in_shadow_are_rejected(bake: Bake) -> None:
    bake.fake.auths[ENGINE] = SubscriberAuthStatistics()
    bake.fake.auths[SID] = SubscriberAuthStatistics(shadow=True)
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.fake.auths[ENGINE] = SubscriberAuthStatistics(asked=100, allowed=100, answer_us_total=100 * 200)
    bake.fake.auths[SID] = SubscriberAuthStatistics(asked=100, allowed=100, answer_us_total=100 * 50_000)
    bake.look(BAKE_S + 1)
    assert "mean AUTH answer 50.0 ms in shadow against 0.2 ms active" in bake.item.rejected_why["1.0"]


def test_a_finding_flood_in_shadow_is_rejected_and_a_few_more_findings_are_not(tmp_path: Path) -> None:
    flood = Bake(tmp_path / "a")
    assert "400 findings in shadow against 10 active" in _judged(
        flood, {"findings_emitted": 400}, {"findings_emitted": 10}
    )
    few = Bake(tmp_path / "b")
    assert _judged(few, {"findings_emitted": 25}, {"findings_emitted": 10}) == ""


def _deny_bake(bake: Bake, paths: list[str], denied: int) -> str:
    bake.fake.auths[ENGINE] = SubscriberAuthStatistics()
    bake.fake.auths[SID] = SubscriberAuthStatistics(shadow=True)
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.fake.auths[ENGINE] = SubscriberAuthStatistics(asked=200, allowed=200)
    bake.fake.auths[SID] = SubscriberAuthStatistics(asked=200, allowed=200 - denied, denied=denied)
    for path in paths:
        bake.runs.would_deny(SID, path)
    bake.look(BAKE_S + 1)
    return bake.item.rejected_why.get("1.0", "")


def test_would_be_denies_of_many_programs_reject_the_release(bake: Bake) -> None:
    why = _deny_bake(bake, [f"/usr/bin/tool{n}" for n in range(40)], denied=40)
    assert "would have denied 40 of 200 AUTH requests (20.0%), 40 different files" in why


def test_would_be_denies_of_one_file_are_a_blocklist_entry_doing_its_job(bake: Bake) -> None:
    assert _deny_bake(bake, ["/tmp/miner"] * 40, denied=40) == ""
    assert bake.item.package_version == "1.0"


def test_a_newer_version_ends_the_bake_unjudged_and_bakes_itself(bake: Bake) -> None:
    bake.publish("1.0")
    bake.look()
    bake.fake.run(SID)
    bake.look()
    bake.publish("1.1")
    bake.look()
    assert bake.fake.retired == ["package 1.0: superseded by 1.1"] and "1.0" not in bake.item.rejected
    assert len(bake.fake.started) == 2 and "1.1" in bake.status()


def test_a_shadow_still_going_away_delays_the_next_bake(bake: Bake) -> None:
    bake.fake.answer = BUSY
    bake.publish("1.0")
    bake.look()
    assert bake.item.package_version == "" and bake.status() == "" and bake.item.candidate_slot == 0
    bake.fake.answer = ""
    bake.look()
    assert len(bake.fake.started) == 1 and "1.0" in bake.status()


def test_an_engine_that_cannot_have_a_shadow_gets_the_version_directly(bake: Bake) -> None:
    bake.fake.answer = "e2e.x is not configured here"
    bake.publish("1.0")
    bake.look()
    assert bake.item.package_version == "1.0" and bake.item.package_on_trial  # on trial, breakers armed


def test_no_shadow_with_a_bake_of_zero(tmp_path: Path) -> None:
    host = Host(tmp_path / "state")
    fake = FakeShadowHost()
    runs = ShadowRuns(ShadowPolicy(bake_s=0), fake, host.store, clock=host.clock)
    loop = host.loop(Fake([OK] * 10), shadow=runs)
    stage_package(host.state, "1.0", {"blocklist.txt": "x\n"})
    loop.activate()
    assert host.item.package_version == "1.0" and fake.started == []
