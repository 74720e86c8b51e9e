"""The engine's configuration: its table in the agent config, given to it as `ctx.settings`.

    [extensions.config."ringfence.reputation"]
    blocklist = "/etc/ringfence/blocklist.txt"   # optional, absolute path
    memo_entries = 4096                          # optional, 1..1_000_000

A `blocklist.txt` in the extension's content directory is used too, when there is one. Unknown keys are
errors: a misspelt `blocklist` key would otherwise switch protection off without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringfence.engines.reputation._blocklist import ReputationError

CONTENT_BLOCKLIST_NAME = "blocklist.txt"
_MAX_MEMO_ENTRIES = 1_000_000
_DEFAULT_MEMO_ENTRIES = 4096


class SettingsError(ReputationError):
    """Settings that cannot be used. `problems` lists every one, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("ringfence.reputation settings: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    blocklist_path: str | None = None  # from settings: must exist
    content_blocklist_path: str | None = None  # from the content directory: may come and go
    memo_entries: int = _DEFAULT_MEMO_ENTRIES
    recheck_interval_ns: int = 1_000_000_000  # how often, at most, the AUTH path stats the blocklists
    max_blocklist_bytes: int = 128 << 20

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], content_dir: str | None) -> ReputationConfig:
        """Validate `settings` (every problem reported at once) and build the config."""
        problems = [f"unknown key {key!r}" for key in settings if key not in {"blocklist", "memo_entries"}]
        path = settings.get("blocklist")
        if path is not None and not (isinstance(path, str) and Path(path).is_absolute()):
            problems.append(f"blocklist: must be an absolute path string, got {path!r}")
        memo = settings.get("memo_entries", _DEFAULT_MEMO_ENTRIES)
        if isinstance(memo, bool) or not isinstance(memo, int) or not 1 <= memo <= _MAX_MEMO_ENTRIES:
            problems.append(f"memo_entries: must be an integer in 1..{_MAX_MEMO_ENTRIES}, got {memo!r}")
        if problems:
            raise SettingsError(problems)
        content = str(Path(content_dir, CONTENT_BLOCKLIST_NAME)) if content_dir else None
        return cls(blocklist_path=path, content_blocklist_path=content, memo_entries=memo)
