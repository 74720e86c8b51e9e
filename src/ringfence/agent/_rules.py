"""`ringfence rules check|list` and `ringfence run --rules`: what Sigma, YARA and IOC content would load.

The root CLI never parses content: `check_paths` copies the operator's files (root reads them) into a
private directory, then runs each engine's own loader in a child process, inside the extension sandbox
(the sandbox user, no capabilities, cgroups, Landlock, seccomp) when run as root, else as the caller.
The child is this module, `python -I -m ringfence.agent._rules`: it enters the sandbox first (a cgroup
of its own, `extensions.memory_mb`, the extension user), only then imports the engines, and prints one
`RulesReport` as JSON on stdout, which the parent reads with a size bound and a deadline. What is printed
has its control characters escaped (`printable`): content must not drive the operator's terminal.

`run --rules` first refuses any file another user could change (`trust_problems`, the content store's
rule), then checks, then adds the files to `[extensions.content."<id>"]` (`with_rules`).

Files, by name: Sigma `.yml`/`.yaml`, YARA `.yar`/`.yara`, IOC `.ioc` (plain lists) and `.json` (STIX
2.1). A directory is searched below (hidden entries skipped); a file named on its own must have one of
those suffixes.

Errors (under the agent's root, `AgentError`):
    RulesCheckError     the check itself could not run (the child failed, timed out or said nothing
                        usable); content problems are not errors but `RuleIssue`s in the report
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ringfence.agent._child import (
    STDERR_TAIL_BYTES,
    SandboxedChild,
    copy_file,
    enter,
    exit_text,
    safe_name,
    spawn,
)
from ringfence.agent._config import Config, ExtensionsSection, with_overrides
from ringfence.agent._content import untrusted_path
from ringfence.agent._errors import AgentError

SUFFIXES = {
    "sigma": (".yml", ".yaml"),
    "yara": (".yar", ".yara"),
    "ioc": (".ioc", ".json"),
}
ENGINE_IDS = {"sigma": "ringfence.sigma", "yara": "ringfence.yara"}  # ioc: the IOC engine's id in force
CHILD_ENV = "RINGFENCE_RULES_CHECK"
CHECK_TIMEOUT_S = 120.0
MAX_REPORT_BYTES = 64 << 20


class RulesCheckError(AgentError):
    """The check could not run; one line saying why."""


class RuleIssue(msgspec.Struct, frozen=True, kw_only=True):
    engine: str  # sigma, yara, ioc; "" for a path that is none of them
    severity: str  # error (blocking), warning, info
    file: str  # the operator's path
    line: int | None = None
    rule: str | None = None  # the rule id, where the engine knows it
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        rule = f" rule {self.rule}:" if self.rule else ""
        return printable(f"{where}:{rule} {self.severity}: {self.message}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters escaped: content (and file names) must not drive the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EngineReport(msgspec.Struct, frozen=True, kw_only=True):
    engine: str
    files: int
    loaded: int  # rules (Sigma, YARA) or indicators (IOC) that would load
    counts: dict[str, int] = {}  # Sigma: per logsource; YARA: block rules; IOC: per kind
    rules: list[str] = []  # one line per rule (Sigma, YARA) or per file (IOC)
    issues: list[RuleIssue] = []


class RulesReport(msgspec.Struct, frozen=True, kw_only=True):
    engines: list[EngineReport] = []
    issues: list[RuleIssue] = []  # paths that could not be read or are of no engine

    def all_issues(self) -> list[RuleIssue]:
        return [*self.issues, *(i for e in self.engines for i in e.issues)]

    @property
    def blocking(self) -> list[RuleIssue]:
        return [i for i in self.all_issues() if i.severity == "error"]


class Found(msgspec.Struct, frozen=True):
    engine: str
    path: str  # absolute


def engine_of(name: str) -> str | None:
    """The engine a file is for, by its suffix (case matters: the engines find their files so)."""
    return next((engine for engine, suffixes in SUFFIXES.items() if name.endswith(suffixes)), None)


def find_files(paths: Sequence[str]) -> tuple[list[Found], list[RuleIssue]]:
    """The content files that `paths` name (files, or directories searched below), and every problem."""
    found: list[Found] = []
    issues: list[RuleIssue] = []
    for given in paths:
        path = os.path.abspath(given)
        if os.path.isdir(path):
            inside = _walk(path)
            found += inside
            if not inside:
                issues.append(_issue(path, "warning", "no Sigma, YARA or IOC files in this directory"))
        elif not os.path.lexists(path):
            issues.append(_issue(path, "error", "no such file or directory"))
        elif (engine := engine_of(path)) is None:
            issues.append(_issue(path, "error", _NO_ENGINE))
        else:
            found.append(Found(engine, path))
    return found, issues


_NO_ENGINE = "not a Sigma (.yml, .yaml), YARA (.yar, .yara) or IOC (.ioc, STIX .json) file"


def _issue(path: str, severity: str, message: str) -> RuleIssue:
    return RuleIssue(engine="", severity=severity, file=path, message=message)


def _walk(root: str) -> list[Found]:
    out = []
    for current, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            engine = engine_of(name)
            if engine is not None and not name.startswith("."):
                out.append(Found(engine, os.path.join(current, name)))
    return out


# --- the root side: copy, spawn, read the report -------------------------------------------------


class _Staged(msgspec.Struct, frozen=True):
    engine: str
    origin: str  # the operator's path: what issues name
    staged: str  # the copy the child reads


class _ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    files: list[_Staged]
    sigma_settings: dict[str, Any] = {}  # [extensions.config."ringfence.sigma"]: its placeholders
    sandbox: bool
    policy: msgspec.Raw = msgspec.Raw(b"null")
    prepared: msgspec.Raw = msgspec.Raw(b"null")


def check_paths(
    paths: Sequence[str],
    extensions: ExtensionsSection | None = None,
    *,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> RulesReport:
    """What would load from `paths`, per engine, with every problem. The engines' loaders run in a child:
    sandboxed (as `extensions.user`, within `extensions.memory_mb`, as the engines run) when we are root,
    else as the caller; the Sigma engine's settings give its `|expand` placeholders. Raises
    RulesCheckError."""
    extensions = extensions or ExtensionsSection()
    found, issues = find_files(paths)
    work = tempfile.mkdtemp(prefix="ringfence-rules-")  # 0700: only root (and, below, the sandbox)
    try:
        staged = _stage(found, work, issues)
        sigma = extensions.config.get(ENGINE_IDS["sigma"], {})
        spec = _ChildSpec(files=staged, sigma_settings=dict(sigma), sandbox=False)
        report = _run_child(spec, work, extensions, timeout_s) if staged else RulesReport()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RulesReport(engines=report.engines, issues=[*issues, *report.issues])


def _stage(found: list[Found], work: str, issues: list[RuleIssue]) -> list[_Staged]:
    out = []
    for n, item in enumerate(found):
        dest = os.path.join(work, item.engine, f"{n:04d}-{safe_name(os.path.basename(item.path))}")
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        problem = copy_file(item.path, dest)
        if problem is None:
            out.append(_Staged(item.engine, item.path, dest))
        else:
            issues.append(RuleIssue(engine=item.engine, severity="error", file=item.path, message=problem))
    return out


def _run_child(spec: _ChildSpec, work: str, extensions: ExtensionsSection, timeout_s: float) -> RulesReport:
    with SandboxedChild("rules-check", "rules check", work, extensions, RulesCheckError) as child:
        try:
            return _spawn(msgspec.structs.replace(spec, **child.spec_fields()), timeout_s)
        except RulesCheckError as e:
            if (oom := child.out_of_memory()) is not None:
                raise RulesCheckError(f"rules check: the checker {oom}") from e
            raise


def _spawn(spec: _ChildSpec, timeout_s: float) -> RulesReport:
    with spawn("ringfence.agent._rules", CHILD_ENV, spec) as proc:
        try:
            out, err = _read_bounded(proc, time.monotonic() + timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        last = (err.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        raise RulesCheckError(f"rules check: the checker failed ({exit_text(proc.returncode)}): {last}")
    try:
        return msgspec.json.decode(out, type=RulesReport)
    except msgspec.DecodeError as e:
        raise RulesCheckError(f"rules check: the checker's report does not decode: {e}") from e


def _read_bounded(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """The child's stdout (at most MAX_REPORT_BYTES) and the tail of its stderr, until both close and it
    exits, by `deadline` (time.monotonic). Raises RulesCheckError: the caller kills the child."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            ready = sel.select(left) if left > 0 else []
            if not ready:
                raise RulesCheckError("rules check: the checker did not finish in time")
            for key, _ in ready:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                key.data.extend(chunk)
            if len(out) > MAX_REPORT_BYTES:
                raise RulesCheckError(f"rules check: the checker wrote more than {MAX_REPORT_BYTES} bytes")
            del err[: max(0, len(err) - STDERR_TAIL_BYTES)]
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RulesCheckError("rules check: the checker did not exit in time") from None
    return bytes(out), bytes(err)


