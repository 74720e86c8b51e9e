"""The child of `ringfence replay`: `python -I -m ringfence.agent._replay_child`, in the extension sandbox.

It enters the sandbox first (when the parent is root), only then imports the engines, through the same
entry points the agent's supervisor uses, and hosts each one as the SDK runtime does: `setup(ctx)` once,
`on_event` for each event of a kind its manifest subscribes to, `on_auth` (with no file: a recorded
event has no descriptor) for the AUTH kinds it takes part in, `on_tick` about once a second, `teardown`
at the end. A handler that raises is logged and counted and the next event goes on, as in the runtime.

Input: OCSF JSON lines on stdin (the parent streams the recorded file: root may be the only one who can
read it), each decoded with `ringfence.events.decode_line`; a line that does not decode, or is longer
than `max_line_bytes`, is reported with its number and skipped.

Time: the engines' clocks (monotonic and wall) are the events' own time, never the replay's: a dedup
window or a correlation spans what it spanned on the host, whatever the speed of the replay. The clock
only moves forward (events of several sensors interleave out of order by a little). The engines are set
up at the time of the first event (IOC indicators past `valid_until` then are skipped, as they were).
At the end the clock moves past every window, as if the agent had run on, so each window's summary of
repeats is emitted.

Output: JSON lines on stdout, one `Message` each (see the Structs below); a finding is a
`FindingReport`, the frame an extension sends, which the parent validates as the agent does.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import types
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import IO, Any

import msgspec

from ringfence.agent._child import enter
from ringfence.broker import Mutes
from ringfence.events import (
    ActionRequest,
    AuthRequest,
    Event,
    EventKind,
    OcsfDecodeError,
    ProcessRef,
    Severity,
    decode_line,
    event_kind,
)
from ringfence.sdk import Extension
from ringfence.sdk._protocol import EventBatch, FindingReport

CHILD_ENV = "RINGFENCE_REPLAY"
TICK_NS = 1_000_000_000
FLUSH_NS = 2 * 86_400 * 1_000_000_000  # past every dedup window (at most a day)


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the entry point name in `ringfence.extensions`, as in [extensions] enabled
    content_dir: str
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}  # staged path -> the operator's path, for messages


class ReplaySpec(msgspec.Struct, frozen=True, kw_only=True):
    engines: list[EngineSpec]
    max_line_bytes: int
    max_frame_bytes: int
    mutes: Mutes = Mutes()  # the config's [broker] mutes: the broker delivers no muted event
    sandbox: bool = False
    policy: msgspec.Raw = msgspec.Raw(b"null")
    prepared: msgspec.Raw = msgspec.Raw(b"null")


# --- what the child says, one JSON line each --------------------------------------------------------


class Ready(msgspec.Struct, frozen=True, tag="ready", tag_field="t"):
    engine: str
    subscribes: list[str]


class SetupFailed(msgspec.Struct, frozen=True, tag="setup-failed", tag_field="t"):
    engine: str
    message: str


class Finding(msgspec.Struct, frozen=True, tag="finding", tag_field="t"):
    engine: str
    line: int
    time_ns: int
    host: str
    report: msgspec.Raw  # a FindingReport, validated by the parent


class Log(msgspec.Struct, frozen=True, tag="log", tag_field="t"):
    engine: str
    level: int
    message: str


class Problem(msgspec.Struct, frozen=True, tag="problem", tag_field="t"):
    engine: str
    message: str | None


class BadLine(msgspec.Struct, frozen=True, tag="bad", tag_field="t"):
    line: int
    error: str


class Done(msgspec.Struct, frozen=True, kw_only=True, tag="done", tag_field="t"):
    lines: int
    events: int
    bad_lines: int
    kinds: dict[str, int]
    not_delivered: int  # over the wire's frame size: the agent could not have sent it to an extension
    muted: int  # muted by the config's [broker] mute_* (the broker would not have delivered them)
    handler_errors: dict[str, int]  # engine -> handlers that raised
    actions: dict[str, int]  # "engine kind" -> response actions asked for (replay carries out none)
    unsendable_findings: int  # over the frame size: the extension could not have sent it


Message = Ready | SetupFailed | Finding | Log | Problem | BadLine | Done


class _Out:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._encoder = msgspec.json.Encoder()

    def send(self, message: Message) -> None:
        """One message, flushed: findings are few beside events, and one read from a pipe (`-`, a
        following `tail -f`) must show before the input ends."""
        self._stream.write(self._encoder.encode(message) + b"\n")
        self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()


class _EventClock:
    """The events' time: moves forward only, to each event's `header.time_ns`."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.host = ""
        self.line = 0

    def advance(self, time_ns: int) -> None:
        self.now_ns = max(self.now_ns, time_ns)

    def monotonic_ns(self) -> int:
        return self.now_ns

    def wall_s(self) -> float:
        return self.now_ns / 1e9


