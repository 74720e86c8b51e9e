"""The file-reputation engine, folded into the IOC engine (`ringfence.engines.ioc`).

Entry point `ringfence.reputation` -> `extension`: the IOC engine under the id `ringfence.reputation`, so
configs, `[extensions.content."ringfence.reputation"]` tables, `--blocklist` and status views that name it
keep working. It is one engine: enable `ringfence.reputation` or `ringfence.ioc`, not both (the agent
refuses a config that enables both). The names below are the reputation API of before, kept as aliases.
"""

from ringfence.engines.ioc import (
    CONTENT_BLOCKLIST_NAME,
    Blocklist,
    BlocklistBuilder,
    ContentError,
    HashMemo,
    IocError,
    Issue,
    IssueSeverity,
    KeyMatch,
    MemoStatistics,
    ParseResult,
    ReputationEngine,
    SettingsError,
    parse_blocklist,
    read_blocklist,
)

BlocklistError = ContentError
ReputationError = IocError
BlocklistMatch = KeyMatch
extension = ReputationEngine

__all__ = [
    "CONTENT_BLOCKLIST_NAME",
    "Blocklist",
    "BlocklistBuilder",
    "BlocklistError",
    "BlocklistMatch",
    "HashMemo",
    "Issue",
    "IssueSeverity",
    "MemoStatistics",
    "ParseResult",
    "ReputationEngine",
    "ReputationError",
    "SettingsError",
    "extension",
    "parse_blocklist",
    "read_blocklist",
]
