"""ATT&CK techniques and tactics of indicators, for the findings they raise.

Plain lists (`.ioc`): a whole-line comment directive gives the ids of the indicators after it, up to
the next directive (an empty one ends it):

    # attack: T1071.001, T1573 command-and-control
    203.0.113.7        c2 server
    # attack:
    198.51.100.9       no ATT&CK ids

Ids are separated by commas or white space: technique ids (`T1071`, `T1071.001`) and tactics (an id,
`TA0011`, or a short name, `command-and-control`; a name with spaces must be written with `-` or `_`).
STIX 2.1 indicators: `kill_chain_phases` entries whose `kill_chain_name` is `mitre-attack` (the
`phase_name` is the tactic's short name), and `external_references` whose `source_name` is
`mitre-attack` (`external_id` T####[.###], or a TA#### tactic); also those of the `attack-pattern`
objects an `indicates` relationship in the same bundle points the indicator at (how platforms such as
OpenCTI and MISP export the link). An id that is none of these is a warning at its file and line (or
STIX id) and is left out; the indicators still load.
"""

from __future__ import annotations

from collections.abc import Callable

from ringfence.sdk import split_ids, tactic_name, technique_id

Attack = tuple[tuple[str, ...], tuple[str, ...]]  # (techniques, tactics)
NO_ATTACK: Attack = ((), ())
MITRE = "mitre-attack"


def parse_ids(words: list[str], warn: Callable[[str], None]) -> Attack:
    """Techniques and tactics, each once, in the order written; `warn` gets each word that is neither."""
    techniques: list[str] = []
    tactics: list[str] = []
    for word in words:
        technique = technique_id(word)
        tactic = tactic_name(word) if technique is None else None
        if technique is not None:
            techniques.append(technique)
        elif tactic is not None:
            tactics.append(tactic)
        else:
            warn(f"{word!r} is not an ATT&CK technique id (T#### or T####.###) or Enterprise tactic: ignored")
    return tuple(dict.fromkeys(techniques)), tuple(dict.fromkeys(tactics))


def directive_ids(comment: str, warn: Callable[[str], None]) -> Attack | None:
    """The ids of an `attack:` directive (`comment` is the text after `#`), or None if it is none."""
    head, sep, rest = comment.strip().partition(":")
    if not sep or head.strip().lower() != "attack":
        return None
    return parse_ids(split_ids(rest), warn)


def merge(*parts: Attack) -> Attack:
    techniques = tuple(dict.fromkeys(t for p in parts for t in p[0]))
    return techniques, tuple(dict.fromkeys(t for p in parts for t in p[1]))
