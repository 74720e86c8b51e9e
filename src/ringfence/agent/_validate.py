"""`ringfence content validate PKG` (the gauntlet), `content schema ENGINE`, and the agent's check of a
signed package before it activates it.

    validate_package(path, extensions, options) -> ValidationReport   every issue at once
    engine_schema(engine, extensions) -> ContentSchema                 what the engine declares
    package_problem(staged_dir, engine, extensions) -> str | None      the agent's contract check

The root side (this module) reads the package's bytes, its manifest (TOML, as the agent's config) and a
corpus's `expect.toml`, and checks what needs no parsing of content: structure (regular files with
names that stay inside, nothing that is not in the manifest, every checksum) and the expectations. The
content and the recorded events are parsed only in a child in the extension sandbox
(`_validate_child.py`), as `rules check` and `replay` do (`_child.py`), held to budgets by this side:
    memory   the sandbox's cgroup, `extensions.memory_mb` (an OOM kill is named as such)
    time     `load_s` for the static checks and the engine's setup; once events flow, `event_deadline_s`
             of the child's CPU for each event (the child says its progress at least every 0.2 s while
             events pass), or `BLOCKED_AFTER` deadlines of wall time for one that does not run at all
             (a wait that never ends), and the fuzz stage as a whole `fuzz_s` plus `load_s`. CPU, not
             wall time: on a loaded host a child starved of a core for 2 s was killed as hung (CI)
A child that dies (a crash, an abort, an OOM kill) or overruns is killed (its cgroup with it) and is a
blocking issue of the stage it was in, with the tail of what it printed.

A corpus is a directory with `expect.toml` and recorded events (JSON lines, as the agent's events.jsonl):

    attacks = ["attacks.jsonl"]      # files whose events must raise the findings below (default shown)
    benign = ["benign.jsonl"]        # files whose events should raise (almost) nothing (default shown)
    must_fire = ["rule-id", ...]     # each must raise at least one finding on the attack files
    must_not_fire = ["rule-id"]      # must raise nothing on any file
    benign_budget = 0                # findings allowed on the benign files, all rules together
    latency_budget_ms = 20.0         # p99 of an event's handling; over it is a warning (machines differ)

Errors (under the agent's root, `AgentError`):
    ValidateError   the validation could not run (no such package, a corpus that does not read); one line
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import shutil
import signal
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator

import msgspec

from ringfence.agent._child import STDERR_TAIL_BYTES, SandboxedChild, copy_file, exit_text, spawn
from ringfence.agent._config import ExtensionsSection
from ringfence.agent._errors import AgentError
from ringfence.agent._rules import printable
from ringfence.agent._validate_child import (
    CHILD_ENV,
    ChildSpec,
    CorpusFile,
    CorpusResult,
    Done,
    FuzzDone,
    Issue,
    Message,
    Progress,
    Schema,
    Stage,
)
from ringfence.content._errors import PackageError
from ringfence.content._package import (
    MANIFEST,
    MAX_PACKAGE_BYTES,
    Manifest,
    check_manifest,
    file_sha256,
    safe_member_name,
)
from ringfence.sdk import ContentSchema

MODULE = "ringfence.agent._validate_child"
LOAD_S = 60.0
EVENT_DEADLINE_S = 2.0
BLOCKED_AFTER = 10  # event deadlines of wall time without an event finished: blocked, not just slow
_CHECK_S = 0.25  # how often the child's CPU is read while an event runs
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
FUZZ_S = 10.0
SCHEMA_S = 60.0
MAX_MESSAGE_BYTES = 1 << 20
MAX_CORPUS_BYTES = 256 << 20
EXPECT = "expect.toml"
STAGES = ("structure", "contract", "static", "load", "corpus", "fuzz")
SEVERITIES = ("error", "warning", "info")


class ValidateError(AgentError):
    """The validation could not run; one line saying why."""


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    attacks: tuple[str, ...] = ("attacks.jsonl",)
    benign: tuple[str, ...] = ("benign.jsonl",)
    must_fire: tuple[str, ...] = ()
    must_not_fire: tuple[str, ...] = ()
    benign_budget: int = 0
    latency_budget_ms: float = 20.0


class ValidateOptions(msgspec.Struct, frozen=True, kw_only=True):
    corpus: str | None = None
    fuzz_s: float = FUZZ_S
    load_s: float = LOAD_S
    event_deadline_s: float = EVENT_DEADLINE_S
    seed: int = 0
    entries: dict[str, str] = {}  # extension id -> module:attr ([extensions] enabled "id=module:attr")


class ValidationReport(msgspec.Struct, kw_only=True):
    package: str
    name: str = ""
    engine: str = ""
    version: str = ""
    interface: str = ""
    files: int = 0
    issues: list[Issue] = []
    corpus: list[CorpusResult] = []
    fuzz_events: int = 0

    @property
    def blocking(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]


def _issue(stage: str, message: str, file: str | None = None, severity: str = "error", **kw: object) -> Issue:
    return Issue(severity=severity, stage=stage, file=file, message=message, **kw)  # type: ignore[arg-type]


# --- the package's bytes: read without trusting them -------------------------------------------------


def read_package(path: str, issues: list[Issue]) -> dict[str, bytes]:
    """Every regular file of a package directory or tar with a safe name; each other member, and a name
    that would leave the package (path traversal), is an issue. Raises ValidateError if it cannot read."""
    try:
        if os.path.isdir(path):
            return dict(_read_dir(path, issues))
        if os.path.getsize(path) > MAX_PACKAGE_BYTES:
            raise ValidateError(f"{path}: larger than the package limit of {MAX_PACKAGE_BYTES} bytes")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValidateError(f"{path}: cannot read: {e.strerror}") from None
    return _read_tar(path, data, issues)


def _read_dir(root: str, issues: list[Issue]) -> Iterator[tuple[str, bytes]]:
    total = 0
    for current, dirs, names in os.walk(root):
        dirs.sort()
        for entry in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(current, d))]:
            full = os.path.join(current, entry)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                issues.append(_issue("structure", "not a regular file (a link, device or FIFO)", rel))
                continue
            with open(full, "rb") as f:
                data = f.read(MAX_PACKAGE_BYTES + 1 - total)
            total += len(data)
            if total > MAX_PACKAGE_BYTES:
                raise ValidateError(f"{root}: more than the package limit of {MAX_PACKAGE_BYTES} bytes")
            yield rel, data


def _read_tar(where: str, data: bytes, issues: list[Issue]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = member.name
                shown = printable(name)
                if not member.isreg():
                    issues.append(_issue("structure", "not a regular file (a link, device or FIFO)", shown))
                    continue
                norm = os.path.normpath(name)
                if name.startswith("/") or norm.startswith("..") or norm in (".", "") or "\x00" in name:
                    issues.append(_issue("structure", "the name leaves the package (an absolute path or ..: "
                                         "path traversal)", shown))  # fmt: skip
                    continue
                if norm in files:
                    issues.append(_issue("structure", "a second member of that name", shown))
                    continue
                total += member.size
                if total > MAX_PACKAGE_BYTES:
                    raise ValidateError(f"{where}: more than the package limit of {MAX_PACKAGE_BYTES} bytes")
                f = tar.extractfile(member)
                assert f is not None
                files[norm] = f.read()
    except tarfile.TarError as e:
        raise ValidateError(f"{where}: not a readable tar: {e}") from None
    return files


def check_structure(files: dict[str, bytes], issues: list[Issue]) -> Manifest | None:
    """The manifest (None if there is none that reads), and every checksum and file it does not name."""
    data = files.pop(MANIFEST, None)
    if data is None:
        issues.append(_issue("structure", f"no {MANIFEST} at the top of the package"))
        return None
    try:
        manifest = msgspec.toml.decode(data, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        issues.append(_issue("structure", f"does not read: {e}", MANIFEST))
        return None
    try:
        check_manifest(manifest, MANIFEST)
    except PackageError as e:
        issues.append(_issue("structure", str(e).removeprefix(f"{MANIFEST}: "), MANIFEST))
    if not manifest.sha256:
        issues.append(_issue("structure", "names no sha256 of its files (`ringfence content build` writes "
                             "them)", MANIFEST))  # fmt: skip
    listed = manifest.sha256
    for name in sorted(files):
        if name not in listed:
            if listed:
                issues.append(
                    _issue("structure", "not in the manifest (a file nobody listed)", printable(name))
                )
        elif file_sha256(files[name]) != listed[name]:
            issues.append(_issue("structure", f"sha256 {file_sha256(files[name])} is not the manifest's "
                                 f"{listed[name]}", printable(name)))  # fmt: skip
    for name in sorted(set(listed) - set(files)):
        issues.append(_issue("structure", "in the manifest but not in the package", printable(name)))
    return manifest


# --- the child ---------------------------------------------------------------------------------------


class _Run(msgspec.Struct, kw_only=True):
    messages: list[Message] = []
    issues: list[Issue] = []


def _entry(engine: str, extensions: ExtensionsSection, entries: dict[str, str]) -> str:
    if engine in entries:
        return entries[engine]
    for name in extensions.enabled:
        ext_id, _, entry = name.partition("=")
        if ext_id == engine and entry:
            return entry
    return engine


def _run_child(
    spec: ChildSpec, work: str, extensions: ExtensionsSection, options: ValidateOptions, what: str
) -> _Run:
    with SandboxedChild(
        f"validate-{spec.mode}", what, work, extensions, ValidateError, readable=spec.sys_path
    ) as box:
        spec = msgspec.structs.replace(spec, **box.spec_fields())
        run = _Run()
        proc = spawn(MODULE, CHILD_ENV, spec)
        try:
            stage, err = _read(proc, run, options, spec.fuzz_seconds)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not any(isinstance(m, Done) for m in run.messages):
            oom = box.out_of_memory()
            if stage is not None and stage.startswith("overran:"):
                why = stage.removeprefix("overran:")
                stage = why.partition(" ")[0]
                message = f"killed: {why.partition(' ')[2]}"
            else:
                message = f"the engine's process died ({oom or exit_text(proc.returncode)})"
            tail = _tail(err)
            run.issues.append(_issue(stage or "static", message + (f"; it printed: {tail}" if tail else "")))
    return run


def _tail(err: bytes, lines: int = 12) -> str:
    text = err.decode("utf-8", "replace").strip().splitlines()[-lines:]
    return printable(" | ".join(line.strip() for line in text if line.strip()))[-3000:]


class _Budget:
    """The child's time budgets as its messages arrive: the load budget until events flow, then each
    event's deadline of CPU (read every _CHECK_S of silence, so it may run up to that much late), wall
    time for a child that does not run at all, and the fuzz stage's budget as a whole."""

    def __init__(self, pid: int, options: ValidateOptions, fuzz_s: float) -> None:
        self.pid, self.options, self.fuzz_s = pid, options, fuzz_s
        self.stage: str | None = "static"
        self.progressed = False  # an event has started in this stage: from then on, each has its deadline
        self.started = self.last = time.monotonic()
        self.last_cpu = 0.0  # the child's CPU at the first check after its last message
        self.heard_since_check = True  # /proc is read at the checks only, never per message

    @property
    def per_event(self) -> bool:
        return self.progressed and self.stage not in ("static", "load")

    def heard(self, message: object) -> None:
        if isinstance(message, Stage):
            self.stage, self.progressed = message.stage, False
            self.started = time.monotonic()
        self.progressed |= isinstance(message, Progress)
        self.last, self.heard_since_check = time.monotonic(), True

    def _deadline(self) -> tuple[float, str]:
        o = self.options
        if not self.per_event:  # (hypothesis sets up in the load budget)
            return self.started + o.load_s, "load"
        blocked, stage_end = (
            self.last + o.event_deadline_s * BLOCKED_AFTER,
            self.started + self.fuzz_s + o.load_s,
        )
        if self.stage == "fuzz" and stage_end < blocked:
            return stage_end, "stage"
        return blocked, "blocked"

    def wait_s(self) -> float:
        """How long to wait for the child's next words (<= 0: the budget is spent)."""
        left = self._deadline()[0] - time.monotonic()
        return min(left, _CHECK_S) if self.per_event and left > 0 else left

    def overrun(self) -> str | None:
        """Why the child is out of time now, or None while it is within every budget."""
        o = self.options
        deadline, bound = self._deadline()
        if time.monotonic() < deadline:
            if not self.per_event:
                return None
            cpu = _cpu_s(self.pid)
            if self.heard_since_check:  # the event now running started at most _CHECK_S ago
                self.last_cpu, self.heard_since_check = cpu, False
            if cpu - self.last_cpu <= o.event_deadline_s:
                return None
            return (
                f"an event used over {o.event_deadline_s:g} s of CPU (the per-event deadline): a loop "
                "that does not end, or an event far too slow"
            )
        if bound == "blocked":
            return (
                f"no event finished within {o.event_deadline_s * BLOCKED_AFTER:g} s ({BLOCKED_AFTER} "
                "per-event deadlines) while it used no CPU: a hang, a wait that does not end"
            )
        if bound == "stage":
            return f"did not finish within {self.fuzz_s + o.load_s:g} s (the fuzz stage's budget)"
        return f"did not finish within {o.load_s:g} s (the load budget)"


