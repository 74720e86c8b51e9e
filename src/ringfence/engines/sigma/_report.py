"""What would load from a path, and every problem: the text a `rules check` command prints.

    python -m ringfence.engines.sigma check PATH...

Exit status 0 when no rule has an error (warnings allowed), 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ringfence.engines.sigma._fields import mapping_table
from ringfence.engines.sigma._load import load_files, rule_files
from ringfence.engines.sigma._ruleset import RuleSet


def load_paths(paths: Sequence[str]) -> RuleSet:
    """Files and directories (searched for .yml/.yaml) as one rule set; issues name the given paths."""
    files: list[tuple[str, str]] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend((os.path.join(path, n), os.path.join(path, n)) for n in rule_files(path))
        else:
            files.append((path, path))
    return load_files(files)


def check_report(rules: RuleSet) -> str:
    """Counts per logsource (active and waiting), correlations, then every issue, one a line."""
    lines = [f"{rules.files} files, {rules.loaded} rules loaded, {len(rules.errors)} errors"]
    for source, index in sorted(rules.indexes.items()):
        lines.append(f"  active   {source}: {index.rule_count}")
    for name, count in sorted(rules.waiting.items()):
        lines.append(f"  waiting  {name}: {count} (no event kind for this logsource yet)")
    if rules.correlations:
        lines.append(f"  active   correlations: {len(rules.correlations)}")
    if rules.filters:
        lines.append(f"  filters  {rules.filters} (applied to the rules they name)")
    lines.extend(str(issue) for issue in rules.issues)
    return "\n".join(lines)


def fields_report() -> str:
    """The field mapping table, one field a line."""
    return "\n".join(f"{source:20} {name:20} {where}" for source, name, where in mapping_table())


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 1 and argv[0] == "fields":
        print(fields_report())  # noqa: T201 (a command's output)
        return 0
    if len(argv) < 2 or argv[0] != "check":
        print("usage: python -m ringfence.engines.sigma check PATH... | fields")  # noqa: T201
        return 2
    rules = load_paths(argv[1:])
    print(check_report(rules))  # noqa: T201 (a command's output)
    return 1 if rules.errors else 0
