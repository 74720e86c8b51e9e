"""The YARA engine's handlers: at exec (AUTH) scan the executable, deny on a `block` rule, report the
rest; on close-write (`on_file`) scan the file just written and report every match (see `_written.py`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ringfence.engines.yara._config import YaraConfig
from ringfence.engines.yara._memo import MemoKey, MemoStatistics, ResultMemo, hash_key, stat_key
from ringfence.engines.yara._scan import FileScanner, Outcome, RuleMatch, ScanResult, read_fd
from ringfence.engines.yara._watch import RulesStatistics, WatchedRules
from ringfence.sdk import (
    AuthAnswer,
    AuthFile,
    AuthParticipation,
    AuthRequest,
    ContentSchema,
    Context,
    EventKind,
    Extension,
    FailurePolicy,
    FileWritten,
    Manifest,
    Permission,
    Severity,
    allow,
    deny,
)

CONTENT_INTERFACE = "yara@1"
RULE_PREFIX = "yara."  # a finding's `rule` is this plus the YARA rule's name
MAX_FINDINGS_PER_FILE = 16  # matches beyond it are counted, not reported one by one
_ORDINARY = frozenset({"too_large", "no_descriptor", "past_deadline"})
_SEVERITIES = {s.name.lower(): s for s in Severity} | {"info": Severity.INFORMATIONAL}


@dataclass(frozen=True, slots=True)
class YaraStatistics:
    requests: int
    scans: int  # files read and scanned (memo misses that were scanned)
    scanned_bytes: int
    matches: int  # rule matches, from scans and from the memo
    denied: int
    allowed: int
    findings: int
    findings_capped: int  # matches over MAX_FINDINGS_PER_FILE, not reported
    timeouts: int  # allowed uncached: the scan ran out of time
    too_large: int  # allowed uncached: over max_scan_bytes
    read_errors: int  # allowed uncached: the descriptor could not be read
    scan_errors: int  # allowed uncached: yara-x failed otherwise
    no_descriptor: int  # allowed uncached: the request came without a file
    past_deadline: int  # not scanned: it waited past its deadline, the agent answered by itself
    changed_while_scanned: int  # answered uncached and not remembered: the file changed during the read
    written: int  # file.written notices: files closed after writing under the agent's scan paths
    written_scans: int  # of them, scanned (the others: unchanged, too large, failed, no rules)
    written_unchanged: int  # a version already scanned (the memo, keyed by content): nothing raised again
    written_too_large: int  # over close_write_max_bytes: not scanned
    written_failed: int  # unreadable, timed out, or yara-x failed: not scanned, logged
    rule_reloads: int  # other rules came into force after the first load
    unchanged_reloads: int  # new files, same rules: no verdict flush
    rules: RulesStatistics  # rules in force, content version, compile errors
    memo: MemoStatistics


class YaraEngine(Extension):
    # The longest a scan may take (scan_timeout_s at most 8, plus the second yara-x may add, plus the
    # read): the agent caps it at broker.auth_deadline_ms, 250 ms by default.
    manifest = Manifest(
        id="ringfence.yara",
        vendor="Ringfence",
        version="1.0.0",
        subscribes=frozenset({EventKind.FILE_WRITTEN}),  # needs FILE_CONTENTS: each comes with its fd
        auth=AuthParticipation(
            kinds=frozenset({EventKind.AUTH_EXEC}), deadline_ms=10_000, failure=FailurePolicy.FAIL_OPEN
        ),
        permissions=frozenset({Permission.FILE_CONTENTS}),
        content_interface=CONTENT_INTERFACE,  # .yar/.yara files that yara-x compiles, no include
        description=(
            "Scans executables with YARA rules (yara-x) at exec, denying on a rule tagged block, and files "
            "written under the agent's close-write paths, raising findings."
        ),
    )

    @classmethod
    def content_schema(cls) -> ContentSchema:
        """YARA rules see the file's bytes only: no fields, no external variables, no include."""
        return ContentSchema(
            interface=CONTENT_INTERFACE,
            kinds=("auth.exec", "file.written"),
            files=(".yar", ".yara"),
            notes="YARA rules compiled together by yara-x; they see the bytes of the executable (at exec) "
            "or of the written file, no external variables and no include; a rule tagged block denies "
            "the exec; metadata severity, and ATT&CK in metadata or tags, go into findings.",
        )

    def __init__(self, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._n: dict[str, int] = dict.fromkeys(
            ("requests", "scans", "scanned_bytes", "matches", "denied", "allowed", "findings",
             "findings_capped", "timeouts", "too_large", "read_errors", "scan_errors", "no_descriptor",
             "past_deadline", "written", "written_scans", "written_unchanged", "written_too_large",
             "written_failed",
             "changed_while_scanned", "rule_reloads", "unchanged_reloads"),
            0,
        )  # fmt: skip

    def setup(self, ctx: Context) -> None:
        """Validate settings and compile the rules of the content directory; raises `SettingsError` or
        `RulesError` (every issue at once, in one line), so that broken rules stop the extension instead
        of running without them, and the agent refuses to start with that line."""
        super().setup(ctx)
        self._config = YaraConfig.from_settings(ctx.settings, ctx.content_dir)
        self._memo = ResultMemo(self._config.memo_entries)
        self._watched = WatchedRules(self._config, self._clock, ctx.log)
        self._watched.load()
        self._scanner = self._new_scanner()
        self._problem: str | None = None
        if self._watched.current.rules is None:
            ctx.log.warning('no YARA rules: give .yar files in [extensions.content."ringfence.yara"]')

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        self._n["requests"] += 1
        if self._watched.current.rules is None:  # nothing to match: no read
            self._n["allowed"] += 1
            return allow(cacheable=True)
        checked = self._check(request, file)
        if not isinstance(checked, os.stat_result):
            return self._uncached(checked[0], request, checked[1])
        assert file is not None  # _check refuses a request without one
        key = hash_key(request.sha256) if request.sha256 else stat_key(checked)
        result = self._memo.get(key)
        if result is not None:
            return self._answer(request, result, cacheable=True)
        return self._scan(request, file, key)

    def on_file(self, notice: FileWritten, file: AuthFile) -> None:
        """A file just closed after writing: scan it once per content version and report each match. After
        the fact, so nothing is denied here; the result is remembered under the content's sha256, which is
        what the agent sends at the exec of a file this fresh, so that exec costs a memo lookup."""
        self._n["written"] += 1
        if self._watched.current.rules is None:
            return
        data = self._read_written(notice, file)
        if data is None:
            return
        digest = hashlib.sha256(data).hexdigest()
        key = hash_key(digest)
        if self._memo.get(key) is not None:
            self._n["written_unchanged"] += 1
            return
        result = self._scanner.scan_bytes(data)
        self._n["written_scans"] += 1
        self._n["scanned_bytes"] += result.scanned_bytes
        if result.outcome is not Outcome.SCANNED:
            self._n["written_failed"] += 1
            self.ctx.log.warning(
                "written file not scanned: %s: %s", notice.path, result.detail or result.outcome
            )
            return
        result = dataclasses.replace(result, sha256=digest)
        self._memo.put(key, result)
        self._report_written(notice, result)

    def _read_written(self, notice: FileWritten, file: AuthFile) -> bytes | None:
        """The file's bytes, or None (counted) when it is too large or cannot be read."""
        try:
            data = read_fd(file.fd, self._config.close_write_max_bytes)
        except OSError as e:
            self._n["written_failed"] += 1
            self.ctx.log.warning("written file not scanned: %s: read failed: %s", notice.path, e.strerror)
            return None
        if data is None:
            self._n["written_too_large"] += 1
            self.ctx.log.debug("written file not scanned: %s: over close_write_max_bytes", notice.path)
        return data

    def _report_written(self, notice: FileWritten, result: ScanResult) -> None:
        self._n["matches"] += len(result.matches)
        shown = sorted(result.matches, key=lambda m: not m.blocks)[:MAX_FINDINGS_PER_FILE]
        self._n["findings_capped"] += len(result.matches) - len(shown)
        name = PurePosixPath(notice.path).name or notice.path
        for match in shown:
            self._n["findings"] += 1
            if match.blocks:  # cannot block after the fact; its exec will be denied (the memo has it)
                title, severity = f"Written file {name} matches YARA block rule {match.rule}", Severity.HIGH
            else:
                title, severity = f"YARA rule {match.rule} matched written file {name}", Severity.MEDIUM
            self.ctx.emit_finding(
                title,
                max(severity, _meta_severity(match)),
                rule=RULE_PREFIX + match.rule,
                description=_describe(notice.path, match, "written"),
                process=notice.process,
                file_path=notice.path,
                file_sha256=result.sha256,
                action="detected",
                related_event=notice.header.id,
                techniques=match.techniques,
                tactics=match.tactics,
            )

    def _check(self, request: AuthRequest, file: AuthFile | None) -> os.stat_result | tuple[str, str]:
        """The open file's status when it is to be scanned, else why not: (counter, reason)."""
        if file is None:
            return "no_descriptor", "no descriptor came with the request"
        if request.deadline_ns and self._clock() >= request.deadline_ns:
            return "past_deadline", "the agent has answered it already"
        try:
            st = os.fstat(file.fd)
        except OSError as e:
            return "read_errors", f"fstat failed: {e.strerror}"
        if st.st_size > self._config.max_scan_bytes:
            return "too_large", f"{st.st_size} bytes > max_scan_bytes"
        return st

    def on_tick(self) -> None:
        """Recompiles happen here, never on the AUTH path. New rules must apply to files the kernel already
        caches as allowed (they raise no AUTH request): the verdict cache is flushed when the rules really
        changed. A refused version is reported to the agent, and the last good rules stay."""
        old = self._watched.current.version
        if self._watched.poll():
            if self._watched.current.version == old:
                self._n["unchanged_reloads"] += 1
            else:
                self._n["rule_reloads"] += 1
                self._memo.clear()
                self._scanner = self._new_scanner()
                self.ctx.invalidate_verdicts("YARA rules reloaded")
        if self._watched.problem != self._problem:
            self._problem = self._watched.problem
            self.ctx.report_problem(self._problem)

    def teardown(self) -> None:
        """Log the counters: the SDK has no channel for an extension's own statistics yet."""
        self.ctx.log.info("yara statistics at shutdown: %s", self.statistics())

    def statistics(self) -> YaraStatistics:
        return YaraStatistics(**self._n, rules=self._watched.statistics(), memo=self._memo.statistics())

    def _new_scanner(self) -> FileScanner:
        return FileScanner(
            self._watched.current,
            timeout_s=self._config.scan_timeout_s,
            max_bytes=self._config.max_scan_bytes,
            log=self.ctx.log,
        )

    def _scan(self, request: AuthRequest, file: AuthFile, key: MemoKey) -> AuthAnswer:
        result = self._scanner.scan_fd(file.fd, digest=key[0] == "sha256")
        self._n["scans"] += 1
        self._n["scanned_bytes"] += result.scanned_bytes
        if result.outcome is not Outcome.SCANNED:
            counter = {
                Outcome.TOO_LARGE: "too_large",
                Outcome.TIMEOUT: "timeouts",
                Outcome.READ_ERROR: "read_errors",
            }.get(result.outcome, "scan_errors")
            return self._uncached(counter, request, result.detail or str(result.outcome))
        complete = self._unchanged(file, key, result)
        if complete:
            self._memo.put(key, result)
        else:
            self._n["changed_while_scanned"] += 1
        return self._answer(request, result, cacheable=complete)

    @staticmethod
    def _unchanged(file: AuthFile, key: MemoKey, result: ScanResult) -> bool:
        """Whether what was scanned is the version `key` names: the agent's hash of it, or its metadata
        the same after the read as before."""
        if key[0] == "sha256":
            return result.sha256 == key[1]
        try:
            return stat_key(os.fstat(file.fd)) == key
        except OSError:
            return False

    def _uncached(self, counter: str, request: AuthRequest, why: str) -> AuthAnswer:
        """ALLOW, not cacheable, counted. Logged as a warning when something failed; a file over the size
        limit or a request without a descriptor is ordinary, and logged at DEBUG (big binaries run often)."""
        self._n[counter] += 1
        self._n["allowed"] += 1
        level = logging.DEBUG if counter in _ORDINARY else logging.WARNING
        self.ctx.log.log(
            level, "not scanned, allowing uncached: %s (pid %d): %s", request.path, request.process.pid, why
        )
        return allow(cacheable=False)

    def _answer(self, request: AuthRequest, result: ScanResult, *, cacheable: bool) -> AuthAnswer:
        self._n["matches"] += len(result.matches)
        blocking = result.blocking
        shown = sorted(result.matches, key=lambda m: not m.blocks)[:MAX_FINDINGS_PER_FILE]
        self._n["findings_capped"] += len(result.matches) - len(shown)
        for match in shown:
            self._finding(request, match, result.sha256)
        if blocking:
            self._n["denied"] += 1
            names = ", ".join(m.rule for m in blocking)
            return deny(f"yara: rule(s) tagged block matched: {names}")
        self._n["allowed"] += 1
        return allow(cacheable=cacheable)

    def _finding(self, request: AuthRequest, match: RuleMatch, sha256: str | None) -> None:
        self._n["findings"] += 1
        name = PurePosixPath(request.path).name or request.path
        if match.blocks:
            title, severity, action = (
                f"Blocked execution of {name}: YARA rule {match.rule}",
                Severity.HIGH,
                "denied",
            )
        else:
            title, severity, action = f"YARA rule {match.rule} matched {name}", Severity.MEDIUM, "allowed"
        self.ctx.emit_finding(
            title,
            max(severity, _meta_severity(match)),
            rule=RULE_PREFIX + match.rule,
            description=_describe(request.path, match, "executed"),
            process=request.process,
            file_path=request.path,
            file_sha256=sha256,
            action=action,
            related_event=request.header.id,
            techniques=match.techniques,
            tactics=match.tactics,
        )


def _meta_severity(match: RuleMatch) -> Severity:
    return _SEVERITIES.get(dict(match.metadata).get("severity", "").lower(), Severity.UNKNOWN)


def _describe(path: str, match: RuleMatch, how: str) -> str:
    tags = ", ".join(match.tags) or "none"
    meta = "; ".join(f"{k}={v}" for k, v in match.metadata) or "none"
    text = f"YARA rule {match.namespace}.{match.rule} matched {path} ({how}); tags: {tags}; metadata: {meta}"
    if match.techniques or match.tactics:
        text += "; ATT&CK: " + ", ".join(match.techniques + match.tactics)
    return text if len(text) <= 4000 else text[:3997] + "..."