def _read(proc: object, run: _Run, options: ValidateOptions, fuzz_s: float) -> tuple[str | None, bytes]:
    """Read the child's messages until it ends, holding it to the budgets. Returns the stage it was in
    ("overran:<stage> <why>" when it was killed for time) and the tail of its stderr."""
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    assert proc.stdout is not None and proc.stderr is not None
    decoder = msgspec.json.Decoder(Message)
    buf, err = bytearray(), bytearray()
    budget = _Budget(proc.pid, options, fuzz_s)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            wait = budget.wait_s()
            ready = sel.select(wait) if wait > 0 else []
            if not ready:
                if (why := budget.overrun()) is not None:
                    return f"overran:{budget.stage} {why}", bytes(err)
                continue
            for key, _ in ready:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "err":
                    err.extend(chunk)
                    del err[: max(0, len(err) - STDERR_TAIL_BYTES)]
                    continue
                buf.extend(chunk)
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf[:] = bytes(buf[:nl]), buf[nl + 1 :]
                    message = decoder.decode(line)
                    run.messages.append(message) if not isinstance(message, Progress) else None
                    if isinstance(message, Issue):
                        run.issues.append(message)
                    budget.heard(message)
                if len(buf) > MAX_MESSAGE_BYTES:
                    return f"overran:{budget.stage} said a message over {MAX_MESSAGE_BYTES} bytes", bytes(err)
    return budget.stage, bytes(err)


