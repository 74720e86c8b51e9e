"""The IOC package's public names, and the reputation package's old names, pinned: a name dropped or
added by accident shows here."""

from __future__ import annotations

import ringfence.engines.ioc as ioc
import ringfence.engines.reputation as reputation


def test_ioc_exports_exactly_these_names() -> None:
    assert sorted(ioc.__all__) == sorted(
        [
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
    )
    assert all(hasattr(ioc, name) for name in ioc.__all__)


def test_reputation_keeps_its_old_names_as_the_ioc_engines() -> None:
    assert reputation.extension is ioc.ReputationEngine
    assert reputation.BlocklistError is ioc.ContentError
    assert reputation.ReputationError is ioc.IocError
    assert issubclass(ioc.ContentError, ioc.IocError) and issubclass(ioc.SettingsError, ioc.IocError)
    assert all(hasattr(reputation, name) for name in reputation.__all__)


def test_format_chosen_by_the_file_name() -> None:
    assert [ioc.format_of(n) for n in ("a.ioc", "B.IOC", "x.json", "blocklist.txt", "list")] == [
        "ioc",
        "ioc",
        "stix",
        "blocklist",
        "blocklist",
    ]
