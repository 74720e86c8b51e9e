"""The Sigma engine: SigmaHQ-style rules matched on the agent's process, file, network, raw audit, DNS
and log events.

Entry point: `extension` (group `ringfence.extensions`, name `ringfence.sigma`).

Pipeline, one module each: `_load` parses rule files with pySigma (every issue collected, with file,
line and rule id), `_build` compiles each rule (`_compile`: its condition as a tree over atoms) and
indexes the rules of each logsource (`_matcher`: literals in Aho-Corasick, regexes in an re2 set, each
rule one predicate from `_predicate`), `_ruleset` holds the result, `_correlate` runs correlation rules
over bounded sliding windows, `_engine` is the extension. `_fields` is the one table from Sigma field
names to record fields; it drives extraction, the load-time schema check and the content schema.

Content: every `.yml`/`.yaml` file under `ctx.content_dir` (the agent stages them there; the engine
never opens an operator's path).

Errors:

    SigmaEngineError
    ├── SettingsError   bad settings (`ctx.settings`); `problems` names every key
    └── RulesError      rule files exist and not one loads; `issues` holds every problem
    CompileError        (internal) one rule this engine cannot run; becomes an `Issue` naming the rule

On the event path nothing raises: a missing field is absent. A new content version in which no rule
loads keeps the rules in force and is reported (`ctx.report_problem`).
"""

from ringfence.engines.sigma._compile import CompileError
from ringfence.engines.sigma._config import SettingsError, SigmaConfig
from ringfence.engines.sigma._correlate import Correlation, CorrelationStatistics, Correlator
from ringfence.engines.sigma._engine import CONTENT_INTERFACE, SigmaEngine, SigmaStatistics, describe
from ringfence.engines.sigma._fields import (
    LOGSOURCES,
    WAITING,
    Logsource,
    content_schema,
    logsources_of,
    mapping_table,
)
from ringfence.engines.sigma._load import load_directory, load_files, rule_files
from ringfence.engines.sigma._report import check_report, load_paths
from ringfence.engines.sigma._ruleset import (
    Issue,
    IssueSeverity,
    RuleInfo,
    RulesError,
    RuleSet,
    SigmaEngineError,
)
from ringfence.sdk import ContentSchema, SchemaField

extension = SigmaEngine

__all__ = [
    "CONTENT_INTERFACE",
    "LOGSOURCES",
    "WAITING",
    "CompileError",
    "ContentSchema",
    "Correlation",
    "CorrelationStatistics",
    "Correlator",
    "Issue",
    "IssueSeverity",
    "Logsource",
    "RuleInfo",
    "RuleSet",
    "RulesError",
    "SchemaField",
    "SettingsError",
    "SigmaConfig",
    "SigmaEngine",
    "SigmaEngineError",
    "SigmaStatistics",
    "check_report",
    "content_schema",
    "describe",
    "extension",
    "load_directory",
    "load_files",
    "load_paths",
    "logsources_of",
    "mapping_table",
    "rule_files",
]
