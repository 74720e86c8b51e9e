"""Content on the host, the parts that outlive a run: the content history, the deny-rate breaker and the
agent's start-loop breaker. (The crash-loop breaker for an extension lives with the slots it swaps, in
agent/_content.py.) Everything here is small JSON in the state dir, written by temp file and rename (the
history by appending whole lines), so a kill -9 at any moment leaves each file whole or absent.

    STATE_DIR/content-history.jsonl   one line per content event, bounded (HISTORY_MAX_LINES, then the
                                      newest HISTORY_KEEP_LINES are kept); a torn last line is skipped
    STATE_DIR/content-breakers.json   {"advisory": {EXT: {since_ns, reason, version}}}: extensions whose
                                      DENYs are advice only until `ringfence content restore-blocking`
    STATE_DIR/agent-starts.json       {starts: [ns], clean_ns, content_changed_ns}: the start-loop breaker

Deny-rate breaker: every second the agent samples each AUTH extension's counters (requests asked,
DENYs given). A content change starts a watch of `watch_s`: once the extension has answered at least
`min_requests` since the change (over the last `window_s`), a DENY rate above `min_rate` and above
`factor` times its rate before the change (over the same window; 0 when it had answered fewer) trips it:
the broker takes its DENYs as advice (agent/_extensions.py), recorded, until an operator restores it.

Start-loop breaker: each start is recorded before anything is started; a run that stays up `clean_s`,
or stops cleanly, clears the record. A start that finds `starts` unclean starts within `window_s`
(itself included) after a content change (one recorded since the last clean run) runs in safe mode:
last-known-good content for every extension and no content updates (no network).

Errors: BreakerError (an AgentError): a command that cannot be done (not tripped, unknown extension).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from ringfence._linux import write_atomic
from ringfence.agent._errors import AgentError

log = logging.getLogger(__name__)

HISTORY = "content-history.jsonl"
BREAKERS = "content-breakers.json"
STARTS = "agent-starts.json"
HISTORY_MAX_LINES = 2000
HISTORY_KEEP_LINES = 1000
MAX_STATE_BYTES = 1 << 20
MAX_HISTORY_BYTES = 16 << 20


class BreakerError(AgentError):
    """A breaker command that cannot be carried out; the message says why, in one line."""


# -- the history -------------------------------------------------------------------------------------------


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One content event: after it, `slot` (holding package `version`, "" for none) is active."""

    at_ns: int  # wall clock
    extension: str
    event: str  # started, activated, promoted, rejected, crash-loop, rolled-back, blocking-removed, ...
    slot: int = 0
    version: str = ""
    detail: str = ""


class ContentHistory:
    """The append-only history file. `append` is safe from any thread; it never raises (a history that
    cannot be written is logged: the content decision it records stands)."""

    def __init__(self, state_dir: str, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = os.path.join(state_dir, HISTORY)
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        self._lines: int | None = None

    def append(self, extension: str, event: str, slot: int, version: str, detail: str = "") -> None:
        entry = HistoryEntry(
            at_ns=self._wall_ns(), extension=extension, event=event, slot=slot, version=version, detail=detail
        )
        line = msgspec.json.encode(entry) + b"\n"
        with self._lock:
            try:
                if self._lines is None:
                    self._lines = len(read_history_lines(self.path))
                if self._lines >= HISTORY_MAX_LINES:
                    kept = read_history_lines(self.path)[-(HISTORY_KEEP_LINES - 1) :]
                    write_atomic(self.path, b"".join(kept), 0o600)
                    self._lines = len(kept)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, line)  # one write of one line: a kill leaves it whole or torn at the end
                finally:
                    os.close(fd)
                self._lines += 1
            except OSError as e:
                why = str(e)
            else:
                return
        log.error("%s: cannot record content event %s of %s: %s", self.path, event, extension, why)


def read_history_lines(path: str) -> list[bytes]:
    """The whole lines of the history file (a torn last line left out); [] when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HISTORY_BYTES)
    except FileNotFoundError:
        return []
    lines = data.splitlines(keepends=True)
    return [line for line in lines if line.endswith(b"\n")]


def read_history(path: str) -> tuple[list[HistoryEntry], int]:
    """(entries, lines skipped as unreadable). Raises OSError for a file that cannot be read."""
    entries, skipped = [], 0
    for line in read_history_lines(path):
        try:
            entries.append(msgspec.json.decode(line, type=HistoryEntry))
        except msgspec.DecodeError:
            skipped += 1
    return entries, skipped


class Period(msgspec.Struct, kw_only=True):
    """A version's time as the active one, as `ringfence content history` shows it."""

    slot: int
    version: str
    since_ns: int
    how_started: str  # the event that made it active
    promoted_ns: int = 0  # proven good at
    ended_ns: int = 0  # 0: still active (as far as the history knows)
    ended: str = ""  # replaced, agent restarted, reverted by the crash-loop breaker, rejected, ...
    detail: str = ""  # what the ending event said


_ENDINGS = {
    "activated": "replaced by newer content",
    "started": "agent restarted",
    "rejected": "rejected (refused by the engine or failed its start)",
    "crash-loop": "reverted by the crash-loop breaker",
    "rolled-back": "rolled back by an operator",
}


