"""`ringfence replay EVENTS.jsonl [--rules PATH]...`: the engines run over recorded OCSF events.

The root side (this module) parses neither the content nor the events. It copies the content (the
default pack, `content/default/`, unless left out, plus each `--rules` file, under the names the agent
gives them: `default-<file>`, `rules-NNN-<file>`) into a private directory, as `rules check` does
(`_child.py`), and streams the events file, which it opens itself (it may be root-only), into the stdin
of a child, `python -I -m ringfence.agent._replay_child`, in the extension sandbox. The child decodes
each line and runs the real engines on it through the SDK's extension interface (see its docstring);
this side reads back what it says, validates each finding as the agent validates an extension's
`FindingReport` frame (sizes, ATT&CK ids), rate-limits findings per engine as the agent does (on the
events' time), stamps each as the agent would (`ext:<id>` header, the extension id as source) and hands
it to a sink.

Engines: Sigma (`ringfence.sigma`, on every event kind it subscribes to) and IOC (the id in force:
`ringfence.reputation` or `ringfence.ioc`; addresses and domains on network and DNS events). YARA is not
run: it scans a file's bytes at exec, which no recorded event has; nor can IOC hashes match, for the
same reason (an exec request is recorded as its path and process).

Bounded: the events are streamed (a line is at most `MAX_LINE_BYTES`), the child's messages are read a
line at a time (at most `MAX_MESSAGE_BYTES`), and a child that stops reading its input, or says nothing
once the input has ended, for `stall_s` is killed.

Errors (under the agent's root, `AgentError`):
    ReplayError     the replay could not run (a content file or the events file that cannot be read, an
                    engine that fails its setup, a child that failed or stalled); one line
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec

from ringfence._linux import fsync_dir, write_all
from ringfence.agent._child import STDERR_TAIL_BYTES, SandboxedChild, copy_file, exit_text, spawn
from ringfence.agent._config import BrokerSection, ExtensionsSection
from ringfence.agent._errors import AgentError
from ringfence.agent._replay_child import (
    CHILD_ENV,
    BadLine,
    Done,
    EngineSpec,
    Finding,
    Log,
    Message,
    Problem,
    Ready,
    ReplaySpec,
    SetupFailed,
)
from ringfence.agent._rules import ENGINE_IDS, find_files, printable, rules_content_name
from ringfence.broker import Mutes
from ringfence.content import PackageError
from ringfence.content._default import default_pack
from ringfence.events import DetectionFinding, Header, OcsfEncoder
from ringfence.extensions import SupervisorConfig
from ringfence.extensions._policy import TokenBucket
from ringfence.sdk._protocol import FindingReport

MAX_LINE_BYTES = 4 << 20  # an event line; longer ones are bad lines (the wire carries at most 1 MiB)
MAX_MESSAGE_BYTES = 8 << 20  # a line from the child
STALL_S = 120.0
SHOWN_BAD_LINES = 100  # on stderr and in the summary; all are counted
_NOT_RUN = {
    "yara": "YARA scans a file's contents at exec, and recorded events carry none",
}


class ReplayError(AgentError):
    """The replay could not run; one line saying why."""


class BadLineInfo(msgspec.Struct, frozen=True):
    line: int
    error: str


class ReplaySummary(msgspec.Struct, kw_only=True):
    events_file: str
    engines: list[str] = []
    not_run: dict[str, str] = {}  # engine -> why (its files were given but it cannot run on records)
    lines: int = 0
    events: int = 0
    kinds: dict[str, int] = {}
    bad_lines: int = 0
    bad: list[BadLineInfo] = []  # the first SHOWN_BAD_LINES
    findings: int = 0
    findings_by_rule: dict[str, int] = {}
    findings_rate_limited: int = 0  # over the agent's per-extension rate (on the events' time)
    findings_refused: int = 0  # frames the agent would refuse (the live extension would be restarted)
    findings_unsendable: int = 0  # over the wire's frame size
    events_not_delivered: int = 0  # over the wire's frame size: the agent could not send them
    events_muted: int = 0  # by the config's [broker] mute_paths, mute_executables, mute_kinds
    handler_errors: dict[str, int] = {}
    actions_not_taken: dict[str, int] = {}  # response actions the engines asked for
    problems: dict[str, str] = {}  # engine -> what it reported wrong at the end (a rule that did not load)
    out: str | None = None

    @property
    def clean(self) -> bool:
        return not self.bad_lines and not self.findings_refused and not self.problems


Sink = Callable[[DetectionFinding, int], None]  # a finding and the line of the event that raised it
Note = Callable[[str], None]  # one line for the operator (stderr)


# --- content ---------------------------------------------------------------------------------------


class _Content(msgspec.Struct):
    engine: str
    name: str  # the content name, as the agent stages it
    origin: str


def _content(rules: Sequence[str], with_default: bool, note: Note) -> list[_Content]:
    out = []
    if with_default:
        try:
            pack = default_pack()
        except PackageError as e:
            raise ReplayError(f"the default content pack: {e}") from e
        out += [_Content(e, f"default-{os.path.basename(p)}", p) for e, ps in pack.items() for p in ps]
    found, issues = find_files(rules)
    errors = [str(i) for i in issues if i.severity == "error"]
    if errors:
        raise ReplayError(f"--rules: {'; '.join(errors)}")
    for issue in issues:
        note(str(issue))
    out += [_Content(f.engine, rules_content_name(n, f.path), f.path) for n, f in enumerate(found)]
    return out


def _stage(content: list[_Content], work: str, engine_ids: dict[str, str], settings: ExtensionsSection,
           not_run: dict[str, str]) -> list[EngineSpec]:  # fmt: skip
    specs: dict[str, EngineSpec] = {}
    for item in content:
        if item.engine in _NOT_RUN:
            not_run[item.engine] = _NOT_RUN[item.engine]
            continue
        directory = os.path.join(work, item.engine)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dest = os.path.join(directory, item.name)
        problem = copy_file(item.origin, dest)
        if problem is not None:
            raise ReplayError(f"{printable(item.origin)}: {problem}")
        ext_id = engine_ids[item.engine]
        spec = specs.get(item.engine) or EngineSpec(
            id=ext_id, content_dir=directory, settings=dict(settings.config.get(ext_id, {}))
        )
        specs[item.engine] = msgspec.structs.replace(spec, origins={**spec.origins, dest: item.origin})
    # the directory itself last: each file's own path is replaced first
    return [
        msgspec.structs.replace(s, origins={**s.origins, s.content_dir: "its content"})
        for s in specs.values()
    ]


# --- the root side: stream in, read out -------------------------------------------------------------


class _Pump(threading.Thread):
    """Copies the events file into the child's stdin; says when it is waiting on the child."""

    def __init__(self, source: io.BufferedReader, fd: int) -> None:
        super().__init__(name="replay-pump", daemon=True)
        self.source, self.fd = source, fd
        self.sent = 0
        self.writing_since: float | None = None
        self.done = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            while chunk := self.source.read1(1 << 16):  # what is there: a pipe's lines go on at once
                self.writing_since = time.monotonic()
                write_all(self.fd, chunk)
                self.writing_since = None
                self.sent += len(chunk)
        except BrokenPipeError:
            pass  # the child is gone: what it said tells why
        except OSError as e:
            self.error = f"cannot read the events: {e.strerror}"
        finally:
            self.writing_since = None
            self.done = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


