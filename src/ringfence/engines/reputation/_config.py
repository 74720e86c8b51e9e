"""The engine's configuration: its table in the agent config, given to it as `ctx.settings`.

    [extensions.config."ringfence.reputation"]
    memo_entries = 4096                          # optional, 1..1_000_000

The blocklists themselves are content: every file in the extension's content directory (`ctx.content_dir`),
which the agent fills from `[extensions.content."ringfence.reputation"]` or `--blocklist`. The engine
never opens a path the operator typed, so the operator's file permissions cannot switch it off. Unknown
keys are errors: a misspelt key would otherwise switch protection off without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ringfence.engines.reputation._blocklist import ReputationError

CONTENT_BLOCKLIST_NAME = "blocklist.txt"  # the name `--blocklist` gives its file in the content directory
_MAX_MEMO_ENTRIES = 1_000_000
_DEFAULT_MEMO_ENTRIES = 4096
_NO_PATHS = (
    "blocklist: the engine reads no operator path any more; name the file in "
    '[extensions.content."ringfence.reputation"] as "blocklist.txt" = "/path" (the agent hands it over)'
)


class SettingsError(ReputationError):
    """Settings that cannot be used. `problems` lists every one, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("ringfence.reputation settings: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    content_dir: str | None = None  # the agent's read-only copy of the blocklists; None: no list
    memo_entries: int = _DEFAULT_MEMO_ENTRIES
    recheck_interval_ns: int = 1_000_000_000  # how often, at most, a tick stats the content
    max_blocklist_bytes: int = 256 << 20  # per file

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], content_dir: str | None) -> ReputationConfig:
        """Validate `settings` (every problem reported at once) and build the config."""
        problems = [
            _NO_PATHS if key == "blocklist" else f"unknown key {key!r}"
            for key in settings
            if key != "memo_entries"
        ]
        memo = settings.get("memo_entries", _DEFAULT_MEMO_ENTRIES)
        if isinstance(memo, bool) or not isinstance(memo, int) or not 1 <= memo <= _MAX_MEMO_ENTRIES:
            problems.append(f"memo_entries: must be an integer in 1..{_MAX_MEMO_ENTRIES}, got {memo!r}")
        if problems:
            raise SettingsError(problems)
        return cls(content_dir=content_dir, memo_entries=memo)