def _cpu_s(pid: int) -> float:
    """The CPU seconds `pid` has used, all its threads (0 once it is gone: its end is read next)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


# --- the commands ------------------------------------------------------------------------------------


def validate_package(
    path: str, extensions: ExtensionsSection, options: ValidateOptions | None = None
) -> ValidationReport:
    """Every issue of the package at `path` (a tar or a directory). Raises ValidateError when it cannot
    run at all (the package or the corpus cannot be read)."""
    options = options or ValidateOptions()
    issues: list[Issue] = []
    files = read_package(path, issues)
    manifest = check_structure(files, issues)
    report = ValidationReport(package=path, files=len(files), issues=issues)
    if manifest is None:
        return _finish(report)
    m = manifest
    report.name, report.engine, report.version, report.interface = m.name, m.engine, m.version, m.interface
    expect = _read_expect(options.corpus) if options.corpus else None
    work = tempfile.mkdtemp(prefix="ringfence-validate-")
    try:
        content = os.path.join(work, "content")
        names = _write_content(content, files)
        corpus = _stage_corpus(options.corpus, expect, work) if options.corpus and expect else []
        spec = ChildSpec(
            mode="validate", engine=m.engine, entry=_entry(m.engine, extensions, options.entries),
            sys_path=tuple(extensions.import_paths), content_dir=content, files=names, interface=m.interface,
            settings=dict(extensions.config.get(m.engine, {})), corpus=corpus, fuzz_seconds=options.fuzz_s,
            seed=options.seed,
        )  # fmt: skip
        run = _run_child(spec, work, extensions, options, "content validate")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.issues += run.issues
    report.corpus = [msg for msg in run.messages if isinstance(msg, CorpusResult)]
    report.fuzz_events = sum(msg.events for msg in run.messages if isinstance(msg, FuzzDone))
    if expect is not None and report.corpus:  # (no results: the engine did not load, said above)
        report.issues += _expectations(expect, report.corpus)
    return _finish(report)


def _finish(report: ValidationReport) -> ValidationReport:
    order = {s: n for n, s in enumerate(STAGES)}
    report.issues.sort(key=lambda i: (order.get(i.stage, 99), i.file or "", i.line or 0))
    return report


def _write_content(root: str, files: dict[str, bytes]) -> list[str]:
    os.makedirs(root, mode=0o700)
    for name, data in sorted(files.items()):
        dest = os.path.join(root, name)
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as f:
            f.write(data)
    return sorted(files)


def _read_expect(corpus: str) -> Expect:
    path = os.path.join(corpus, EXPECT)
    try:
        with open(path, "rb") as f:
            expect = msgspec.toml.decode(f.read(1 << 20), type=Expect)
    except OSError as e:
        raise ValidateError(f"{path}: cannot read: {e.strerror} (a corpus has an {EXPECT})") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValidateError(f"{path}: {e}") from None
    for name in (*expect.attacks, *expect.benign):
        if not safe_member_name(name) or "/" in name:
            raise ValidateError(f"{path}: {name!r}: corpus files are named as files of the corpus directory")
    return expect


def _stage_corpus(corpus: str, expect: Expect, work: str) -> list[CorpusFile]:
    out = []
    os.makedirs(os.path.join(work, "corpus"), mode=0o700)
    for n, name in enumerate(dict.fromkeys([*expect.attacks, *expect.benign])):
        origin = os.path.join(corpus, name)
        if not os.path.exists(origin) and name in ("attacks.jsonl", "benign.jsonl"):
            continue  # a default file that this corpus does not have
        dest = os.path.join(work, "corpus", f"{n:03d}.jsonl")
        problem = copy_file(origin, dest, MAX_CORPUS_BYTES)
        if problem is not None:
            raise ValidateError(f"{origin}: {problem}")
        out.append(CorpusFile(name=os.path.join(os.path.basename(os.path.normpath(corpus)), name), path=dest))
    return out


def _expectations(expect: Expect, results: list[CorpusResult]) -> list[Issue]:
    issues = []
    by_name = {os.path.basename(r.name): r for r in results}
    attacks = [by_name[n] for n in expect.attacks if n in by_name]
    benign = [by_name[n] for n in expect.benign if n in by_name]
    fired = {rule for r in attacks for rule in r.findings}
    where = attacks[0].name if attacks else EXPECT
    for rule in expect.must_fire:
        if rule not in fired:
            issues.append(_issue("corpus", "must fire on the attack corpus and no longer does", where,
                                 rule=rule))  # fmt: skip
    for r in results:
        for rule in expect.must_not_fire:
            if r.findings.get(rule):
                issues.append(_issue("corpus", f"must not fire, and fired {r.findings[rule]} times", r.name,
                                     rule=rule))  # fmt: skip
    for r in benign:
        total = sum(r.findings.values())
        if total > expect.benign_budget:
            rules = ", ".join(f"{k} ({v})" for k, v in sorted(r.findings.items()))
            issues.append(_issue("corpus", f"{total} findings on the benign corpus, over the budget of "
                                 f"{expect.benign_budget}: {rules}", r.name))  # fmt: skip
    for r in results:
        if r.latency.p99_ms > expect.latency_budget_ms:
            issues.append(_issue("corpus", f"p99 latency {r.latency.p99_ms:.2f} ms per event is over the "
                                 f"budget of {expect.latency_budget_ms:g} ms (max {r.latency.max_ms:.2f} ms)",
                                 r.name, severity="warning"))  # fmt: skip
    return issues


def engine_schema(
    engine: str, extensions: ExtensionsSection, entries: dict[str, str] | None = None
) -> ContentSchema:
    """The content schema `engine` declares, read in the sandboxed child. Raises ValidateError."""
    options = ValidateOptions(load_s=SCHEMA_S, entries=entries or {})
    work = tempfile.mkdtemp(prefix="ringfence-schema-")
    try:
        spec = ChildSpec(mode="schema", engine=engine, entry=_entry(engine, extensions, options.entries),
                         sys_path=tuple(extensions.import_paths))  # fmt: skip
        run = _run_child(spec, work, extensions, options, "content schema")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for message in run.messages:
        if isinstance(message, Schema):
            return msgspec.json.decode(message.schema, type=ContentSchema)
    why = run.issues[0].message if run.issues else "it said nothing"
    raise ValidateError(f"content schema of {engine}: {why}")


CHECK_DID_NOT_RUN = "the contract check could not run"  # a refusal for now, not the contract's verdict


def package_problem(
    staged: str, engine: str, extensions: ExtensionsSection, *, timeout_s: float = LOAD_S
) -> str | None:
    """Why the agent must not activate the package staged at `staged` for `engine`, or None: a checksum
    that does not match its manifest, another interface than the engine's, or content that names fields
    the engine does not supply or compares values of the wrong type (the schema contract). A check that
    cannot run refuses too (fail closed: the active content stays). Never raises."""
    try:
        return _package_problem(staged, engine, extensions, timeout_s)
    except (OSError, AgentError) as e:
        return f"{CHECK_DID_NOT_RUN}: {e}"


def _package_problem(staged: str, engine: str, extensions: ExtensionsSection, timeout_s: float) -> str | None:
    issues: list[Issue] = []
    try:
        files = read_package(staged, issues)
    except ValidateError as e:
        return str(e)
    manifest = check_structure(files, issues)
    problems = [i for i in issues if i.severity == "error" and "names no sha256" not in i.message]
    if manifest is not None and not problems:
        work = tempfile.mkdtemp(prefix="ringfence-contract-")
        try:
            content = os.path.join(work, "content")
            names = _write_content(content, files)
            spec = ChildSpec(
                mode="contract", engine=engine, entry=_entry(engine, extensions, {}),
                sys_path=tuple(extensions.import_paths), content_dir=content, files=names,
                interface=manifest.interface, settings=dict(extensions.config.get(engine, {})),
            )  # fmt: skip
            try:
                run = _run_child(spec, work, extensions, ValidateOptions(load_s=timeout_s), "contract check")
            except ValidateError as e:
                return f"{CHECK_DID_NOT_RUN}: {e}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        problems = [i for i in run.issues if i.severity == "error"]
    if not problems:
        return None
    shown = "; ".join(render_issue(i) for i in problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    return f"refused before loading: {shown}{more}"


def render_issue(i: Issue) -> str:
    where = (i.file or "package") + (f":{i.line}" if i.line is not None else "")
    rule = f" rule {i.rule}:" if i.rule else ""
    return printable(f"{where}:{rule} {i.severity} [{i.stage}]: {i.message}")


def render(report: ValidationReport) -> list[str]:
    m = report
    head = f"{m.package}: {m.name or '?'} {m.version or '?'} for {m.engine or '?'}"
    head += f" ({m.interface or 'no interface'})"
    lines = [printable(head + f", {m.files} files")]
    for r in report.corpus:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(r.findings.items())) or "none"
        lines.append(printable(
            f"  corpus {r.name}: {r.events} events, findings: {rules}; latency p50 {r.latency.p50_ms:.3f} "
            f"ms, p99 {r.latency.p99_ms:.3f} ms, max {r.latency.max_ms:.3f} ms"
        ))  # fmt: skip
    if m.fuzz_events:
        lines.append(f"  fuzz: {m.fuzz_events} generated events")
    lines += [render_issue(i) for i in report.issues]
    errors = len(report.blocking)
    warnings = sum(1 for i in report.issues if i.severity == "warning")
    verdict = "REFUSED" if errors else "passes"
    lines.append(
        f"{verdict}: {errors} blocking, {warnings} warnings, {len(report.issues) - errors - warnings} notes"
    )
    return lines
