"""Shadow subscribers (an extension instance on candidate content): asked about every AUTH request, never
waited for, never binding. An attacker who controls a release tries to block, stall and fail-close the
host through its shadow run; each attempt changes nothing about the answers."""

from __future__ import annotations

from ringfence.broker import AuthPolicy, Broker, FailurePolicy
from ringfence.events import AuthAnswer, EventKind, Verdict
from tests.broker.test_auth import AUTH, Answers, _request
from tests.fakes import FakeClock, RecordingSubscriber


def _broker(*subs: RecordingSubscriber) -> tuple[FakeClock, Broker]:
    clock = FakeClock()
    broker = Broker(clock, auth_deadline_ms=250)
    for sub in subs:
        broker.subscribe(sub)
    return clock, broker


def test_a_shadow_is_asked_first_and_its_deny_binds_nothing() -> None:
    order: list[str] = []
    active = RecordingSubscriber("e", AUTH, AuthPolicy(), order=order)
    shadow = RecordingSubscriber("e@shadow", AUTH, AuthPolicy(), shadow=True, order=order)
    clock, broker = _broker(active, shadow)
    answers = Answers()
    broker.authorize(_request(clock), 7, answers)
    assert order == ["e@shadow", "e"]  # it dups the descriptor before any answer can close it
    assert shadow.tickets[0][0].fd == 7 and shadow.tickets[0][0].id != active.tickets[0][0].id
    shadow.tickets[0][1](AuthAnswer(Verdict.DENY, reason="candidate says no"))
    assert answers.got == []  # its DENY settles nothing
    active.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=True))
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
    stats = broker.arbiter.statistics()
    assert stats.subscribers["e@shadow"].denied == 1 and stats.subscribers["e@shadow"].shadow
    assert stats.denied == 0 and stats.allowed == 1


def test_the_answer_never_waits_for_a_shadow_and_its_misses_are_its_own() -> None:
    active = RecordingSubscriber("e", AUTH, AuthPolicy(deadline_ms=100))
    shadow = RecordingSubscriber("e@shadow", AUTH, AuthPolicy(deadline_ms=100), shadow=True)
    clock, broker = _broker(active, shadow)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    active.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=False))
    assert len(answers.got) == 1  # answered while the shadow is silent
    clock.advance_ms(200)
    assert broker.arbiter.expire() == 1
    stats = broker.arbiter.statistics()
    assert stats.subscribers["e@shadow"].deadline_misses == 1 and shadow.missed == [shadow.tickets[0][0].id]
    assert stats.subscribers["e"].deadline_misses == 0 and stats.unanswered_at_deadline == 0
    shadow.tickets[0][1](AuthAnswer(Verdict.DENY))  # far too late: counted as late, nothing else
    assert broker.arbiter.statistics().subscribers["e@shadow"].late_answers == 1
    assert broker.arbiter.next_deadline_ns() is None


def test_with_only_a_shadow_the_request_is_allowed_at_once() -> None:
    shadow = RecordingSubscriber("e@shadow", AUTH, AuthPolicy(), shadow=True)
    clock, broker = _broker(shadow)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
    assert len(shadow.tickets) == 1  # still asked: its would-be verdict is what its bake judges


def test_a_fail_closed_shadow_that_goes_away_closes_nothing() -> None:
    policy = AuthPolicy(failure=FailurePolicy.FAIL_CLOSED)
    shadow = RecordingSubscriber("e@shadow", AUTH, policy, shadow=True)
    clock, broker = _broker(shadow)
    broker.withdraw("e@shadow", "retired")
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
    assert broker.arbiter.statistics().absent == {}


def test_a_shadow_that_cannot_be_asked_is_counted_and_the_active_still_decides() -> None:
    active = RecordingSubscriber("e", AUTH, AuthPolicy())
    shadow = RecordingSubscriber("e@shadow", AUTH, AuthPolicy(), shadow=True, accept_auth=False)
    clock, broker = _broker(active, shadow)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    active.tickets[0][1](AuthAnswer(Verdict.DENY, reason="active says no"))
    assert [a.verdict for a in answers.got] == [Verdict.DENY]
    assert broker.arbiter.statistics().subscribers["e@shadow"].refused == 1


def test_a_shadow_gets_the_events_of_its_kinds_like_any_subscriber() -> None:
    shadow = RecordingSubscriber("e@shadow", frozenset({EventKind.PROCESS}), shadow=True)
    _, broker = _broker(shadow)
    assert broker.has_subscribers(EventKind.PROCESS)
