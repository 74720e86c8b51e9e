"""What an extension author writes: a subclass of `Extension` with a `manifest` and handlers.

Contract, per entry point (who calls it, on which thread, who owns what):
- `setup(ctx)`: required to exist (the default does nothing). Called once, before any event, on the
  extension's main thread. `ctx` stays valid for the life of the process.
- `on_event(event)`: optional. Called on the main thread, one event at a time, for each kind in
  `manifest.subscribes`. The event is immutable and the extension may keep it.
- `on_auth(request, file)`: required when `manifest.auth` is set. Called on the main thread; must return
  an `AuthAnswer` (use `allow()` / `deny()`). The agent answers the kernel by itself at the deadline,
  by the declared failure policy, if this is late: a late answer is discarded and counted. `file` is a
  read-only handle owned by the SDK and closed after `on_auth` returns; never by path, so what is checked
  is exactly what runs.
- `on_file(notice, file)`: required when `manifest.subscribes` holds `file.written` (which needs the
  `file-contents` permission). Called on the main thread for a file just closed after writing under a
  path the operator chose (`sensors.close_write_paths`); `file` is a read-only handle of that file (the
  kernel's own open, never a lookup by path), owned by the SDK and closed after `on_file` returns. It
  is after the fact: nothing waits for it, and a notice the extension cannot take in time is dropped and
  counted (agent side `files_dropped`, SDK side `files_dropped` in its counters).
- `on_tick()`: optional, called on the main thread about once a second (between other handlers), for
  periodic work such as noticing that content changed on disk.
- `teardown()`: optional, called once at a clean shutdown.
- `content_schema()` (a classmethod): what the extension's content may use, for the tooling
  (`ringfence content validate`, `content schema`) and the agent's check before it activates a package.
Handlers run one at a time: no locking is needed inside an extension.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

from ringfence.events import (
    ActionRequest,
    AuthAnswer,
    AuthRequest,
    Event,
    FileWritten,
    ProcessRef,
    Severity,
    Verdict,
)
from ringfence.sdk._manifest import Manifest
from ringfence.sdk._schema import ContentSchema


def allow(*, cacheable: bool = True) -> AuthAnswer:
    """ALLOW. `cacheable`: the kernel may skip asking again about this file until it is written."""
    return AuthAnswer(Verdict.ALLOW, cacheable=cacheable)


def deny(reason: str) -> AuthAnswer:
    """DENY, never cached: the next exec of the file is asked about again."""
    return AuthAnswer(Verdict.DENY, cacheable=False, reason=reason)


class AuthFile:
    """A read-only view of the file an AUTH request (or a file.written notice) is about, through the
    descriptor the agent passed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes from the start, in chunks (pread: the shared offset is never moved)."""
        offset = 0
        while True:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


class Context(Protocol):
    """What the runtime gives an extension. All calls are non-blocking; none raises on a full queue
    (a finding or action request over the agent's rate limit is dropped and counted by the agent)."""

    @property
    def log(self) -> logging.Logger: ...

    @property
    def settings(self) -> Mapping[str, Any]:
        """This extension's table from the agent config (`[extensions.<id>]`), validated as TOML values."""
        ...

    @property
    def content_dir(self) -> str | None:
        """The directory of the extension's active content, readable in the sandbox, if any: read-only
        copies the agent made of the operator's files (`[extensions.content."<id>"]`), swapped whole
        when they change. Resolve it (os.path.realpath) once per load to read one version; name files
        as `content_dir/<name>` in errors, and the agent shows the operator's own path instead."""
        ...

    def emit_finding(
        self,
        title: str,
        severity: Severity,
        *,
        rule: str | None = None,
        description: str | None = None,
        process: ProcessRef | None = None,
        file_path: str | None = None,
        file_sha256: str | None = None,
        action: str | None = None,
        related_event: str | None = None,
        techniques: tuple[str, ...] = (),
        tactics: tuple[str, ...] = (),
    ) -> None: ...

    def invalidate_verdicts(self, reason: str) -> None:
        """Say that verdicts given so far may be wrong now (new content, a reloaded list): the agent
        forgets every cached ALLOW, so each file is asked about again. Needs AUTH participation; the agent
        honours it at most once a second per extension."""
        ...

    def request_action(self, request: ActionRequest) -> None:
        """Ask the agent to act (needs the `response` permission); the result comes to `on_action_result`."""
        ...

    def report_problem(self, message: str | None) -> None:
        """Say in one line what is wrong while the extension goes on (new content rejected, the last good
        in force), or None once it is fixed. The agent shows it as this extension's `last_error`."""
        ...


class Extension:
    manifest: ClassVar[Manifest]

    @classmethod
    def content_schema(cls) -> ContentSchema | None:
        """The interface this engine's content may use (the schema contract, `sdk/_schema.py`), or None
        for an extension that takes no content. A classmethod: the tooling reads it without a setup,
        in the sandbox. Its `interface` is the manifest's `content_interface`."""
        return None

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_event(self, event: Event) -> None:
        return None

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        raise NotImplementedError(f"{type(self).__name__} declares auth but does not implement on_auth")

    def on_file(self, notice: FileWritten, file: AuthFile) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} subscribes to file.written but does not implement on_file"
        )

    def on_action_result(self, result: Any) -> None:
        return None

    def on_tick(self) -> None:
        return None

    def teardown(self) -> None:
        return None