class _Reader:
    """The parent's view of one run: turns the child's messages into findings and the summary."""

    def __init__(self, summary: ReplaySummary, sink: Sink, note: Note, host_prefix: str) -> None:
        self.summary, self.sink, self.note = summary, sink, note
        self.done: Done | None = None
        self.failed: str | None = None
        self._decoder = msgspec.json.Decoder(Message)
        self._report = msgspec.json.Decoder(FindingReport)
        self._limits = SupervisorConfig()
        self._buckets: dict[str, TokenBucket] = {}
        self._seq: Counter[str] = Counter()
        self._prefix = host_prefix
        self._by_rule: Counter[str] = Counter()

    def line(self, raw: bytes) -> None:
        try:
            message = self._decoder.decode(raw)
        except msgspec.DecodeError as e:
            raise ReplayError(f"replay: the engines' child broke its protocol: {e}") from None
        if isinstance(message, Finding):
            self._finding(message)
        elif isinstance(message, BadLine):
            self._bad(message)
        elif isinstance(message, Log):  # warnings, and what the engine says while it loads its content
            if message.level >= 30 or message.engine not in self.summary.engines:
                self.note(printable(f"{message.engine}: {message.message}"))
        elif isinstance(message, Problem):
            if message.message is None:
                self.summary.problems.pop(message.engine, None)
            else:
                self.summary.problems[message.engine] = printable(message.message)
                self.note(printable(f"{message.engine}: problem: {message.message}"))
        elif isinstance(message, Ready):
            self.summary.engines.append(message.engine)
        elif isinstance(message, SetupFailed):
            self.failed = printable(f"{message.engine} failed its setup: {message.message}")
        else:
            self.done = message

    def _bad(self, m: BadLine) -> None:
        s = self.summary
        s.bad_lines += 1
        if s.bad_lines <= SHOWN_BAD_LINES:
            s.bad.append(BadLineInfo(m.line, m.error))
            self.note(printable(f"{s.events_file}:{m.line}: {m.error}; line skipped"))
        elif s.bad_lines == SHOWN_BAD_LINES + 1:
            self.note(f"more bad lines: not shown, counted in the summary (the first {SHOWN_BAD_LINES} were)")

    def _finding(self, m: Finding) -> None:
        try:
            report = self._report.decode(m.report)
        except msgspec.DecodeError as e:  # the agent would call it a protocol error, and restart the engine
            self.summary.findings_refused += 1
            self.note(printable(f"{m.engine}: a finding the agent would refuse (line {m.line}): {e}"))
            return
        bucket = self._buckets.get(m.engine)
        if bucket is None:
            limits = self._limits
            bucket = self._buckets[m.engine] = TokenBucket(
                limits.findings_per_s, limits.findings_burst, m.time_ns
            )
        if not bucket.take(m.time_ns):
            self.summary.findings_rate_limited += 1
            return
        self._seq[m.engine] += 1
        seq = self._seq[m.engine]
        header = Header(id=f"{self._prefix}-ext:{m.engine}-{seq}", time_ns=m.time_ns, mono_ns=0, host=m.host,
                        sensor=f"ext:{m.engine}", seq=seq)  # fmt: skip
        finding = DetectionFinding(
            header=header, source=m.engine, **{f: getattr(report, f) for f in report.__struct_fields__}
        )
        self.summary.findings += 1
        self._by_rule[finding.rule or "(no rule)"] += 1
        self.summary.findings_by_rule = dict(self._by_rule.most_common())
        self.sink(finding, m.line)


