"""The schema contract (issue 8): what an engine declares its content may use, read by the tooling.

An engine that takes content overrides `Extension.content_schema()` (a classmethod: nothing is set up,
no content is read) and returns a `ContentSchema`: the interface version its content must name (the
manifest's `content_interface`), the event kinds its content is matched on, the content files it reads,
and, per logsource (or whatever the engine calls the groups its content names), the fields it really
supplies with their types. The engine derives it from the tables its extraction uses, so it cannot drift
from what runs. `ringfence content validate` refuses a package that names another interface, a field
the engine does not supply, or compares a value of the wrong type; the agent refuses it again before
it activates it. `ringfence content schema ENGINE` prints it as JSON.
"""

from __future__ import annotations

import msgspec

FIELD_TYPES = ("string", "integer")


class SchemaField(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # as content names it (a Sigma field, an indicator kind); in `patterns`: a regex
    type: str  # one of FIELD_TYPES
    source: str  # where the engine reads it from (the record field), for people


class ContentSchema(msgspec.Struct, frozen=True, kw_only=True):
    """The interface an engine's content may use, under `interface` (name@version)."""

    interface: str
    kinds: tuple[str, ...] = ()  # event kinds (EventKind values) the content is matched on
    files: tuple[str, ...] = ()  # the suffixes of the content files the engine reads
    logsources: dict[str, tuple[SchemaField, ...]] = {}  # per logsource: the fields really supplied
    waiting: tuple[str, ...] = ()  # logsources whose content loads but waits for an event kind
    patterns: dict[str, tuple[SchemaField, ...]] = {}  # fields named by a regex (auditd's a<N>)
    notes: str = ""  # what else the contract says, in words