def periods(entries: Iterable[HistoryEntry]) -> dict[str, list[Period]]:
    """Per extension, the versions that were active, oldest first, and how each ended. Breaker events
    (blocking removed or restored) are not periods: `notes` has them."""
    out: dict[str, list[Period]] = {}
    for e in entries:
        if e.event not in _ENDINGS and e.event != "promoted":
            continue
        rows = out.setdefault(e.extension, [])
        current = rows[-1] if rows and not rows[-1].ended_ns else None
        if e.event == "promoted":
            if current is not None and current.slot == e.slot:
                current.promoted_ns = e.at_ns
            continue
        if current is not None:
            if e.event == "started" and current.slot == e.slot:
                continue  # a safe start on the same slot: the same period goes on
            current.ended_ns, current.ended = e.at_ns, _ENDINGS[e.event]
            current.detail = e.detail if e.event != "activated" else ""
        rows.append(Period(slot=e.slot, version=e.version, since_ns=e.at_ns, how_started=e.event))
    return out


# -- the deny-rate breaker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenyRatePolicy:
    factor: float = 10.0
    min_rate: float = 0.2
    min_requests: int = 50
    window_s: float = 300.0
    watch_s: float = 3600.0


class AdvisoryRecord(msgspec.Struct, frozen=True, kw_only=True):
    since_ns: int
    reason: str
    version: str = ""  # the package active when it tripped


class _BreakerFile(msgspec.Struct, kw_only=True):
    advisory: dict[str, AdvisoryRecord] = msgspec.field(default_factory=dict)


@dataclass
class _Watch:
    changed_at: float
    baseline: float
    samples: deque[tuple[float, int, int]]  # (monotonic s, asked, denies) since the change


Counts = Callable[[], Mapping[str, tuple[int, int]]]
"""AUTH subscriber name -> (requests asked, DENYs given, advisory ones included)."""