def replay(
    events: str,
    rules: Sequence[str] = (),
    *,
    with_default: bool = True,
    extensions: ExtensionsSection | None = None,
    broker: BrokerSection | None = None,
    ioc_id: str = "ringfence.reputation",
    sink: Sink,
    note: Note = lambda _line: None,
    progress: Callable[[int, int | None], None] | None = None,
    stall_s: float = STALL_S,
) -> ReplaySummary:
    """Run the engines over the OCSF JSON lines of `events` ("-": stdin), with the default pack (unless
    `with_default` is False) and `rules`. Each finding goes to `sink`, each note for the operator to
    `note`, `progress(bytes_sent, total)` is called as the input goes in. Raises ReplayError."""
    extensions = extensions or ExtensionsSection()
    broker = broker or BrokerSection()
    mutes = Mutes(
        path_prefixes=broker.mute_paths,
        executables=frozenset(broker.mute_executables),
        kinds=frozenset(broker.mute_kinds),
    )
    summary = ReplaySummary(events_file=events)
    content = _content(rules, with_default, note)
    source = _open_events(events)
    work = tempfile.mkdtemp(prefix="ringfence-replay-")  # 0700: only root (and, below, the sandbox)
    try:
        specs = _stage(content, work, {**ENGINE_IDS, "ioc": ioc_id}, extensions, summary.not_run)
        for engine, why in summary.not_run.items():
            note(f"{engine}: not run: {why}")
        if not specs:
            raise ReplayError(
                "replay: no Sigma or IOC content to run (--no-default, and no --rules of theirs)"
            )
        spec = ReplaySpec(engines=specs, max_line_bytes=MAX_LINE_BYTES, mutes=mutes,
                          max_frame_bytes=SupervisorConfig().max_frame_bytes)  # fmt: skip
        reader = _Reader(summary, sink, note, os.urandom(4).hex())
        with SandboxedChild("replay", "replay", work, extensions, ReplayError) as child:
            try:
                _run(msgspec.structs.replace(spec, **child.spec_fields()), source, reader, progress, stall_s)
            except ReplayError as e:
                if (oom := child.out_of_memory()) is not None:
                    raise ReplayError(f"replay: the engines' child {oom}") from e
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        source.close()
    if reader.failed is not None:
        raise ReplayError(f"replay: {reader.failed}")
    done = reader.done
    assert done is not None
    summary.lines, summary.events, summary.kinds = done.lines, done.events, dict(sorted(done.kinds.items()))
    summary.events_not_delivered, summary.findings_unsendable = done.not_delivered, done.unsendable_findings
    summary.events_muted = done.muted
    summary.handler_errors, summary.actions_not_taken = done.handler_errors, done.actions
    return summary


