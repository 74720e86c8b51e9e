"""ATT&CK techniques and tactics of YARA rules, from their metadata and their tags, parsed strictly.

The forms public rule sets use, all accepted (keys and tags in any case):

    meta:
        mitre_attack = "T1059.004"              # also mitre_attack_technique, mitre_att_technique,
        mitre_att_technique = "T1059.004, T1105"  #   attack_technique, mitre_technique, technique
        mitre_att_tactic = "TA0002"             # also mitre_attack_tactic, attack_tactic, mitre_tactic,
        attack_tactic = "execution, Defense Evasion"  #   tactic: an id, short name or name
    rule r : T1059_004 attack_t1105 attack_execution TA0005 { ... }

Several ids in one value are separated by commas or semicolons (and white space, for techniques). A
technique key may also name a tactic id (TA####). A tag counts when it is a technique (`T1059`,
`T1059_004`: a tag cannot hold a dot), a tactic id (`TA0005`) or `attack_` and then either (Sigma's
`attack.t1059.004` / `attack.defense-evasion` spelt as an identifier); `attack_g####`/`attack_s####`
(ATT&CK groups and software) are skipped. A value under one of those keys, or an `attack_` tag, that is
none of these is a load warning naming the rule's file and line, and is left out: the rule still loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ringfence.sdk import split_ids, tactic_name, technique_id

TECHNIQUE_KEYS = frozenset(
    {
        "mitre_attack",
        "mitre_attack_technique",
        "mitre_att_technique",
        "attack_technique",
        "mitre_technique",
        "technique",
    }
)
TACTIC_KEYS = frozenset(
    {"mitre_attack_tactic", "mitre_att_tactic", "attack_tactic", "mitre_tactic", "tactic"}
)
_GROUP_OR_SOFTWARE = re.compile(r"[gs]\d{4}", re.IGNORECASE)

Warn = Callable[[str | None, str], None]  # (metadata key or None for a tag, message)


@dataclass(frozen=True, slots=True)
class RuleAttack:
    techniques: tuple[str, ...] = ()
    tactics: tuple[str, ...] = ()


NO_ATTACK = RuleAttack()


def rule_attack(tags: tuple[str, ...], metadata: tuple[tuple[str, object], ...], warn: Warn) -> RuleAttack:
    """The rule's ATT&CK ids, in the order written, each once; `warn` gets every value left out."""
    techniques: list[str] = []
    tactics: list[str] = []
    for key, value in metadata:
        name = key.lower()
        if name not in TECHNIQUE_KEYS and name not in TACTIC_KEYS:
            continue
        if not isinstance(value, str):
            warn(key, f"{key} must be a text value with ATT&CK ids, got {value!r}: ignored")
            continue
        if name in TECHNIQUE_KEYS:
            _techniques_of(key, value, techniques, tactics, warn)
        else:
            _tactics_of(key, value, tactics, warn)
    for tag in tags:
        _tag(tag, techniques, tactics, warn)
    if not techniques and not tactics:
        return NO_ATTACK
    return RuleAttack(tuple(dict.fromkeys(techniques)), tuple(dict.fromkeys(tactics)))


def _techniques_of(key: str, value: str, techniques: list[str], tactics: list[str], warn: Warn) -> None:
    for part in split_ids(value):
        technique = technique_id(part)
        tactic = tactic_name(part) if technique is None and part.upper().startswith("TA") else None
        if technique is not None:
            techniques.append(technique)
        elif tactic is not None:
            tactics.append(tactic)
        else:
            warn(key, f"{key}: {part!r} is not an ATT&CK technique id (T#### or T####.###): ignored")


def _tactics_of(key: str, value: str, tactics: list[str], warn: Warn) -> None:
    for part in split_ids(value, spaces=False):
        tactic = tactic_name(part)
        if tactic is None:
            warn(
                key,
                f"{key}: {part!r} is not an ATT&CK Enterprise tactic (an id, short name or name): ignored",
            )
        else:
            tactics.append(tactic)


def _tag(tag: str, techniques: list[str], tactics: list[str], warn: Warn) -> None:
    body = tag[7:] if tag.lower().startswith("attack_") else None
    word = body if body is not None else tag
    technique = technique_id(word)
    tactic = (
        tactic_name(word)
        if technique is None and (body is not None or word.upper().startswith("TA"))
        else None
    )
    if technique is not None:
        techniques.append(technique)
    elif tactic is not None:
        tactics.append(tactic)
    elif body is not None and not _GROUP_OR_SOFTWARE.fullmatch(body):
        warn(None, f"tag {tag}: not an ATT&CK technique or tactic: ignored")


_RULE_DECL = re.compile(r"^[ \t]*(?:(?:private|global)[ \t]+)*rule[ \t]+([A-Za-z_]\w*)", re.MULTILINE)


class RuleLocator:
    """Where a rule, or a metadata key in it, is written: yara-x's compiled rules keep no source lines."""

    def __init__(self, sources: list[tuple[str, str]]) -> None:
        self._rules: dict[str, tuple[str, str, int, int]] = {}  # name -> (origin, text, start, end)
        for origin, text in sources:
            decls = list(_RULE_DECL.finditer(text))
            for i, m in enumerate(decls):
                end = decls[i + 1].start() if i + 1 < len(decls) else len(text)
                self._rules.setdefault(m.group(1), (origin, text, m.start(), end))

    def where(self, rule: str, key: str | None) -> tuple[str, int | None]:
        found = self._rules.get(rule)
        if found is None:
            return "-", None
        origin, text, start, end = found
        at = start
        if key is not None:
            m = re.compile(rf"\b{re.escape(key)}\s*=").search(text, start, end)
            at = m.start() if m else start
        return origin, text.count("\n", 0, at) + 1
