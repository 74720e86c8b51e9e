"""An extension for the content end-to-end tests (loaded as "id=module:attr", sandboxed like any other):
it tries to read the operator's own file, to read and write its staged copy, and says what happened
in a finding."""

from __future__ import annotations

import os

from ringfence.sdk import EventKind, Extension, Manifest, Severity


def _try_write(path: str) -> str:
    try:
        with open(path, "ab") as f:
            f.write(b"x")
    except OSError as e:
        return f"refused({e.errno})"
    return "written"


def _try_read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"refused({e.errno})"
    return "read"


class ContentProbe(Extension):
    manifest = Manifest(
        id="t.probe", vendor="ringfence-tests", version="0", subscribes=frozenset({EventKind.PROCESS})
    )

    def on_tick(self) -> None:
        if getattr(self, "_done", False):
            return
        self._done = True
        operator = _try_read(str(self.ctx.settings["operator_path"]))
        content_dir = self.ctx.content_dir or "/nonexistent"
        staged = _try_read(os.path.join(content_dir, "list.txt"))
        write = _try_write(os.path.join(content_dir, "list.txt"))
        create = _try_write(os.path.join(content_dir, "planted.txt"))
        self.ctx.emit_finding(
            f"probe operator={operator} content={staged} write={write} create={create}",
            Severity.INFORMATIONAL,
        )