class DenyRateBreaker:
    """See the module doc. `set_advisory(name, advisory)` tells the broker; `on_trip(name, reason)` and
    `on_restore(name)` run after the state is saved. Thread-safe."""

    def __init__(
        self,
        state_dir: str,
        policy: DenyRatePolicy,
        counts: Counts,
        set_advisory: Callable[[str, bool], None],
        *,
        on_trip: Callable[[str, str], None] | None = None,
        version_of: Callable[[str], str] = lambda _name: "",
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = os.path.join(state_dir, BREAKERS)
        self.policy = policy
        self._counts, self._set_advisory, self._on_trip = counts, set_advisory, on_trip
        self._version_of = version_of
        self._clock, self._wall_ns = clock, wall_ns
        self._lock = threading.Lock()
        self._history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()  # for the baseline
        self._watches: dict[str, _Watch] = {}
        self._would_be: dict[str, int] = {}
        self._last_would_be: dict[str, str] = {}
        self._state = _read_state(self.path, _BreakerFile, "every extension keeps its power to block")
        for name in self._state.advisory:
            set_advisory(name, True)
            log.warning(
                "%s: DENYs are advice only (deny-rate breaker, since an earlier run): `ringfence content "
                "restore-blocking %s` restores them",
                name,
                name,
            )

    def advisory(self) -> dict[str, AdvisoryRecord]:
        with self._lock:
            return dict(self._state.advisory)

    def would_be(self, name: str) -> tuple[int, str]:
        with self._lock:
            return self._would_be.get(name, 0), self._last_would_be.get(name, "")

    def record_would_be(self, name: str, path: str, reason: str) -> None:
        with self._lock:
            self._would_be[name] = self._would_be.get(name, 0) + 1
            self._last_would_be[name] = f"{path}: {reason}" if reason else path

    def content_changed(self, name: str) -> None:
        """A new slot of `name` went active: watch its deny rate from now, against the rate before."""
        now, counts = self._clock(), self._counts()
        asked, denies = counts.get(name, (0, 0))
        with self._lock:
            baseline = 0.0
            start = next((c.get(name) for t, c in self._history if t >= now - self.policy.window_s), None)
            if start is not None and asked - start[0] >= self.policy.min_requests:
                baseline = (denies - start[1]) / (asked - start[0])
            self._watches[name] = _Watch(now, baseline, deque([(now, asked, denies)]))

    def sample(self) -> None:
        """One look at the counters (the agent calls it about every second): trip what crossed."""
        now, counts = self._clock(), dict(self._counts())
        tripped: list[tuple[str, str]] = []
        with self._lock:
            self._history.append((now, counts))
            while self._history and self._history[0][0] < now - self.policy.window_s:
                self._history.popleft()
            for name, watch in list(self._watches.items()):
                reason = self._check(name, watch, now, counts.get(name))
                if reason:
                    del self._watches[name]
                    tripped.append((name, reason))
        for name, reason in tripped:
            self._trip(name, reason, self._version_of(name))

    def _check(self, name: str, watch: _Watch, now: float, count: tuple[int, int] | None) -> str:
        p = self.policy
        if now - watch.changed_at > p.watch_s or name in self._state.advisory:
            del self._watches[name]
            return ""
        if count is None:
            return ""
        watch.samples.append((now, *count))
        while len(watch.samples) > 1 and watch.samples[1][0] <= now - p.window_s:
            watch.samples.popleft()
        _, asked0, denies0 = watch.samples[0]
        asked, denies = count[0] - asked0, count[1] - denies0
        if asked < p.min_requests:
            return ""
        rate = denies / asked
        if rate <= p.min_rate or rate <= p.factor * watch.baseline:
            return ""
        return (
            f"denied {denies} of {asked} AUTH requests ({rate:.0%}) after a content change, against "
            f"{watch.baseline:.1%} before (breaker: over {p.min_rate:.0%} and {p.factor:g} times)"
        )

    def _trip(self, name: str, reason: str, version: str = "") -> None:
        with self._lock:
            self._state.advisory[name] = AdvisoryRecord(
                since_ns=self._wall_ns(), reason=reason, version=version
            )
            self._save()
        self._set_advisory(name, True)
        log.error(
            "%s lost its power to block (deny-rate breaker): %s; its DENYs are advice only until "
            "`ringfence content restore-blocking %s`",
            name,
            reason,
            name,
        )
        if self._on_trip is not None:
            self._on_trip(name, reason)

    def trip(self, name: str, reason: str, version: str = "") -> None:
        """Trip by hand (tests, and whoever knows better than the rate)."""
        self._trip(name, reason, version)

    def restore(self, name: str) -> str:
        """Give `name` its power to block back. Raises BreakerError when it has it."""
        with self._lock:
            if name not in self._state.advisory:
                raise BreakerError(f"{name} has its power to block: the deny-rate breaker has not tripped")
            del self._state.advisory[name]
            self._watches.pop(name, None)  # watched again from the next content change
            self._save()
        self._set_advisory(name, False)
        log.warning("%s: power to block restored by the operator", name)
        return f"{name}: blocking restored (its DENYs block execs again)"

    def _save(self) -> None:
        try:
            write_atomic(self.path, msgspec.json.encode(self._state), 0o600)
        except OSError as e:
            why = str(e)
        else:
            return
        log.error("%s: cannot save the breaker state (it holds for this run only): %s", self.path, why)


# -- the start-loop breaker --------------------------------------------------------------------------------


class _StartFile(msgspec.Struct, kw_only=True):
    starts: list[int] = msgspec.field(default_factory=list)  # wall ns of the starts since the last clean
    clean_ns: int = 0  # wall ns of the last clean run (up `clean_s`) or clean stop
    content_changed_ns: int = 0  # wall ns of the last content change at run time


class StartLoopBreaker:
    """The start counter (see the module doc). Not thread-safe on its own: the agent calls `on_start`
    before any thread, and `clean` and `content_changed` under its lock."""

    def __init__(
        self, state_dir: str, *, starts: int, window_s: float, wall_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.path = os.path.join(state_dir, STARTS)
        self._starts, self._window_ns = starts, int(window_s * 1e9)
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        self._state = _StartFile()
        self.safe_mode = ""

    @property
    def unclean_starts(self) -> int:
        with self._lock:
            return len(self._state.starts)

    def on_start(self) -> str:
        """Record this start; returns why it must run in safe mode, or ""."""
        now = self._wall_ns()
        with self._lock:
            self._state = _read_state(self.path, _StartFile, "the start-loop breaker counts from here")
            st = self._state
            st.starts = [*[s for s in st.starts if s > st.clean_ns][-1000:], now]
            recent = [s for s in st.starts if now - s <= self._window_ns]
            changed = st.content_changed_ns > st.clean_ns
            self._save()
        if len(recent) >= self._starts and changed:
            self.safe_mode = (
                f"{len(recent)} starts within {self._window_ns / 1e9:g} s without a clean run after a "
                "content change (start-loop breaker): last-known-good content, no content updates"
            )
        return self.safe_mode

    def clean(self) -> None:
        """The run reached the clean mark (up long enough) or stops cleanly: the count starts over."""
        with self._lock:
            self._state.starts, self._state.clean_ns = [], self._wall_ns()
            self._save()

    def content_changed(self) -> None:
        with self._lock:
            self._state.content_changed_ns = self._wall_ns()
            self._save()

    def _save(self) -> None:
        try:
            write_atomic(self.path, msgspec.json.encode(self._state), 0o600)
        except OSError as e:
            why = str(e)
        else:
            return
        log.error("%s: cannot record the start (the start-loop breaker cannot count it): %s", self.path, why)


_State = TypeVar("_State", bound=msgspec.Struct)


def _read_state(path: str, kind: type[_State], otherwise: str) -> _State:
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(MAX_STATE_BYTES), type=kind)
    except FileNotFoundError:
        return kind()
    except (OSError, msgspec.DecodeError) as e:
        why = str(e)
    log.error("%s: unreadable (%s): %s", path, why, otherwise)
    with contextlib.suppress(OSError):
        os.replace(path, path + ".bad")  # kept for a look; not read again
    return kind()