# --- run --rules -----------------------------------------------------------------------------------


def trust_problems(found: Sequence[Found]) -> list[RuleIssue]:
    """Files the agent would refuse to stage (see agent/_content.py), found before root reads a byte of
    them for the check: one another user could change, or a path another user could redirect."""
    issues = []
    for item in found:
        problem = untrusted_path(item.path)
        if problem is None:
            try:
                st = os.stat(item.path)
            except OSError as e:
                problem = f"cannot stat: {e.strerror}"
            else:
                if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    problem = (
                        f"it is uid {st.st_uid}, mode {st.st_mode & 0o7777:o}: the agent hands over only "
                        "content that only root can change (root's, not writable by group or others)"
                    )
        if problem is not None:
            issues.append(RuleIssue(engine=item.engine, severity="error", file=item.path, message=problem))
    return issues


def rules_content_name(n: int, path: str) -> str:
    """The content name of the n-th file of `--rules` (counted over every engine), as the agent stages it."""
    return f"rules-{n:03d}-{safe_name(os.path.basename(path))}"


def with_rules(config: Config, found: Sequence[Found], ioc_id: str) -> Config:
    """`config` with each found file added to its engine's content ([extensions.content."<id>"]) and
    that engine enabled (and no longer disabled)."""
    content = {ext_id: dict(files) for ext_id, files in config.extensions.content.items()}
    ids = {**ENGINE_IDS, "ioc": ioc_id}
    for n, item in enumerate(found):
        name = rules_content_name(n, item.path)
        content.setdefault(ids[item.engine], {})[name] = item.path
    wanted = {ids[item.engine] for item in found}
    enabled = list(config.extensions.enabled)
    have = {name.partition("=")[0] for name in enabled}
    enabled += sorted(wanted - have)
    disabled = tuple(d for d in config.extensions.disabled if d not in wanted)
    return with_overrides(
        config, extensions={"content": content, "enabled": tuple(enabled), "disabled": disabled}
    )


