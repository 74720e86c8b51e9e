"""Response actions as data: what an extension may ask the agent to do, and what came of it.

They live here, at the bottom, because both sides speak them: the SDK sends `ActionRequest`s and the
agent's `response/` layer carries them out.
"""

from __future__ import annotations

import enum

import msgspec


class ActionKind(enum.StrEnum):
    KILL = "kill"  # a process, named by pid AND start time so that a reused pid is never hit
    QUARANTINE = "quarantine"  # a file, moved into the root-only vault with its metadata
    ISOLATE = "isolate"  # the host's network: loopback and the management addresses only


class ActionRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: ActionKind
    pid: int | None = None
    start_time_ns: int | None = None  # the process's start time as ProcessRef.start_time_ns gives it
    path: str | None = None
    reason: str = ""
    requested_by: str = ""  # the extension id; set by the agent, never trusted from the extension


class ActionResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: ActionKind
    ok: bool
    message: str
    undo: str | None = None  # how to undo it: a vault id, "isolate --undo", ...
