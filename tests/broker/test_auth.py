from __future__ import annotations

import threading

import pytest

from ringfence.broker import AuthPolicy, Broker, DeadlineRunner, FailurePolicy, Mutes, ThreadedSubscriber
from ringfence.events import (
    AuthAnswer,
    AuthKind,
    AuthRequest,
    EventKind,
    HeaderStamper,
    ProcessRef,
    Verdict,
)
from tests.fakes import FakeClock, RecordingSubscriber

AUTH = frozenset({EventKind.AUTH_EXEC})


def _request(clock: FakeClock, path: str = "/usr/bin/x") -> AuthRequest:
    stamp = HeaderStamper("exec-auth", "h", clock)
    return AuthRequest(header=stamp.stamp(), kind=AuthKind.EXEC, path=path, process=ProcessRef(pid=42))


class Answers:
    def __init__(self) -> None:
        self.got: list[AuthAnswer] = []

    def __call__(self, answer: AuthAnswer) -> None:
        self.got.append(answer)


def _setup(*subs: RecordingSubscriber, deadline_ms: int = 250) -> tuple[FakeClock, Broker]:
    clock = FakeClock()
    broker = Broker(clock, auth_deadline_ms=deadline_ms)
    for s in subs:
        broker.subscribe(s)
    return clock, broker


def test_no_auth_subscriber_allows_at_once_and_cacheable() -> None:
    clock, broker = _setup(RecordingSubscriber("events-only", frozenset({EventKind.PROCESS})))
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]


def test_one_deny_in_time_denies_without_waiting_for_others() -> None:
    a = RecordingSubscriber("a", AUTH, AuthPolicy())
    b = RecordingSubscriber("b", AUTH, AuthPolicy())
    clock, broker = _setup(a, b)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    a.tickets[0][1](AuthAnswer(Verdict.DENY, reason="bad hash"))
    assert [x.verdict for x in answers.got] == [Verdict.DENY]
    assert answers.got[0].reason == "bad hash"
    b.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=True))  # late: the request is settled
    assert len(answers.got) == 1
    assert broker.statistics().auth.subscribers["b"].late_answers == 1


def test_allow_is_cacheable_only_if_every_subscriber_says_so() -> None:
    a = RecordingSubscriber("a", AUTH, AuthPolicy())
    b = RecordingSubscriber("b", AUTH, AuthPolicy())
    clock, broker = _setup(a, b)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    a.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=True))
    assert answers.got == []
    b.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=False))
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=False)]


def test_silent_subscriber_fail_open_allows_at_deadline_uncached_and_counts_miss() -> None:
    silent = RecordingSubscriber("silent", AUTH, AuthPolicy(deadline_ms=100))
    clock, broker = _setup(silent)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    clock.advance_ms(99)
    assert broker.arbiter.expire() == 0
    assert answers.got == []
    clock.advance_ms(1)
    assert broker.arbiter.expire() == 1
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=False)]
    stats = broker.statistics().auth
    assert stats.subscribers["silent"].deadline_misses == 1
    assert stats.unanswered_at_deadline == 1
    assert silent.missed == [silent.tickets[0][0].id]


def test_silent_subscriber_fail_closed_denies_at_deadline() -> None:
    silent = RecordingSubscriber(
        "strict", AUTH, AuthPolicy(deadline_ms=50, failure=FailurePolicy.FAIL_CLOSED)
    )
    clock, broker = _setup(silent)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    clock.advance_ms(50)
    broker.arbiter.expire()
    assert [a.verdict for a in answers.got] == [Verdict.DENY]


def test_subscriber_deadline_is_capped_by_broker_deadline() -> None:
    slow = RecordingSubscriber("slow", AUTH, AuthPolicy(deadline_ms=5000))
    clock, broker = _setup(slow, deadline_ms=250)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    clock.advance_ms(250)
    broker.arbiter.expire()
    assert len(answers.got) == 1


def test_full_subscriber_queue_applies_failure_policy_at_once() -> None:
    full = RecordingSubscriber("full", AUTH, AuthPolicy(failure=FailurePolicy.FAIL_CLOSED), accept_auth=False)
    clock, broker = _setup(full)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert [a.verdict for a in answers.got] == [Verdict.DENY]
    assert broker.statistics().auth.subscribers["full"].refused == 1


def test_muted_path_is_allowed_without_asking() -> None:
    sub = RecordingSubscriber("a", AUTH, AuthPolicy())
    clock = FakeClock()
    broker = Broker(clock, mutes=Mutes(path_prefixes=("/opt/trusted/",)))
    broker.subscribe(sub)
    answers = Answers()
    broker.authorize(_request(clock, "/opt/trusted/tool"), -1, answers)
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
    assert sub.tickets == []