class _ToParent(logging.Handler):
    def __init__(self, engine: str, out: _Out, origins: Mapping[str, str]) -> None:
        super().__init__(logging.INFO)
        self._engine, self._out, self._origins = engine, out, origins

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)[:8192]
        self._out.send(Log(self._engine, min(max(record.levelno, 0), 50), _named(message, self._origins)))


def _named(text: str, origins: Mapping[str, str]) -> str:
    """`text` with each staged copy's path replaced by the operator's."""
    for staged, origin in origins.items():
        text = text.replace(staged, origin)
    return text


class _Context:
    """The `ringfence.sdk.Context` of one hosted engine (see `sdk/_runtime._Context`)."""

    def __init__(self, spec: EngineSpec, out: _Out, clock: _EventClock, max_frame_bytes: int) -> None:
        self._spec, self._out, self._clock, self._max_frame = spec, out, clock, max_frame_bytes
        self._settings = types.MappingProxyType(dict(spec.settings))
        self._log = logging.getLogger(f"ringfence.replay.{spec.id}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self._log.addHandler(_ToParent(spec.id, out, spec.origins))
        self.actions: Counter[str] = Counter()
        self.unsendable = 0
        self._msgpack = msgspec.msgpack.Encoder()
        self._json = msgspec.json.Encoder()

    @property
    def log(self) -> logging.Logger:
        return self._log

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._settings

    @property
    def content_dir(self) -> str | None:
        return self._spec.content_dir

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
    ) -> None:
        frame = FindingReport(
            title=title, severity=severity, rule=rule, description=description, process=process,
            file_path=file_path, file_sha256=file_sha256, action=action, related_event=related_event,
            techniques=tuple(techniques), tactics=tuple(tactics),
        )  # fmt: skip
        if len(self._msgpack.encode(frame)) > self._max_frame:
            self.unsendable += 1
            self._log.error("a finding of %d+ bytes is over the wire's frame size: not sent", self._max_frame)
            return
        c = self._clock
        self._out.send(
            Finding(self._spec.id, c.line, c.now_ns, c.host, msgspec.Raw(self._json.encode(frame)))
        )

    def invalidate_verdicts(self, reason: str) -> None:
        return None  # no verdict cache in a replay

    def request_action(self, request: ActionRequest) -> None:
        self.actions[f"{self._spec.id} {request.kind}"] += 1

    def report_problem(self, message: str | None) -> None:
        self._out.send(
            Problem(self._spec.id, None if message is None else _named(message, self._spec.origins))
        )


class _Hosted:
    """One engine, hosted as the SDK runtime hosts it."""

    def __init__(self, spec: EngineSpec, ext: Extension, ctx: _Context) -> None:
        self.spec, self.ext, self.ctx = spec, ext, ctx
        manifest = ext.manifest
        self.events = frozenset(manifest.subscribes)
        self.auth = frozenset(manifest.auth.kinds) if manifest.auth is not None else frozenset()
        self.errors = 0

    def handle(self, event: Event, kind: EventKind) -> None:
        if kind in self.auth and isinstance(event, AuthRequest):
            self._guarded(lambda: self.ext.on_auth(event, None))
        elif kind in self.events:
            self._guarded(lambda: self.ext.on_event(event))

    def tick(self) -> None:
        self._guarded(self.ext.on_tick)

    def _guarded(self, handler: Any) -> None:
        try:
            handler()
        except Exception:  # supervision boundary: the engine's handler; logged, counted, next event
            self.errors += 1
            self.ctx.log.exception("handler failed")


def _instantiate(spec: EngineSpec, clock: _EventClock) -> Extension:
    """The engine class from its entry point, with the events' clock where it takes one (ours do)."""
    from importlib.metadata import entry_points

    found = entry_points(group="ringfence.extensions", name=spec.id)
    if not found:
        raise LookupError(f"no extension {spec.id!r} in the ringfence.extensions entry points")
    obj = next(iter(found)).load()
    if isinstance(obj, Extension):
        return obj
    params = inspect.signature(obj).parameters
    kwargs: dict[str, Any] = {}
    if "clock" in params:
        kwargs["clock"] = clock.monotonic_ns
    if "wall_clock" in params:
        kwargs["wall_clock"] = clock.wall_s
    ext = obj(**kwargs)
    if not isinstance(ext, Extension):
        raise TypeError(f"{spec.id}: {obj!r} is not an Extension")
    return ext