def _open_events(path: str) -> io.BufferedReader:
    try:
        fd = os.dup(0) if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ReplayError(f"{printable(path)}: cannot open: {e.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise ReplayError(f"{printable(path)}: a directory, not a file of OCSF JSON lines")
    return io.BufferedReader(io.FileIO(fd, "rb", closefd=True))


def _size(source: io.BufferedReader) -> int | None:
    try:
        st = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _run(
    spec: ReplaySpec,
    source: io.BufferedReader,
    reader: _Reader,
    progress: Callable[[int, int | None], None] | None,
    stall_s: float,
) -> None:
    total = _size(source)
    with spawn("ringfence.agent._replay_child", CHILD_ENV, spec, stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        pump = _Pump(source, os.dup(proc.stdin.fileno()))
        proc.stdin.close()
        pump.start()
        try:
            err = _read(proc, pump, reader, progress=progress, total=total, stall_s=stall_s)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            pump.join(timeout=5)
    if pump.error is not None:
        raise ReplayError(f"replay: {printable(reader.summary.events_file)}: {pump.error}")
    if reader.failed is not None:
        return
    if proc.returncode != 0 or reader.done is None:
        last = (err.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        raise ReplayError(
            f"replay: the engines' child failed ({exit_text(proc.returncode)}): {printable(last)}"
        )


def _read(
    proc: subprocess.Popen[bytes],
    pump: _Pump,
    reader: _Reader,
    *,
    progress: Callable[[int, int | None], None] | None,
    total: int | None,
    stall_s: float,
) -> bytes:
    """Handle the child's stdout line by line until it closes; the tail of its stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    last_output = time.monotonic()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            for key, _ in sel.select(0.2):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                key.data.extend(chunk)
                last_output = time.monotonic()
            _lines_of(out, reader)
            del err[: max(0, len(err) - STDERR_TAIL_BYTES)]
            if progress is not None:
                progress(pump.sent, total)
            _check_stall(pump, last_output, stall_s)
    if out:
        _lines_of(out + b"\n", reader)
    return bytes(err)


def _lines_of(buffer: bytearray, reader: _Reader) -> None:
    start = 0
    while (end := buffer.find(b"\n", start)) != -1:
        reader.line(bytes(buffer[start:end]))
        start = end + 1
    del buffer[:start]
    if len(buffer) > MAX_MESSAGE_BYTES:
        raise ReplayError(f"replay: the engines' child wrote a line over {MAX_MESSAGE_BYTES} bytes")


def _check_stall(pump: _Pump, last_output: float, stall_s: float) -> None:
    now = time.monotonic()
    writing = pump.writing_since
    if writing is not None and now - writing > stall_s:
        raise ReplayError(f"replay: the engines took no input for {stall_s:g} s: stopped")
    if pump.done and now - last_output > stall_s:
        raise ReplayError(
            f"replay: the engines said nothing for {stall_s:g} s after the input ended: stopped"
        )


# --- sinks ----------------------------------------------------------------------------------------


def readable(finding: DetectionFinding, line: int) -> str:
    """One line for a terminal: time, severity, title, rule id, techniques, what triggered it."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(finding.header.time_ns // 1_000_000_000))
    millis = finding.header.time_ns // 1_000_000 % 1000
    parts = [f"{when}.{millis:03d}Z", finding.severity.name, finding.title]
    if finding.rule:
        parts.append(f"[{finding.rule}]")
    if finding.techniques:
        parts.append(",".join(finding.techniques))
    p = finding.process
    if p is not None:
        parts.append(
            f"pid {p.pid}"
            + (f" {p.exe}" if p.exe else "")
            + (f": {' '.join(p.cmdline)}" if p.cmdline else "")
        )
    if finding.file_path:
        parts.append(f"file {finding.file_path}")
    parts.append(f"(line {line})")
    return printable("  ".join(parts))


class AtomicOcsfFile:
    """Findings as OCSF JSON lines into a temp file beside `path`, renamed over it by `commit`; `abort`
    (or a commit never reached) leaves `path` as it was."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", dir=directory)
        except OSError as e:
            raise ReplayError(f"--out {printable(path)}: cannot write there: {e.strerror}") from None
        self._file = os.fdopen(fd, "wb")
        self._encoder = OcsfEncoder()

    def __call__(self, finding: DetectionFinding, line: int) -> None:
        self._file.write(self._encoder.encode(finding))

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise ReplayError(f"--out {printable(self.path)}: {e.strerror}") from None
        fsync_dir(os.path.dirname(self.path))

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def render_summary(s: ReplaySummary) -> list[str]:
    kinds = ", ".join(f"{k} {n}" for k, n in s.kinds.items())
    rules = ", ".join(f"{rule}: {n}" for rule, n in s.findings_by_rule.items())
    lines = [
        f"replay: {s.lines} lines, {s.events} events" + (f" ({kinds})" if kinds else "")
        + f", {s.bad_lines} bad lines; engines: {', '.join(s.engines) or 'none'}",
        f"findings: {s.findings}" + (f" ({rules})" if rules else ""),
    ]  # fmt: skip
    for label, value in (
        ("findings over the agent's rate limit, dropped", s.findings_rate_limited),
        ("findings the agent would refuse", s.findings_refused),
        ("findings over the wire's frame size", s.findings_unsendable),
        ("events over the wire's frame size, not delivered", s.events_not_delivered),
        ("events muted by [broker] mute_*, not delivered", s.events_muted),
    ):
        if value:
            lines.append(f"{label}: {value}")
    lines += [f"{engine}: {n} handler errors" for engine, n in s.handler_errors.items()]
    lines += [f"{engine}: a content problem (above): exit status 1" for engine in s.problems]
    lines += [
        f"response actions asked for, not taken by replay: {k}: {n}" for k, n in s.actions_not_taken.items()
    ]
    if s.out:
        lines.append(f"findings written to {s.out}")
    return [printable(line) for line in lines]
