"""File reputation: deny the exec of files whose sha256 is on a blocklist.

Entry point: `extension` (group `ringfence.extensions`, name `reputation`).

Content: every file in `ctx.content_dir` is a blocklist; the agent stages them there (read-only, swapped
atomically), so the engine never opens an operator's path.

Errors, raised by `setup` so that a broken configuration stops the extension instead of running empty
(the message is one line, which the SDK hands to the agent):

    ReputationError
    ├── SettingsError    bad settings (`ctx.settings`); `problems` names every key
    └── BlocklistError   an unusable blocklist file; `issues` holds every problem, each with file:line

On the AUTH path nothing raises: an unreadable file is allowed uncached and counted. Content that breaks
after start-up keeps the last good list in force and is reported (`ctx.report_problem`).
"""

from ringfence.engines.reputation._blocklist import (
    Blocklist,
    BlocklistBuilder,
    BlocklistError,
    BlocklistMatch,
    Issue,
    IssueSeverity,
    ParseResult,
    ReputationError,
    parse_blocklist,
    read_blocklist,
)
from ringfence.engines.reputation._config import CONTENT_BLOCKLIST_NAME, ReputationConfig, SettingsError
from ringfence.engines.reputation._engine import RULE, ReputationEngine, ReputationStatistics
from ringfence.engines.reputation._memo import HashMemo, MemoStatistics
from ringfence.engines.reputation._watch import BlocklistStatistics

extension = ReputationEngine

__all__ = [
    "CONTENT_BLOCKLIST_NAME",
    "RULE",
    "Blocklist",
    "BlocklistBuilder",
    "BlocklistError",
    "BlocklistMatch",
    "BlocklistStatistics",
    "HashMemo",
    "Issue",
    "IssueSeverity",
    "MemoStatistics",
    "ParseResult",
    "ReputationConfig",
    "ReputationEngine",
    "ReputationError",
    "ReputationStatistics",
    "SettingsError",
    "extension",
    "parse_blocklist",
    "read_blocklist",
]
