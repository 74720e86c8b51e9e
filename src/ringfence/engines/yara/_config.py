"""The engine's settings: its table in the agent config, given to it as `ctx.settings`.

    [extensions.config."ringfence.yara"]
    max_scan_bytes = 33554432    # optional, 1..1073741824: larger files are allowed uncached, counted
    scan_timeout_s = 1           # optional, 1..8: a scan gets at least this, at most 1 s more; then it
                                 #   is allowed uncached (yara-x counts whole seconds on a shared ticker)
    memo_entries = 4096          # optional, 1..1000000: verdicts remembered per file version
    close_write_max_bytes = 8388608  # optional, 1..1073741824: written files larger are not scanned;
                                 #   a close-write scan runs on the thread that answers AUTH, so
                                 #   keep it small (about 10-70 ms a scan at 8 MiB)

The rules are content (`ctx.content_dir`, filled by the agent from `[extensions.content."ringfence.yara"]`).
Unknown keys are errors: a misspelt key would otherwise change a limit without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class YaraError(Exception):
    """Root of the YARA engine's errors (the tree is drawn in the package docstring)."""


class SettingsError(YaraError):
    """Settings that cannot be used. `problems` lists every one, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("ringfence.yara settings: " + "; ".join(problems))


_LIMITS: dict[str, tuple[int, int, int]] = {  # key -> (low, high, default)
    "max_scan_bytes": (1, 1 << 30, 32 << 20),
    "scan_timeout_s": (1, 8, 1),  # + 1 s (see _scan.py) stays inside the manifest's 10 s deadline
    "memo_entries": (1, 1_000_000, 4096),
    "close_write_max_bytes": (1, 1 << 30, 8 << 20),
}


@dataclass(frozen=True, slots=True)
class YaraConfig:
    content_dir: str | None = None  # the agent's read-only copy of the rules; None: no rules
    max_scan_bytes: int = _LIMITS["max_scan_bytes"][2]
    scan_timeout_s: int = _LIMITS["scan_timeout_s"][2]
    memo_entries: int = _LIMITS["memo_entries"][2]
    close_write_max_bytes: int = _LIMITS["close_write_max_bytes"][2]
    recheck_interval_ns: int = 1_000_000_000  # how often, at most, a tick stats the content
    max_rules_file_bytes: int = 64 << 20  # per rules file

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], content_dir: str | None) -> YaraConfig:
        """Validate `settings` (every problem reported at once) and build the config."""
        problems = [
            f"unknown key {key!r} (known: {', '.join(_LIMITS)})" for key in settings if key not in _LIMITS
        ]
        values: dict[str, int] = {}
        for key, (low, high, default) in _LIMITS.items():
            value = settings.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{key}: must be an integer in {low}..{high}, got {value!r}")
            else:
                values[key] = value
        if problems:
            raise SettingsError(problems)
        return cls(content_dir=content_dir, **values)
