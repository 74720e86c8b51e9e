"""Engines that break, for `ringfence content validate`'s tests, on the public SDK only.

Run by the validator's sandboxed child through `id=module:attr` entries (`validate_engines:Crasher`)
with this directory's parent as an import root, as an operator's own engine would be. Each declares a
content schema (interface `t@1`) and reads its content from `ctx.content_dir` like a real engine."""

from __future__ import annotations

import os
import time

from ringfence.sdk import (
    ContentSchema,
    Context,
    Event,
    EventKind,
    Extension,
    Manifest,
    ProcessActivity,
    Severity,
)


def _words(ctx: Context) -> set[str]:
    words: set[str] = set()
    root = ctx.content_dir or "/nonexistent"
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), encoding="utf-8") as f:
            words |= set(f.read().split())
    return words


class _Base(Extension):
    manifest = Manifest(id="t.base", vendor="ringfence-tests", version="0",
                        subscribes=frozenset({EventKind.PROCESS}), content_interface="t@1")  # fmt: skip

    @classmethod
    def content_schema(cls) -> ContentSchema:
        return ContentSchema(interface="t@1", kinds=("process",), files=(".txt",))


class Crasher(_Base):
    """Aborts (SIGABRT, as a C library's assertion would) in setup when its content says `crash`."""

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if "crash" in _words(ctx):
            print("crasher: the rule says crash, aborting", flush=True)
            os.abort()


class Hog(_Base):
    """Eats memory in setup, page by page, when its content says `hog`, until the sandbox stops it."""

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if "hog" in _words(ctx):
            self.eaten = []
            while True:
                self.eaten.append(bytearray(16 << 20))  # zero-filled: every page touched


class Brittle(_Base):
    """Raises on a process event with two or more arguments: the bug the fuzz stage must find."""

    def on_event(self, event: Event) -> None:
        if isinstance(event, ProcessActivity) and len(event.process.cmdline) >= 2:
            raise IndexError("brittle: more than one argument")


class Sleeper(_Base):
    """Hangs in setup when its content says `sleep`; on an exec of /hang (a recorded event of the
    corpus); spins on /spin; naps 2.5 s on /nap; raises a finding on /bin/ok."""

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if "sleep" in _words(ctx):
            time.sleep(600)

    def on_event(self, event: Event) -> None:
        if isinstance(event, ProcessActivity) and event.process.exe == "/hang":
            time.sleep(600)
        if isinstance(event, ProcessActivity) and event.process.exe == "/nap":
            time.sleep(2.5)  # as a child starved of a core on a loaded host looks: slow, using no CPU
        if isinstance(event, ProcessActivity) and event.process.exe == "/spin":
            while True:  # a loop that never ends, on the CPU
                pass
        if isinstance(event, ProcessActivity) and event.process.exe == "/bin/ok":
            self.ctx.emit_finding("ok seen", Severity.LOW, rule="t.ok")
