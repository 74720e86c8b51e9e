"""Plain IOC lists (`.ioc`): one indicator a line, its kind inferred, an optional label, `#` comments.

    # whole-line comment
    44d88612fea8a8f36de82e1278abb02f          eicar (md5)
    3395856ce81f2b7382dee72602f798b642f14140  eicar (sha1)
    203.0.113.7                               c2 server
    198.51.100.0/24
    2001:db8:dead::/48
    evil.example                              # this name only
    *.evil.example                            # every name below it
    # attack: T1071.001, command-and-control  (applies to the lines after it: see _attack.py)

Indicators after an `# attack:` directive are stored under the source `<file> (attack line N)`, so that
their findings carry its ATT&CK ids and say where they came from. The kind of each word follows the
rules in `_indicators.py`. A line whose kind cannot be inferred, or
that is a bad indicator of its kind, is an error at file:line, and the file is rejected whole (every bad
line reported at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from ringfence.engines.ioc._attack import directive_ids
from ringfence.engines.ioc._indicators import IndicatorProblem, clean_label, infer
from ringfence.engines.ioc._iocset import IocBuilder
from ringfence.engines.ioc._issues import Issue, error, warning


def parse_ioc_lines(builder: IocBuilder, lines: Iterable[bytes], source: str, issues: list[Issue]) -> None:
    section = source  # where the lines' indicators are stored: the file, or the file after a directive
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            issues.append(error(source, number, f"not UTF-8 (byte {e.start + 1})"))
            continue
        if text.lstrip().startswith("#"):
            ids = directive_ids(text.lstrip()[1:], partial(_warn, issues, source, number))
            if ids is not None:
                section = f"{source} (attack line {number})" if ids[0] or ids[1] else source
                builder.attack(section, ids)
            continue
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split(maxsplit=1)
        try:
            indicator = infer(fields[0])
        except IndicatorProblem as e:
            issues.append(error(source, number, str(e)))
            continue
        builder.add(indicator, clean_label(fields[1].strip()) if len(fields) == 2 else None, section, number)


def _warn(issues: list[Issue], source: str, line: int, message: str) -> None:
    issues.append(warning(source, line, message))
