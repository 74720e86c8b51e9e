"""MITRE ATT&CK ids as findings carry them: technique ids and the Enterprise tactics' short names.

One strict parser for every engine, so that a rule's `T1059.004`, `t1059_004` (a YARA tag cannot hold a
dot) or a tactic written as `TA0005`, `Defense Evasion` or `defense_evasion` all become the same value:
`T1059.004` and `defense-evasion`, the forms Sigma's tags use and the OCSF codec maps. Anything else is
None, and the engine reports it where it read it (file and line) instead of passing a bad id on. Both
forms fit the wire's `AttackId` pattern (sdk/_protocol.py).
"""

from __future__ import annotations

import re

# ATT&CK Enterprise tactics: short name -> (id, name).
TACTICS: dict[str, tuple[str, str]] = {
    "reconnaissance": ("TA0043", "Reconnaissance"),
    "resource-development": ("TA0042", "Resource Development"),
    "initial-access": ("TA0001", "Initial Access"),
    "execution": ("TA0002", "Execution"),
    "persistence": ("TA0003", "Persistence"),
    "privilege-escalation": ("TA0004", "Privilege Escalation"),
    "defense-evasion": ("TA0005", "Defense Evasion"),
    "credential-access": ("TA0006", "Credential Access"),
    "discovery": ("TA0007", "Discovery"),
    "lateral-movement": ("TA0008", "Lateral Movement"),
    "collection": ("TA0009", "Collection"),
    "command-and-control": ("TA0011", "Command and Control"),
    "exfiltration": ("TA0010", "Exfiltration"),
    "impact": ("TA0040", "Impact"),
}
_BY_TACTIC_ID = {uid: short for short, (uid, _) in TACTICS.items()}
_TECHNIQUE = re.compile(r"[Tt](\d{4})(?:[._](\d{3}))?")


def technique_id(text: str) -> str | None:
    """`T1059`, `t1059.004`, `T1059_004` -> `T1059` / `T1059.004`; None for anything else."""
    m = _TECHNIQUE.fullmatch(text.strip())
    if m is None:
        return None
    return f"T{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")


def tactic_name(text: str) -> str | None:
    """An Enterprise tactic's short name from its id (`TA0005`), short name or name, in any case, with
    `-`, `_` or spaces between words; None for anything else."""
    word = text.strip()
    by_id = _BY_TACTIC_ID.get(word.upper())
    if by_id is not None:
        return by_id
    short = re.sub(r"[\s_]+", "-", word.lower())
    return short if short in TACTICS else None


def split_ids(text: str, *, spaces: bool = True) -> list[str]:
    """The ids a metadata value lists: separated by commas or semicolons, and by white space unless
    `spaces` is False (a tactic's name, `Command and Control`, has spaces in it)."""
    return [part.strip() for part in re.split(r"[,;\s]+" if spaces else r"[,;]+", text) if part.strip()]
