"""Named counters, the one counter type of every stage: each counts what it did and what it lost.

Thread-safe. Given `names`, only those exist, so a misspelt counter is a KeyError rather than a silent
new one; without them (a stage whose counters are named at run time) any name may be added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Counters:
    def __init__(self, names: Iterable[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._fixed = names is not None
        self._values: dict[str, int] = dict.fromkeys(names or (), 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            if self._fixed:
                self._values[name] += n
            else:
                self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0) if not self._fixed else self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
