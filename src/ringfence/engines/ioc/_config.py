"""The engine's configuration: its table in the agent config, given to it as `ctx.settings`.

    [extensions.config."ringfence.ioc"]
    memo_entries = 4096          # optional, 1..1_000_000: files whose digests are remembered
    dedup_window_s = 60          # optional, 0..86400: repeats of a network finding summed up per window

The lists themselves are content: every file in the extension's content directory (`ctx.content_dir`),
which the agent fills from `[extensions.content."ringfence.ioc"]` (or `--blocklist`). The engine never
opens a path the operator typed, so the operator's file permissions cannot switch it off. Unknown keys
are errors: a misspelt key would otherwise switch protection off without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ringfence.engines.ioc._issues import SettingsError

CONTENT_BLOCKLIST_NAME = "blocklist.txt"  # the name `--blocklist` gives its file in the content directory
_MAX_MEMO_ENTRIES = 1_000_000
_DEFAULT_MEMO_ENTRIES = 4096
_MAX_DEDUP_WINDOW_S = 86_400
_DEFAULT_DEDUP_WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class IocConfig:
    content_dir: str | None = None  # the agent's read-only copy of the lists; None: no list
    memo_entries: int = _DEFAULT_MEMO_ENTRIES
    dedup_window_s: int = _DEFAULT_DEDUP_WINDOW_S
    recheck_interval_ns: int = 1_000_000_000  # how often, at most, a tick stats the content
    max_file_bytes: int = 256 << 20  # per file
    max_dedup_keys: int = 4096  # open dedup windows; the oldest is closed early past it

    @classmethod
    def from_settings(cls, ext_id: str, settings: Mapping[str, Any], content_dir: str | None) -> IocConfig:
        """Validate `settings` (every problem reported at once) and build the config."""
        problems = [
            _unknown(ext_id, key) for key in settings if key not in ("memo_entries", "dedup_window_s")
        ]
        memo = settings.get("memo_entries", _DEFAULT_MEMO_ENTRIES)
        if not _int_in(memo, 1, _MAX_MEMO_ENTRIES):
            problems.append(f"memo_entries: must be an integer in 1..{_MAX_MEMO_ENTRIES}, got {memo!r}")
        window = settings.get("dedup_window_s", _DEFAULT_DEDUP_WINDOW_S)
        if not _int_in(window, 0, _MAX_DEDUP_WINDOW_S):
            problems.append(f"dedup_window_s: must be an integer in 0..{_MAX_DEDUP_WINDOW_S}, got {window!r}")
        if problems:
            raise SettingsError(ext_id, problems)
        return cls(content_dir=content_dir, memo_entries=memo, dedup_window_s=window)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _unknown(ext_id: str, key: str) -> str:
    if key == "blocklist":
        return (
            "blocklist: the engine reads no operator path any more; name the file in "
            f'[extensions.content."{ext_id}"] as "blocklist.txt" = "/path" (the agent hands it over)'
        )
    return f"unknown key {key!r}"
