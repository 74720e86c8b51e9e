"""YARA: scan each executable at exec with YARA rules (yara-x), deny on a match of a rule tagged `block`;
scan files closed after writing under the agent's close-write paths, and report their matches.

Entry point: `extension` (group `ringfence.extensions`, name `ringfence.yara`; not enabled by default).

Content: every `.yar`/`.yara` file in `ctx.content_dir`, compiled together at setup and again (on a tick,
about once a second) when the agent stages a new version. The engine never opens an operator's path.

At exec: the file is read through the descriptor the agent passed (never by path) and scanned. A match
of a rule tagged `block` is a DENY with a HIGH finding naming the rule, its tags and metadata; any other
match is a finding (MEDIUM, or the rule's `severity` metadata if higher) and an ALLOW. A file over
`max_scan_bytes`, a scan over `scan_timeout_s`, or an unreadable descriptor is an ALLOW that the kernel
may not cache, counted. Complete results are remembered per file version (see `_memo.py`).

On close-write (`on_file`, the `file.written` notices the agent sends for its `close_write_paths`, each
with the kernel's read-only descriptor of the file): the file is read and scanned once per content
version (the memo, keyed by its sha256, which the exec of the same file then hits); every match is a
finding naming the file, the rule and the writer. A `block` rule cannot block what is written already:
its finding is HIGH and the file's exec is denied as usual; nothing is quarantined.

Findings carry the rules' ATT&CK techniques and tactics, from metadata and tags (`_attack.py`).

Errors, raised by `setup` so that a broken configuration stops the extension instead of running without
rules (the message is one line, which the SDK hands to the agent):

    YaraError
    ├── SettingsError    bad settings (`ctx.settings`); `problems` names every key
    └── RulesError       rules that do not compile; `issues` holds every problem, each with file:line

On the AUTH path nothing raises. Rules that break after start-up keep the last good rules in force and
are reported (`ctx.report_problem`).
"""

from ringfence.engines.yara._config import SettingsError, YaraConfig, YaraError
from ringfence.engines.yara._engine import MAX_FINDINGS_PER_FILE, RULE_PREFIX, YaraEngine, YaraStatistics
from ringfence.engines.yara._memo import MemoStatistics
from ringfence.engines.yara._rules import BLOCK_TAG, Issue, IssueSeverity, RulesError, RuleSet
from ringfence.engines.yara._watch import RulesStatistics

extension = YaraEngine

__all__ = [
    "BLOCK_TAG",
    "MAX_FINDINGS_PER_FILE",
    "RULE_PREFIX",
    "Issue",
    "IssueSeverity",
    "MemoStatistics",
    "RuleSet",
    "RulesError",
    "RulesStatistics",
    "SettingsError",
    "YaraConfig",
    "YaraEngine",
    "YaraError",
    "YaraStatistics",
    "extension",
]