def _lines(stream: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """Each line (without its newline), None for one longer than `limit` (skipped, in bounded memory)."""
    while line := stream.readline(limit + 1):
        if line.endswith(b"\n"):
            yield line[:-1]
        elif len(line) <= limit:
            yield line  # the last line, without a newline
        else:
            while line and not line.endswith(b"\n"):
                line = stream.readline(1 << 20)
            yield None


class _Replay:
    def __init__(self, spec: ReplaySpec, out: _Out) -> None:
        self.spec, self.out = spec, out
        self.clock = _EventClock()
        self.hosted: list[_Hosted] | None = None
        self.next_tick_ns = 0
        self.events = self.bad = self.not_delivered = self.muted = self.lines = 0
        self.kinds: Counter[str] = Counter()
        self._msgpack = msgspec.msgpack.Encoder()

    def start(self) -> bool:
        """Set up every engine at the clock's time; False (reported) when one fails, as the agent would
        refuse to start with it."""
        self.hosted = []
        for spec in self.spec.engines:
            ctx = _Context(spec, self.out, self.clock, self.spec.max_frame_bytes)
            try:
                ext = _instantiate(spec, self.clock)
                ext.setup(ctx)
            except Exception as e:  # noqa: BLE001 (supervision boundary: a failed setup is a failed start)
                message = f"{type(e).__name__}: {e}" if str(e).strip() else type(e).__name__
                self.out.send(SetupFailed(spec.id, _named(" ".join(message.split()), spec.origins)))
                return False
            self.hosted.append(_Hosted(spec, ext, ctx))
            self.out.send(Ready(spec.id, sorted(str(k) for k in ext.manifest.subscribes)))
        self.next_tick_ns = self.clock.now_ns + TICK_NS
        return True

    def run(self, stream: IO[bytes]) -> int:
        for n, line in enumerate(_lines(stream, self.spec.max_line_bytes), 1):
            self.lines = self.clock.line = n
            if line is None:
                self._bad(f"longer than {self.spec.max_line_bytes} bytes")
                continue
            try:
                event = decode_line(line)
            except OcsfDecodeError as e:
                self._bad(str(e))
                continue
            if not self._deliver(event, len(line)):
                return 1
        if self.hosted is None:  # no event at all: the content is still loaded, and its problems named
            self.clock.advance(_now_ns())
            if not self.start():
                return 1
        self._finish()
        return 0

    def _bad(self, error: str) -> None:
        self.bad += 1
        self.out.send(BadLine(self.lines, error))

    def _deliver(self, event: Event, size: int) -> bool:
        self.events += 1
        kind = event_kind(event)
        self.kinds[str(kind)] += 1
        self.clock.advance(event.header.time_ns)
        self.clock.host = event.header.host
        if self.hosted is None and not self.start():
            return False
        assert self.hosted is not None
        if self.clock.now_ns >= self.next_tick_ns:
            self._tick()
        if self.spec.mutes.mutes(event, kind):
            self.muted += 1
            return True
        if size > self.spec.max_frame_bytes // 4 and self._too_large(event):  # JSON is the longer form
            self.not_delivered += 1
            return True
        for hosted in self.hosted:
            hosted.handle(event, kind)
        return True

    def _too_large(self, event: Event) -> bool:
        """Whether the event's frame is over the wire's size, so the agent could not have sent it."""
        return len(self._msgpack.encode(EventBatch([event]))) > self.spec.max_frame_bytes

    def _tick(self) -> None:
        for hosted in self.hosted or ():
            hosted.tick()
        self.next_tick_ns = self.clock.now_ns + TICK_NS

    def _finish(self) -> None:
        self.clock.advance(self.clock.now_ns + FLUSH_NS)
        self._tick()
        for hosted in self.hosted or ():
            try:
                hosted.ext.teardown()
            except Exception:  # supervision boundary, as in the runtime: logged, counted
                hosted.errors += 1
                hosted.ctx.log.exception("teardown failed")
        hosted_all = self.hosted or []
        self.out.send(
            Done(
                lines=self.lines,
                events=self.events,
                bad_lines=self.bad,
                kinds=dict(self.kinds),
                not_delivered=self.not_delivered,
                muted=self.muted,
                handler_errors={h.spec.id: h.errors for h in hosted_all if h.errors},
                actions=dict(sum((h.ctx.actions for h in hosted_all), Counter())),
                unsendable_findings=sum(h.ctx.unsendable for h in hosted_all),
            )
        )


def _now_ns() -> int:
    import time

    return time.time_ns()


def main() -> int:
    spec = msgspec.json.decode(os.environ.pop(CHILD_ENV, ""), type=ReplaySpec)
    enter(spec.sandbox, spec.policy, spec.prepared)
    out = _Out(sys.stdout.buffer)
    try:
        return _Replay(spec, out).run(sys.stdin.buffer)
    finally:
        out.flush()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
