"""The IOC engine: indicators of compromise from plain lists and STIX 2.1 bundles.

File hashes (sha256, sha1, md5) deny exec; IPv4/IPv6 addresses and CIDRs and domain names raise a
finding on a connection or a DNS event that names them. It is the file-reputation engine grown: the
sha256 blocklist (`--blocklist`) is one of its formats, and `ringfence.reputation` is this engine under
its old id.

Entry points (group `ringfence.extensions`): `ringfence.ioc` -> `extension`; `ringfence.reputation` ->
`ringfence.engines.reputation:extension` (the same engine, manifest id `ringfence.reputation`).

Content: every file in `ctx.content_dir`, its format by its name: `*.ioc` plain lists (kind inferred per
line), `*.json` STIX 2.1 bundles, any other name the sha256 blocklist format. The agent stages them there
(read-only, swapped atomically), so the engine never opens an operator's path. Findings carry ATT&CK
techniques and tactics: `# attack:` directives in plain lists, `mitre-attack` kill chain phases and
external references in STIX (`_attack.py`).

Errors, raised by `setup` so that a broken configuration stops the extension instead of running empty
(the message is one line, which the SDK hands to the agent):

    IocError
    ├── SettingsError   bad settings (`ctx.settings`); `problems` names every key
    └── ContentError    unusable content; `issues` holds every problem, each with file:line (or STIX id)

On the AUTH path nothing raises: an unreadable file is allowed uncached and counted. Content that breaks
after start-up keeps the last good indicators in force and is reported (`ctx.report_problem`).
"""

from ringfence.engines.ioc._blocklist import (
    Blocklist,
    BlocklistBuilder,
    ParseResult,
    parse_blocklist,
    read_blocklist,
)
from ringfence.engines.ioc._config import CONTENT_BLOCKLIST_NAME, IocConfig
from ringfence.engines.ioc._engine import (
    RULE_PREFIX,
    IocEngine,
    IocStatistics,
    ReputationEngine,
    hash_file,
)
from ringfence.engines.ioc._indicators import Indicator, IndicatorProblem, Kind, infer
from ringfence.engines.ioc._iocset import HashMatch, IocBuilder, IocSet
from ringfence.engines.ioc._issues import (
    ContentError,
    IocError,
    Issue,
    IssueSeverity,
    SettingsError,
)
from ringfence.engines.ioc._load import format_of
from ringfence.engines.ioc._memo import HashMemo, MemoStatistics
from ringfence.engines.ioc._network import AddressSet, DomainSet, NetworkMatch
from ringfence.engines.ioc._stix import StixCounts, parse_stix
from ringfence.engines.ioc._store import KeyMatch, KeySet, KeySetBuilder
from ringfence.engines.ioc._watch import ContentStatistics

extension = IocEngine

__all__ = [
    "CONTENT_BLOCKLIST_NAME",
    "RULE_PREFIX",
    "AddressSet",
    "Blocklist",
    "BlocklistBuilder",
    "ContentError",
    "ContentStatistics",
    "DomainSet",
    "HashMatch",
    "HashMemo",
    "Indicator",
    "IndicatorProblem",
    "IocBuilder",
    "IocConfig",
    "IocEngine",
    "IocError",
    "IocSet",
    "IocStatistics",
    "Issue",
    "IssueSeverity",
    "KeyMatch",
    "KeySet",
    "KeySetBuilder",
    "Kind",
    "MemoStatistics",
    "NetworkMatch",
    "ParseResult",
    "ReputationEngine",
    "SettingsError",
    "StixCounts",
    "extension",
    "format_of",
    "hash_file",
    "infer",
    "parse_blocklist",
    "parse_stix",
    "read_blocklist",
]
