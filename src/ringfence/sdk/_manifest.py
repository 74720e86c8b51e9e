"""The manifest: what an extension is, what it subscribes to, and what it asks to be allowed to do."""

from __future__ import annotations

import enum
import re

import msgspec

from ringfence.events import EventKind, FailurePolicy

PROTOCOL_VERSION = 1
"""The wire protocol this SDK speaks. The agent accepts extensions whose version it supports and refuses
the others at the handshake, with a message naming both versions."""

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class Permission(enum.StrEnum):
    FILE_CONTENTS = "file-contents"  # AUTH requests and file.written notices carry a read-only descriptor
    RESPONSE = "response"  # may ask the agent to kill, quarantine, isolate
    NETWORK = "network"  # may open network sockets (denied by the sandbox otherwise)


class AuthParticipation(msgspec.Struct, frozen=True, kw_only=True):
    """Present when the extension takes part in AUTH decisions."""

    kinds: frozenset[EventKind] = frozenset({EventKind.AUTH_EXEC})
    deadline_ms: int = 250  # the agent may cap it lower
    failure: FailurePolicy = FailurePolicy.FAIL_OPEN


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the field."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # unique, lowercase: [a-z0-9._-], up to 63 characters
    vendor: str
    version: str
    subscribes: frozenset[EventKind] = frozenset()
    auth: AuthParticipation | None = None
    permissions: frozenset[Permission] = frozenset()
    content_interface: str | None = None  # the content interface it accepts (name@version), if any
    description: str = ""
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ManifestError(f"manifest id {self.id!r}: must match {_ID.pattern}")
        if not self.vendor.strip():
            raise ManifestError(f"manifest {self.id}: vendor is empty")
        if self.auth is not None:
            if not self.auth.kinds <= {EventKind.AUTH_EXEC, EventKind.AUTH_OPEN}:
                raise ManifestError(f"manifest {self.id}: auth.kinds must be auth.exec and/or auth.open")
            if not 1 <= self.auth.deadline_ms <= 10_000:
                raise ManifestError(f"manifest {self.id}: auth.deadline_ms must be 1..10000")
        if EventKind.AUTH_EXEC in self.subscribes or EventKind.AUTH_OPEN in self.subscribes:
            raise ManifestError(f"manifest {self.id}: subscribe to AUTH through `auth`, not `subscribes`")
        if EventKind.FILE_WRITTEN in self.subscribes and Permission.FILE_CONTENTS not in self.permissions:
            raise ManifestError(
                f"manifest {self.id}: subscribing to file.written needs the file-contents permission "
                "(each notice comes with a descriptor of the file)"
            )