# --- what the commands print ---------------------------------------------------------------------


def render(report: RulesReport, *, list_rules: bool = False) -> list[str]:
    """Per engine: files and what loads (per logsource, kind), the rules with `list_rules`; then every
    issue, one a line; then the totals."""
    lines: list[str] = []
    for e in report.engines:
        noun = "indicators" if e.engine == "ioc" else "rules"
        lines.append(printable(f"{e.engine}: {e.files} files, {e.loaded} {noun} would load"))
        lines += [printable(f"  {name}: {count}") for name, count in sorted(e.counts.items())]
        if list_rules:
            lines += [printable(f"    {r}") for r in e.rules]
    issues = report.all_issues()
    lines += [str(i) for i in issues]
    errors = len(report.blocking)
    lines.append(f"{errors} errors, {len(issues) - errors} warnings and notes")
    return lines


def summary(report: RulesReport) -> str:
    """One line: what loads per engine (for `run --rules`)."""
    parts = [f"{e.engine} {e.loaded} from {e.files} files" for e in report.engines]
    return printable("--rules: " + (", ".join(parts) or "nothing to load"))


# --- the child: `python -I -m ringfence.agent._rules` --------------------------------------------


def _child_main() -> int:
    spec = msgspec.json.decode(os.environ.pop(CHILD_ENV, ""), type=_ChildSpec)
    enter(spec.sandbox, spec.policy, spec.prepared)
    engines = []
    sigma = spec.sigma_settings
    for engine, check in (
        ("sigma", lambda f: _check_sigma(f, sigma)),
        ("yara", _check_yara),
        ("ioc", _check_ioc),
    ):
        files = [f for f in spec.files if f.engine == engine]
        if files:
            engines.append(check(files))
    sys.stdout.buffer.write(msgspec.json.encode(RulesReport(engines=engines)))
    return 0


