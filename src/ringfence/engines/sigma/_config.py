"""The engine's settings, its table in the agent config (`ctx.settings`), validated all at once.

    [extensions.config."ringfence.sigma"]
    dedup_window_s = 60                 # one finding per rule and process (exe, command line, file)
    correlation_max_groups = 1024       # per correlation rule
    correlation_max_events = 256        # per group
    [extensions.config."ringfence.sigma".placeholders]
    admins = ["root", "alice"]          # values for `|expand` placeholders (%admins%)

Unknown keys are errors: a misspelt key would otherwise change detection without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringfence.engines.sigma._ruleset import SigmaEngineError

_LIMITS = {
    "dedup_window_s": (0, 86_400),
    "correlation_max_groups": (1, 1_000_000),
    "correlation_max_events": (1, 100_000),
}


class SettingsError(SigmaEngineError):
    """Settings that cannot be used. `problems` lists every one, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("ringfence.sigma settings: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class SigmaConfig:
    content_dir: str | None = None
    dedup_window_s: int = 60
    correlation_max_groups: int = 1024
    correlation_max_events: int = 256
    placeholders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    recheck_interval_ns: int = 1_000_000_000  # how often, at most, a tick stats the content

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], content_dir: str | None) -> SigmaConfig:
        problems = [f"unknown key {k!r}" for k in settings if k not in _LIMITS and k != "placeholders"]
        values: dict[str, Any] = {}
        for key, (low, high) in _LIMITS.items():
            if key not in settings:
                continue
            v = settings[key]
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                problems.append(f"{key}: must be an integer in {low}..{high}, got {v!r}")
            else:
                values[key] = v
        placeholders = _placeholders(settings.get("placeholders", {}), problems)
        if problems:
            raise SettingsError(problems)
        return cls(content_dir=content_dir, placeholders=placeholders, **values)


def _placeholders(table: Any, problems: list[str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(table, Mapping):
        problems.append("placeholders: must be a table of name = [values]")
        return {}
    out = {}
    for name, values in table.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append(f"placeholders.{name}: must be a list of strings")
        else:
            out[str(name)] = tuple(values)
    return out