def test_answer_after_expiry_does_not_answer_twice() -> None:
    sub = RecordingSubscriber("a", AUTH, AuthPolicy(deadline_ms=10))
    clock, broker = _setup(sub)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    clock.advance_ms(10)
    broker.arbiter.expire()
    sub.tickets[0][1](AuthAnswer(Verdict.DENY))
    assert len(answers.got) == 1


def test_new_auth_subscriber_flushes_verdict_cache() -> None:
    _clock, broker = _setup()
    flushed: list[int] = []
    broker.on_invalidate(lambda: flushed.append(1))
    broker.subscribe(RecordingSubscriber("events", frozenset({EventKind.FILE})))
    assert flushed == []
    broker.subscribe(RecordingSubscriber("auth", AUTH, AuthPolicy()))
    assert flushed == [1]


def test_duplicate_subscriber_name_rejected() -> None:
    _clock, broker = _setup(RecordingSubscriber("a", AUTH, AuthPolicy()))
    with pytest.raises(ValueError, match="already subscribed"):
        broker.subscribe(RecordingSubscriber("a", AUTH, AuthPolicy()))


def test_deadline_runner_answers_for_a_hung_threaded_subscriber() -> None:
    """Real threads and the real clock: a handler stuck forever still gets its request answered."""
    release = threading.Event()

    class Hung:
        def on_event(self, event: object) -> None:
            return None

        def on_auth(self, ticket: object) -> AuthAnswer | None:
            release.wait(30)
            return None

    broker = Broker(auth_deadline_ms=50)
    sub = ThreadedSubscriber("hung", Hung(), AUTH, auth_policy=AuthPolicy(deadline_ms=50)).start()
    broker.subscribe(sub)
    runner = DeadlineRunner(broker.arbiter)
    runner.start()
    done = threading.Event()
    got: list[AuthAnswer] = []

    def respond(answer: AuthAnswer) -> None:
        got.append(answer)
        done.set()

    try:
        broker.authorize(_request(FakeClock()), -1, respond)
        assert done.wait(10), "the broker never answered for a hung subscriber"
        assert got[0].verdict is Verdict.ALLOW
        assert broker.statistics().auth.subscribers["hung"].deadline_misses == 1
        assert sub.statistics().auth_misses == 1
    finally:
        release.set()
        runner.stop()
        sub.stop()


def test_the_deadline_runner_is_woken_only_by_a_deadline_earlier_than_every_other() -> None:
    """Woken at every request, the runner cost the exec gate a third of its time in a storm. It sleeps
    until the earliest deadline and reads the heap again then, so only a new earliest needs it."""
    slow = RecordingSubscriber("slow", AUTH, AuthPolicy(deadline_ms=200))
    clock, broker = _setup(slow)
    wakes: list[int | None] = []
    broker.arbiter.set_wakeup(lambda: wakes.append(broker.arbiter.next_deadline_ns()))
    for _ in range(3):
        broker.authorize(_request(clock), -1, Answers())
        clock.advance_ms(1)
    assert wakes == [1_000_000_000 + 200_000_000]  # the first only: the others are later
    fast = RecordingSubscriber("fast", AUTH, AuthPolicy(deadline_ms=20))
    broker.subscribe(fast)
    broker.authorize(_request(clock), -1, Answers())
    assert wakes[1:] == [clock.now_ns + 20_000_000]  # earlier than every other: woken


def test_the_deadline_runner_settles_requests_armed_while_it_slept() -> None:
    """Real threads and the real clock: requests armed after the first (no wake-up) are settled too."""
    broker = Broker(auth_deadline_ms=30)
    broker.subscribe(RecordingSubscriber("silent", AUTH, AuthPolicy(deadline_ms=30)))
    runner = DeadlineRunner(broker.arbiter)
    runner.start()
    answers = Answers()
    try:
        for _ in range(5):
            broker.authorize(_request(FakeClock()), -1, answers)
            threading.Event().wait(0.01)
        deadline = threading.Event()
        for _ in range(200):
            if len(answers.got) == 5:
                break
            deadline.wait(0.05)
        assert [a.verdict for a in answers.got] == [Verdict.ALLOW] * 5
        assert broker.statistics().auth.subscribers["silent"].deadline_misses == 5
    finally:
        runner.stop()


