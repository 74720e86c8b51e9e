"""What an extension proxy counts, behind one lock: the broker's threads, the reader thread and the
supervisor all write here, and `snapshot()` is a consistent copy for `status`.

Besides counters it keeps the extension's own account of what is wrong: the error it said it failed
with (a SetupFailed frame), which becomes the next exit's reason, and the problem it reports while it
runs (a Problem frame), which is `last_error` until it says the problem is solved.
"""

from __future__ import annotations

import threading

import msgspec

from ringfence.events import ExtensionStatistics


class ProxyStats:
    def __init__(self, extension_id: str, state: str, *, shadow: bool = False) -> None:
        self._lock = threading.Lock()
        self._st = ExtensionStatistics(id=extension_id, state=state, shadow=shadow)
        self._own_error: str | None = None
        self._problem: str | None = None  # the last Problem frame's message

    def add(self, **deltas: int) -> None:
        """Add to integer counters: `add(auth_asked=1)`."""
        with self._lock:
            for name, n in deltas.items():
                setattr(self._st, name, getattr(self._st, name) + n)

    def set(self, **values: object) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self._st, name, value)

    def set_extension_counters(self, counters: dict[str, int]) -> None:
        with self._lock:
            self._st.extension = dict(counters)

    def record_error(self, message: str) -> None:
        """The extension's own account of why it is failing (its setup exception, say): the next exit's
        `last_error` is this, rather than what the agent could tell from the outside."""
        with self._lock:
            self._own_error = message.splitlines()[0][:500] if message.strip() else None

    def take_error(self) -> str | None:
        with self._lock:
            own, self._own_error = self._own_error, None
            return own

    def problem(self, message: str | None) -> None:
        """A Problem frame: its message is `last_error` until one with None says it is solved."""
        with self._lock:
            if message is not None:
                self._st.last_error = message
            elif self._st.last_error == self._problem:
                self._st.last_error = ""
            self._problem = message

    def count_exit(self, category: str, reason: str, *, crashed: bool) -> None:
        with self._lock:
            st = self._st
            st.failures += 1
            st.crashes += int(crashed)
            st.restart_reasons[category] = st.restart_reasons.get(category, 0) + 1
            st.last_exit_reason = reason
            st.last_error = reason

    def fold_unsent(self, unsent: int, unsent_frames: int) -> None:
        """A finished connection's writer-side losses: events it had counted delivered but never sent."""
        with self._lock:
            st = self._st
            st.events_dropped += unsent
            st.events_delivered -= min(st.events_delivered, unsent)
            st.frames_unsent += unsent_frames

    def snapshot(self) -> ExtensionStatistics:
        with self._lock:
            return msgspec.structs.replace(
                self._st, restart_reasons=dict(self._st.restart_reasons), extension=dict(self._st.extension)
            )
