"""The child of `content validate` and `content schema`: `python -I -m ringfence.agent._validate_child`.

It enters the extension sandbox first (when the parent is root: the extension user, cgroups with
`extensions.memory_mb`, Landlock, seccomp), moves its stdout aside (the protocol has a descriptor of its
own; whatever the engine or hypothesis print goes to stderr, whose tail the parent keeps), and only then
imports the engine (an entry point name, or `module:attr` with extra import roots, as the agent's
`[extensions] enabled` names it). Modes:

    schema      print the engine's ContentSchema (`Extension.content_schema()`)
    contract    stage 1 restricted to the contract: the manifest's interface, and each file's fields and
                types against the schema (the agent's check before it activates a package)
    validate    the stages, in order, every one run whatever the one before found (every issue at once):
                1 static: the interface, the engine's own loader (the `rules check` one: parse, compile,
                  re2, duplicate ids, the schema contract made blocking)
                2 load: `setup(ctx)` with the package as its content dir
                3 corpus: each recorded events file, event by event, findings by rule and latencies
                4 fuzz: generated events for the given seconds (`_fuzz.py`)

Output: JSON lines on the protocol descriptor, one `Message` each. A stage's start is said before it
runs and progress at most every `PROGRESS_S` within it, so that the parent can hold each stage to its
time budget and each event to its deadline, and name the stage in which the child died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import types
from collections.abc import Mapping
from typing import IO, Any

import msgspec

from ringfence.agent._child import enter

CHILD_ENV = "RINGFENCE_VALIDATE"
PROGRESS_S = 0.2
BLOCKING_CODES = frozenset({"contract-field", "contract-type", "duplicate-id"})
"""Sigma issues that `rules check` reports as warnings and the gauntlet refuses (the schema contract)."""
CONTRACT_CODES = frozenset({"contract-field", "contract-type", "contract-interface"})
_CHECKERS = {"sigma": (".yml", ".yaml"), "yara": (".yar", ".yara"), "ioc": (".ioc", ".json")}


class CorpusFile(msgspec.Struct, frozen=True):
    name: str  # as the report names it (corpus/attacks.jsonl)
    path: str  # the copy the child reads


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    mode: str  # schema, contract, validate
    engine: str  # the extension id
    entry: str  # entry-point name or module:attr
    sys_path: tuple[str, ...] = ()
    content_dir: str | None = None  # the package's files (its manifest left out)
    files: list[str] = []  # their paths inside the package
    interface: str = ""  # the manifest's
    settings: dict[str, Any] = {}
    corpus: list[CorpusFile] = []
    fuzz_seconds: float = 0.0
    seed: int = 0
    sandbox: bool = False
    policy: msgspec.Raw = msgspec.Raw(b"null")
    prepared: msgspec.Raw = msgspec.Raw(b"null")


class Issue(msgspec.Struct, frozen=True, kw_only=True, tag="issue", tag_field="t"):
    severity: str  # error (blocking), warning, info
    stage: str  # structure, contract, static, load, corpus, fuzz
    file: str | None = None
    line: int | None = None
    rule: str | None = None
    message: str
    code: str | None = None


class Stage(msgspec.Struct, frozen=True, tag="stage", tag_field="t"):
    stage: str


class Progress(msgspec.Struct, frozen=True, tag="progress", tag_field="t"):
    events: int


class Schema(msgspec.Struct, frozen=True, tag="schema", tag_field="t"):
    schema: msgspec.Raw


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class CorpusResult(msgspec.Struct, frozen=True, tag="corpus", tag_field="t", kw_only=True):
    name: str
    events: int
    bad_lines: int
    findings: dict[str, int]  # rule id -> findings
    latency: Latency


class FuzzDone(msgspec.Struct, frozen=True, tag="fuzz", tag_field="t", kw_only=True):
    events: int
    rounds: int


class Done(msgspec.Struct, frozen=True, tag="done", tag_field="t"):
    pass


Message = Issue | Stage | Progress | Schema | CorpusResult | FuzzDone | Done


class _Out:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._encoder = msgspec.json.Encoder()
        self._last_progress = 0.0

    def send(self, message: Message) -> None:
        self._stream.write(self._encoder.encode(message) + b"\n")
        self._stream.flush()

    def progress(self, events: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_S:
            self._last_progress = now
            self.send(Progress(events))


class _Context:
    """The `ringfence.sdk.Context` of the engine under test: findings are counted by rule."""

    def __init__(self, spec: ChildSpec) -> None:
        self._spec = spec
        self._settings = types.MappingProxyType(dict(spec.settings))
        self._log = logging.getLogger(f"ringfence.validate.{spec.engine}")
        self.findings: dict[str, int] = {}
        self.problem: str | None = None

    @property
    def log(self) -> logging.Logger:
        return self._log

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._settings

    @property
    def content_dir(self) -> str | None:
        return self._spec.content_dir

    def emit_finding(self, title: str, severity: Any, *, rule: str | None = None, **_: Any) -> None:
        key = rule or f"(title) {title}"
        self.findings[key] = self.findings.get(key, 0) + 1

    def invalidate_verdicts(self, reason: str) -> None:
        return None

    def request_action(self, request: Any) -> None:
        return None

    def report_problem(self, message: str | None) -> None:
        self.problem = message


def _engine_class(spec: ChildSpec) -> Any:
    from ringfence.extensions._launch import resolve

    sys.path[0:0] = list(spec.sys_path)
    return resolve(spec.entry)()


def _schema_of(obj: Any) -> Any:
    getter = getattr(obj, "content_schema", None)
    return getter() if callable(getter) else None


def _checker(interface: str) -> str | None:
    """Which of `rules check`'s loaders reads this interface's files (sigma@1 -> sigma), if any."""
    name = interface.partition("@")[0]
    return name if name in _CHECKERS else None


def _static(spec: ChildSpec, schema: Any, out: _Out, contract_only: bool) -> None:
    stage = "contract"
    if not spec.interface:
        if not contract_only:
            out.send(Issue(severity="error", stage=stage, file="manifest.toml", code="contract-interface",
                           message=f"names no interface: the engine's is {schema.interface}"))  # fmt: skip
    elif spec.interface != schema.interface:
        out.send(Issue(severity="error", stage=stage, file="manifest.toml", code="contract-interface",
                       message=f"written for interface {spec.interface}, the engine {spec.engine} runs "
                       f"{schema.interface}: refused (another interface version may name fields or "
                       "forms this one does not have)"))  # fmt: skip
    checker = _checker(schema.interface)
    if checker is None or spec.content_dir is None:
        return
    from ringfence.agent import _rules

    staged = [
        _rules._Staged(checker, name, os.path.join(spec.content_dir, name))
        for name in spec.files
        if name.endswith(_CHECKERS[checker])
    ]
    if not staged:
        return
    if checker == "sigma":
        report = _rules._check_sigma(staged, spec.settings)
    elif checker == "yara":
        report = _rules._check_yara(staged)
    else:
        report = _rules._check_ioc(staged)
    for i in report.issues:
        code = i.code
        if contract_only and code not in CONTRACT_CODES:
            continue
        severity = "error" if code in BLOCKING_CODES else i.severity
        where = "contract" if code in CONTRACT_CODES else "static"
        out.send(Issue(severity=severity, stage=where, file=i.file, line=i.line, rule=i.rule,
                       message=i.message, code=code))  # fmt: skip


class _Host:
    """The engine, hosted as the SDK runtime hosts it: each event to the handler its manifest asks for."""

    def __init__(self, ext: Any) -> None:
        from ringfence.events import AuthRequest, EventKind, FileWritten, event_kind

        self.ext = ext
        manifest = ext.manifest
        self.events = frozenset(manifest.subscribes)
        self.auth = frozenset(manifest.auth.kinds) if manifest.auth is not None else frozenset()
        # file.written goes to on_file with the file's descriptor, which no recorded or generated event has
        self.kinds = (self.events | self.auth) - {EventKind.FILE_WRITTEN}
        self._kind_of, self._auth_request, self._written = event_kind, AuthRequest, FileWritten

    def deliver(self, event: Any) -> None:
        """Raises whatever the handler raises."""
        if isinstance(event, self._written):
            return
        kind = self._kind_of(event)
        if kind in self.auth and isinstance(event, self._auth_request):
            self.ext.on_auth(event, None)
        elif kind in self.events:
            self.ext.on_event(event)


def _load(spec: ChildSpec, cls: Any, ctx: _Context, out: _Out) -> _Host | None:
    out.send(Stage("load"))
    try:
        ext = cls() if isinstance(cls, type) else cls
        ext.setup(ctx)
    except Exception as e:  # noqa: BLE001 (the engine's verdict on the package: a blocking issue)
        text = " ".join(f"{type(e).__name__}: {e}".split())[:4000]
        if spec.content_dir:  # name the package's files as the package does, not by the private copy
            text = text.replace(spec.content_dir.rstrip("/") + "/", "")
        out.send(Issue(severity="error", stage="load", message=f"the engine's setup failed: {text}"))
        return None
    if ctx.problem:  # what it left out: each is an issue of the static stage already
        problem = (
            ctx.problem.replace(spec.content_dir.rstrip("/") + "/", "") if spec.content_dir else ctx.problem
        )
        out.send(Issue(severity="info", stage="load", message=f"the engine loaded, and reports: {problem}"))
    return _Host(ext)


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def _corpus(spec: ChildSpec, host: _Host, ctx: _Context, out: _Out) -> None:
    from ringfence.events import OcsfDecodeError, decode_line

    out.send(Stage("corpus"))
    for corpus in spec.corpus:
        ctx.findings = {}
        times: list[int] = []
        bad = 0
        with open(corpus.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    event = decode_line(line)
                except OcsfDecodeError as e:
                    bad += 1
                    out.send(Issue(severity="warning", stage="corpus", file=corpus.name, line=n,
                                   message=f"not an event the agent writes: {e}"))  # fmt: skip
                    continue
                out.progress(len(times))  # before the event: the parent's per-event deadline runs from here
                start = time.perf_counter_ns()
                try:
                    host.deliver(event)
                except Exception as e:  # noqa: BLE001 (the engine raised on a recorded event: blocking)
                    out.send(Issue(severity="error", stage="corpus", file=corpus.name, line=n,
                                   message=f"the engine raised {type(e).__name__}: {e}"))  # fmt: skip
                times.append(time.perf_counter_ns() - start)
        with contextlib.suppress(Exception):  # a dedup window's summary; a raise here was seen above
            host.ext.on_tick()
        times.sort()
        latency = Latency(events=len(times), p50_ms=_percentile(times, 0.5), p99_ms=_percentile(times, 0.99),
                          max_ms=times[-1] / 1e6 if times else 0.0)  # fmt: skip
        out.send(CorpusResult(name=corpus.name, events=len(times), bad_lines=bad, findings=dict(ctx.findings),
                              latency=latency))  # fmt: skip


def _fuzz(spec: ChildSpec, host: _Host, out: _Out) -> None:
    from ringfence.agent._fuzz import fuzz

    out.send(Stage("fuzz"))
    result = fuzz(host.deliver, host.kinds, spec.fuzz_seconds, spec.seed, out.progress)
    if result.failure is not None:
        out.send(Issue(severity="error", stage="fuzz",
                       message=f"the engine raised {result.failure} on a generated event (the smallest "
                       f"hypothesis found, seed {spec.seed}): {result.failing_event}"))  # fmt: skip
    out.send(FuzzDone(events=result.events, rounds=result.rounds))


def main() -> int:
    spec = msgspec.json.decode(os.environ.pop(CHILD_ENV, ""), type=ChildSpec)
    enter(spec.sandbox, spec.policy, spec.prepared)
    out = _Out(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # the engine's (or a library's) prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(levelname)s %(message)s")
    cls = _engine_class(spec)
    schema = _schema_of(cls)
    if spec.mode == "schema":
        if schema is None:
            out.send(
                Issue(
                    severity="error",
                    stage="contract",
                    message=f"{spec.engine} declares no content "
                    "schema (Extension.content_schema): it takes no content the tooling can check",
                )
            )
        else:
            out.send(Schema(msgspec.Raw(msgspec.json.encode(schema))))
        out.send(Done())
        return 0
    if schema is None:
        out.send(
            Issue(
                severity="error",
                stage="contract",
                message=f"{spec.engine} declares no content schema "
                "(Extension.content_schema): its content cannot be checked against a contract",
            )
        )
    else:
        _static(spec, schema, out, contract_only=spec.mode == "contract")
    if spec.mode == "validate":
        ctx = _Context(spec)
        host = _load(spec, cls, ctx, out)
        if host is not None:
            if spec.corpus:
                _corpus(spec, host, ctx, out)
            if spec.fuzz_seconds > 0:
                _fuzz(spec, host, out)
            with contextlib.suppress(Exception):
                host.ext.teardown()
    out.send(Done())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