def test_withdrawn_fail_open_subscriber_is_not_asked_and_the_rest_stay_cacheable() -> None:
    gone = RecordingSubscriber("gone", AUTH, AuthPolicy(failure=FailurePolicy.FAIL_OPEN))
    stays = RecordingSubscriber("stays", AUTH, AuthPolicy())
    clock, broker = _setup(gone, stays)
    broker.withdraw("gone", "quarantined")
    broker.withdraw("never-subscribed", "quarantined")  # ignored
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert not gone.tickets
    stays.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=True))
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
    auth = broker.statistics().auth
    assert auth.absent["gone"].failure == "fail-open" and auth.unanswered_at_deadline == 0


def test_withdrawn_fail_closed_subscriber_denies_at_once_and_flushes_the_verdict_cache() -> None:
    gone = RecordingSubscriber("gone", AUTH, AuthPolicy(failure=FailurePolicy.FAIL_CLOSED))
    stays = RecordingSubscriber("stays", AUTH, AuthPolicy())
    clock, broker = _setup(gone, stays)
    flushes: list[int] = []
    broker.on_invalidate(lambda: flushes.append(1))
    broker.withdraw("gone", "quarantined")
    assert flushes == [1]
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    assert [(a.verdict, a.cacheable) for a in answers.got] == [(Verdict.DENY, False)]
    assert answers.got[0].reason == "gone: not running (fail-closed)"
    assert not stays.tickets  # nobody is asked: nothing can make it an ALLOW
    assert broker.statistics().auth.absent["gone"].denied == 1


def test_advisory_subscriber_deny_is_allowed_uncached_recorded_and_binding_again_once_restored() -> None:
    tripped = RecordingSubscriber("tripped", AUTH, AuthPolicy())
    clock, broker = _setup(tripped)
    advised: list[tuple[str, str, str]] = []
    broker.arbiter.on_advisory_deny = lambda name, req, why: advised.append((name, req.path, why))
    broker.arbiter.set_advisory("tripped", True)
    answers = Answers()
    broker.authorize(_request(clock, "/t/x"), -1, answers)
    tripped.tickets[0][1](AuthAnswer(Verdict.DENY, reason="new rule"))
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=False)]
    assert advised == [("tripped", "/t/x", "new rule")]
    st = broker.statistics().auth
    assert (st.subscribers["tripped"].advisory_denied, st.subscribers["tripped"].denied, st.denied) == (
        1,
        0,
        0,
    )
    broker.arbiter.set_advisory("tripped", False)
    broker.authorize(_request(clock, "/t/x"), -1, answers)
    tripped.tickets[1][1](AuthAnswer(Verdict.DENY, reason="new rule"))
    assert answers.got[1].verdict is Verdict.DENY and len(advised) == 1


def test_advisory_subscriber_waits_for_the_others_and_a_binding_deny_still_blocks() -> None:
    tripped = RecordingSubscriber("tripped", AUTH, AuthPolicy())
    other = RecordingSubscriber("other", AUTH, AuthPolicy())
    clock, broker = _setup(tripped, other)
    broker.arbiter.set_advisory("tripped", True)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    tripped.tickets[0][1](AuthAnswer(Verdict.DENY))
    assert answers.got == []  # the other one has not answered yet
    other.tickets[0][1](AuthAnswer(Verdict.DENY, reason="known bad"))
    assert [(a.verdict, a.reason) for a in answers.got] == [(Verdict.DENY, "known bad")]


def test_silent_advisory_subscriber_is_settled_at_its_deadline() -> None:
    tripped = RecordingSubscriber("tripped", AUTH, AuthPolicy(deadline_ms=100))
    clock, broker = _setup(tripped)
    broker.arbiter.set_advisory("tripped", True)
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    clock.advance_ms(100)
    broker.arbiter.expire()
    assert [a.verdict for a in answers.got] == [Verdict.ALLOW]


def test_fail_closed_subscriber_back_from_quarantine_is_asked_again_not_denied_for() -> None:
    sub = RecordingSubscriber("back", AUTH, AuthPolicy(failure=FailurePolicy.FAIL_CLOSED))
    clock, broker = _setup(sub)
    broker.withdraw("back", "quarantined")
    broker.subscribe(sub)
    assert "back" not in broker.statistics().auth.absent
    answers = Answers()
    broker.authorize(_request(clock), -1, answers)
    sub.tickets[0][1](AuthAnswer(Verdict.ALLOW, cacheable=True))
    assert answers.got == [AuthAnswer(Verdict.ALLOW, cacheable=True)]