def _check_sigma(files: list[_Staged], settings: Mapping[str, Any]) -> EngineReport:
    from ringfence.engines.sigma import SettingsError, SigmaConfig, load_files

    try:
        placeholders = SigmaConfig.from_settings(settings, None).placeholders
    except SettingsError as e:
        issue = RuleIssue(engine="sigma", severity="error", file=_SIGMA_SETTINGS, message=str(e))
        return EngineReport(engine="sigma", files=len(files), loaded=0, issues=[issue])
    rules = load_files([(f.origin, f.staged) for f in files], placeholders)
    counts = {f"active {source}": index.rule_count for source, index in rules.indexes.items()}
    counts |= {f"waiting {name}": n for name, n in rules.waiting.items()}
    if rules.correlations:
        counts["correlations"] = len(rules.correlations)
    issues = [
        RuleIssue(engine="sigma", severity=str(i.severity), file=i.file, line=i.line, rule=i.rule,
                  message=i.message)
        for i in rules.issues
    ]  # fmt: skip
    listed = [f"{r.id}  {r.logsource}  {r.title}  ({r.file})" for r in rules.rules]
    return EngineReport(
        engine="sigma", files=len(files), loaded=rules.loaded, counts=counts, rules=listed, issues=issues
    )


_SIGMA_SETTINGS = '[extensions.config."ringfence.sigma"]'


def _check_yara(files: list[_Staged]) -> EngineReport:
    from ringfence.engines.yara import YaraConfig
    from ringfence.engines.yara._rules import compile_files

    directory = os.path.dirname(files[0].staged)
    origins = {f.staged: f.origin for f in files}
    names = [os.path.basename(f.staged) for f in files]
    compiled = compile_files(directory, names, directory, max_file_bytes=YaraConfig().max_rules_file_bytes)
    issues = [
        RuleIssue(engine="yara", severity=str(i.severity), file=origins.get(i.source, i.source), line=i.line,
                  message=_name_origins(i.message, origins))
        for i in compiled.issues
    ]  # fmt: skip
    rs = compiled.ruleset
    if rs is None or rs.rules is None:
        return EngineReport(engine="yara", files=len(files), loaded=0, issues=issues)
    listed = [f"{r.namespace}.{r.identifier}  tags: {', '.join(r.tags) or '-'}" for r in rs.rules]
    return EngineReport(
        engine="yara", files=len(files), loaded=rs.rule_count, counts={"tagged block": rs.block_rule_count},
        rules=listed, issues=issues,
    )  # fmt: skip


def _name_origins(text: str, origins: dict[str, str]) -> str:
    for staged, origin in origins.items():
        text = text.replace(staged, origin)
    return text


def _check_ioc(files: list[_Staged]) -> EngineReport:
    from ringfence.engines.ioc import IocBuilder, IocConfig
    from ringfence.engines.ioc._load import format_of, read_file

    builder = IocBuilder()
    found: list[Any] = []
    for f in files:
        read_file(builder, f.staged, f.origin, max_bytes=IocConfig().max_file_bytes, issues=found,
                  now_s=time.time())  # fmt: skip
    iocs = builder.build(found)
    issues = [
        RuleIssue(engine="ioc", severity=str(i.severity), file=i.source, line=i.line, message=i.message)
        for i in found
    ]
    listed = [f"{f.origin}  ({format_of(f.origin)})" for f in files]
    return EngineReport(
        engine="ioc", files=len(files), loaded=len(iocs), counts=iocs.counts(), rules=listed, issues=issues
    )


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(_child_main())
