"""Flag programs launched from world-writable temp directories, where droppers stage their payloads.

Settings (the extension's table in the agent config, `ctx.settings`):

    [extensions.config."acme.suspicious-tmp-exec"]
    directories = ["/tmp", "/var/tmp", "/dev/shm"]   # the default; absolute paths

A path matches a directory only at a component boundary: `/tmpfoo/x` is not under `/tmp`. The process
table reports a deleted executable as `<path> (deleted)`; that suffix is stripped before matching (a
binary that deletes itself after launch is no less suspicious).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ringfence.sdk import (
    Context,
    Event,
    EventKind,
    Extension,
    Manifest,
    ProcessActivity,
    ProcessActivityId,
    Severity,
)

RULE = "acme.suspicious-tmp-exec"
DEFAULT_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm")
_DELETED = " (deleted)"


class SettingsError(ValueError):
    """Unusable settings; the message names every bad key."""


class SuspiciousTmpExec(Extension):
    manifest = Manifest(
        id="acme.suspicious-tmp-exec",
        vendor="Acme Security",
        version="0.1.0",
        subscribes=frozenset({EventKind.PROCESS}),
        description="Raises a MEDIUM finding when a program is launched from /tmp, /var/tmp or /dev/shm.",
    )

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.directories = _directories(ctx.settings)
        ctx.log.info("watching launches from %s", ", ".join(str(d) for d in self.directories))

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ProcessActivity) or event.activity is not ProcessActivityId.LAUNCH:
            return
        exe = event.process.exe
        if not exe or (directory := self.staging_directory(exe)) is None:
            return
        self.ctx.emit_finding(
            f"Program launched from {directory}: {exe}",
            Severity.MEDIUM,
            rule=RULE,
            description=f"{exe} was executed from {directory}, a world-writable temp directory",
            process=event.process,
            file_path=exe,
            related_event=event.header.id,
        )

    def staging_directory(self, exe: str) -> PurePosixPath | None:
        """The watched directory that `exe` lies under, or None."""
        path = PurePosixPath(exe.removesuffix(_DELETED))
        return next((d for d in self.directories if path.is_relative_to(d) and path != d), None)


def _directories(settings: Mapping[str, Any]) -> tuple[PurePosixPath, ...]:
    problems = [f"unknown key {key!r}" for key in settings if key != "directories"]
    value = settings.get("directories", list(DEFAULT_DIRECTORIES))
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("/") for v in value):
        problems.append(f"directories: must be a list of absolute paths, got {value!r}")
        value = []
    if problems:
        raise SettingsError(f"{RULE} settings: " + "; ".join(problems))
    return tuple(PurePosixPath(v) for v in value)
