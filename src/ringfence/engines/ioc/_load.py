"""One content file into the builder, its format chosen by its name:

*.ioc    a plain IOC list (`_plain.py`): kinds inferred per line
*.json   a STIX 2.1 bundle (`_stix.py`)
others   the sha256 blocklist format (`_blocklist.py`; `--blocklist` names its file blocklist.txt)
"""

from __future__ import annotations

import logging

from ringfence.engines.ioc._blocklist import parse_lines
from ringfence.engines.ioc._indicators import Kind
from ringfence.engines.ioc._iocset import IocBuilder
from ringfence.engines.ioc._issues import Issue
from ringfence.engines.ioc._plain import parse_ioc_lines
from ringfence.engines.ioc._read import read_bytes, read_lines
from ringfence.engines.ioc._stix import parse_stix

log = logging.getLogger(__name__)


def format_of(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".ioc"):
        return "ioc"
    if lower.endswith(".json"):
        return "stix"
    return "blocklist"


def read_file(
    builder: IocBuilder, path: str, source: str, *, max_bytes: int, issues: list[Issue], now_s: float
) -> None:
    """Parse the file at `path` into `builder`; issues name `source` (the path the operator knows)."""
    kind = format_of(source)
    if kind == "stix":
        data = read_bytes(path, source, max_bytes=max_bytes, issues=issues)
        if data is not None:
            counts = parse_stix(builder, data, source, issues, now_s=now_s)
            log.info(
                "%s: %d of %d indicators loaded (%d revoked, %d expired, %d unsupported)",
                source,
                counts.loaded,
                counts.indicators,
                counts.revoked,
                counts.expired,
                counts.unsupported,
            )
        return
    if kind == "ioc":
        read_lines(
            path,
            source,
            max_bytes=max_bytes,
            issues=issues,
            parse=lambda lines: parse_ioc_lines(builder, lines, source, issues),
        )
        return
    sha256 = builder.hashes[Kind.SHA256]
    read_lines(
        path,
        source,
        max_bytes=max_bytes,
        issues=issues,
        parse=lambda lines: parse_lines(sha256, lines, source, issues),
    )
