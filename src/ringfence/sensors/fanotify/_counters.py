"""Thread-safe named counters: each sensor stage counts what it did and what it lost."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Counters:
    """A fixed set of named integers. `add` from any thread; `snapshot` for statistics()."""

    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
