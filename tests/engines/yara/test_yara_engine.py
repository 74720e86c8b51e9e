"""The YARA engine's AUTH handler, on real files opened O_RDONLY, with a fake Context and clock."""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.engines.yara.content import BLOCK_RULE, NOTICE_RULE, SLOW_RULE, Content

from ringfence.engines.yara import (
    MAX_FINDINGS_PER_FILE,
    RulesError,
    SettingsError,
    YaraEngine,
    extension,
)
from ringfence.engines.yara._scan import read_fd
from ringfence.sdk import AuthFile, AuthRequest, EventKind, FailurePolicy, Permission, Severity, Verdict

Open = Callable[[str], AuthFile]
MakeRequest = Callable[..., AuthRequest]

EVIL = b"\x7fELF fake binary EVIL-MARKER-1234 tail\n"
SUSPICIOUS = b"#!/bin/sh\n# SUSPICIOUS-MARKER-5678\necho hi\n"
BENIGN = b"#!/bin/sh\necho fine\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def content(tmp_path: Path) -> Content:
    c = Content(tmp_path / "content")
    c.publish({"block.yar": BLOCK_RULE, "notice.yara": NOTICE_RULE})
    return c


@pytest.fixture
def ctx(make_ctx: Callable[..., Any], content: Content) -> Any:
    return make_ctx(content_dir=content.dir)


@pytest.fixture
def engine(ctx: Any, clock: Any) -> YaraEngine:
    eng = YaraEngine(clock=clock)
    eng.setup(ctx)
    return eng


def make_engine(make_ctx: Callable[..., Any], clock: Any, content_dir: str | None, **settings: Any) -> Any:
    ctx = make_ctx(settings=settings, content_dir=content_dir)
    eng = YaraEngine(clock=clock)
    eng.setup(ctx)
    return eng, ctx


def tick(engine: YaraEngine, clock: Any) -> None:
    clock.advance(1)
    engine.on_tick()


def verdict(engine: YaraEngine, path: str, open_ro: Open, make_exec_request: MakeRequest, **kw: Any) -> Any:
    request = make_exec_request(path)
    if kw:
        request = msgspec.structs.replace(request, **kw)
    return engine.on_auth(request, open_ro(path))


# -- the extension as published ---------------------------------------------------------------------------


def test_entry_point_is_the_engine_under_its_manifest_id_and_not_enabled_by_default() -> None:
    assert extension is YaraEngine
    found = {ep.name: ep for ep in entry_points(group="ringfence.extensions")}
    assert found["ringfence.yara"].load() is YaraEngine
    manifest = YaraEngine.manifest
    assert manifest.id == "ringfence.yara"
    assert manifest.auth is not None
    assert manifest.auth.kinds == frozenset({EventKind.AUTH_EXEC})
    assert manifest.auth.failure is FailurePolicy.FAIL_OPEN
    assert manifest.permissions == frozenset({Permission.FILE_CONTENTS})
    assert manifest.content_interface == "yara@1"
    from ringfence.agent._config import ExtensionsSection

    assert "ringfence.yara" not in ExtensionsSection().enabled


# -- verdicts ----------------------------------------------------------------------------------------------


def test_block_rule_match_denied_with_finding_naming_rule_tags_and_metadata(
    engine: YaraEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "dropper", EVIL)
    request = make_exec_request(path)
    answer = engine.on_auth(request, open_ro(path))
    assert (answer.verdict, answer.cacheable) == (Verdict.DENY, False)
    assert answer.reason is not None and "evil_marker" in answer.reason
    [finding] = ctx.findings
    assert finding.title == "Blocked execution of dropper: YARA rule evil_marker"
    assert finding.severity is Severity.HIGH
    assert finding.fields["rule"] == "yara.evil_marker"
    assert finding.fields["action"] == "denied"
    assert finding.fields["file_path"] == path
    assert finding.fields["file_sha256"] == sha(EVIL)
    assert finding.fields["process"] == request.process
    assert finding.fields["related_event"] == request.header.id
    description = finding.fields["description"]
    assert "tags: block, malware" in description
    assert "author=tests" in description and "score=90" in description
    stats = engine.statistics()
    assert (stats.denied, stats.scans, stats.matches, stats.findings) == (1, 1, 1, 1)
    engine.teardown()


def test_non_block_match_raises_finding_and_allows(
    engine: YaraEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "script.sh", SUSPICIOUS)
    answer = verdict(engine, path, open_ro, make_exec_request)
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, True)
    [finding] = ctx.findings
    assert finding.title == "YARA rule suspicious_marker matched script.sh"
    assert finding.severity is Severity.MEDIUM
    assert finding.fields["action"] == "allowed"
    assert "tags: notice" in finding.fields["description"]


def test_severity_metadata_raises_a_finding_never_lowers_it(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    c.publish({
        "r.yar": 'rule crit { meta: severity = "critical" strings: $a = "AAA-MARK" condition: $a }\n'
        'rule low : block { meta: severity = "low" strings: $b = "BBB-MARK" condition: $b }\n'
    })  # fmt: skip
    eng, ctx = make_engine(make_ctx, clock, c.dir)
    path = write(tmp_path / "f", b"AAA-MARK BBB-MARK")
    assert verdict(eng, path, open_ro, make_exec_request).verdict is Verdict.DENY
    severities = {f.fields["rule"]: f.severity for f in ctx.findings}
    assert severities == {"yara.crit": Severity.CRITICAL, "yara.low": Severity.HIGH}


def test_unmatched_file_allowed_cacheable_and_remembered(
    engine: YaraEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "tool", BENIGN)
    for _ in range(2):
        answer = verdict(engine, path, open_ro, make_exec_request)
        assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, True)
    assert ctx.findings == []
    stats = engine.statistics()
    assert (stats.scans, stats.memo.hits, stats.memo.misses) == (1, 1, 1)


def test_remembered_deny_is_denied_again_with_a_finding(
    engine: YaraEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "dropper", EVIL)
    for _ in range(2):
        assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.DENY
    assert engine.statistics().scans == 1
    assert len(ctx.findings) == 2


def test_copy_and_hard_link_of_a_blocked_file_denied(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "dropper", EVIL)
    copy = tmp_path / "innocent-name"
    shutil.copy2(path, copy)
    link = tmp_path / "hard-link"
    os.link(path, link)
    for p in (path, str(copy), str(link)):
        assert verdict(engine, p, open_ro, make_exec_request).verdict is Verdict.DENY, p


def test_file_scanned_through_descriptor_not_path(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "swap", EVIL)
    file = open_ro(path)
    os.unlink(path)
    write(tmp_path / "swap", BENIGN)  # a different file now sits at the path
    assert engine.on_auth(make_exec_request(path), file).verdict is Verdict.DENY


def test_request_without_descriptor_allowed_uncached_and_counted(
    engine: YaraEngine, make_exec_request: MakeRequest
) -> None:
    answer = engine.on_auth(make_exec_request("/usr/bin/true"), None)
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    assert engine.statistics().no_descriptor == 1


def test_unreadable_descriptor_allowed_uncached_and_counted(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    directory = tmp_path / "adir"
    directory.mkdir()
    answer = verdict(engine, str(directory), open_ro, make_exec_request)  # pread: EISDIR
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    assert engine.statistics().read_errors == 1


# -- a file changed after its scan -------------------------------------------------------------------------


def test_file_rewritten_in_place_after_a_clean_scan_is_scanned_again(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "tool", BENIGN + b"# padding so that the size changes\n")
    inode = os.stat(path).st_ino
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    with open(path, "r+b") as f:  # same inode, new contents and size
        f.write(EVIL)
        f.truncate()
    assert os.stat(path).st_ino == inode
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.DENY
    assert engine.statistics().scans == 2


def test_same_size_rewrite_with_mtime_put_back_scanned_again(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    benign = EVIL.replace(b"EVIL", b"GOOD")
    path = write(tmp_path / "tool", benign)
    before = os.stat(path)
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    with open(path, "r+b") as f:
        f.write(EVIL)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("this filesystem gave the rewrite the same ctime (coarse timestamps)")
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.DENY


def test_mmap_write_on_tmpfs_is_caught_by_the_agents_hash_not_served_from_the_memo(
    engine: YaraEngine, tmpfs: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    """On tmpfs, writes through a shared mapping whose page is already dirty change no time: the stat key
    stays the same, so the agent sends its own sha256, and the engine must key on that."""
    benign = EVIL.replace(b"EVIL", b"GOOD")
    path = write(tmpfs / "tool", benign)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:1] = benign[0:1]  # the page is mapped and dirty before the first scan
        before = os.stat(path)
        first = verdict(engine, path, open_ro, make_exec_request, sha256=sha(benign))
        assert first.verdict is Verdict.ALLOW
        m[: len(EVIL)] = EVIL
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            before.st_size, before.st_mtime_ns, before.st_ctime_ns,
        ), "this kernel changed a time on the mapped write: the attack needs the hash no more"  # fmt: skip
        second = verdict(engine, path, open_ro, make_exec_request, sha256=sha(EVIL))
    assert second.verdict is Verdict.DENY


def test_hash_keyed_request_whose_bytes_differ_is_answered_uncached_and_not_remembered(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    """The agent hashed one version; the engine read another (a writer in between): nothing is kept."""
    path = write(tmp_path / "tool", BENIGN)
    answer = verdict(engine, path, open_ro, make_exec_request, sha256=sha(b"another version"))
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    stats = engine.statistics()
    assert (stats.changed_while_scanned, stats.memo.size) == (1, 0)


def test_same_bytes_under_another_inode_served_from_the_hash_keyed_memo(
    engine: YaraEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    a, b = write(tmp_path / "a", EVIL), write(tmp_path / "b", EVIL)
    for path in (a, b):
        assert verdict(engine, path, open_ro, make_exec_request, sha256=sha(EVIL)).verdict is Verdict.DENY
    assert engine.statistics().scans == 1


# -- limits ------------------------------------------------------------------------------------------------


def test_file_over_the_size_limit_allowed_uncached_counted_and_never_remembered(
    make_ctx: Callable[..., Any], clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    eng, ctx = make_engine(make_ctx, clock, content.dir, max_scan_bytes=len(EVIL) - 1)
    path = write(tmp_path / "big", EVIL)
    for _ in range(2):
        answer = verdict(eng, path, open_ro, make_exec_request)
        assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    stats = eng.statistics()
    assert (stats.too_large, stats.scans, stats.memo.size) == (2, 0, 0)
    assert ctx.findings == []


def test_file_exactly_at_the_size_limit_is_scanned(
    make_ctx: Callable[..., Any], clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    eng, _ = make_engine(make_ctx, clock, content.dir, max_scan_bytes=len(EVIL))
    path = write(tmp_path / "edge", EVIL)
    assert verdict(eng, path, open_ro, make_exec_request).verdict is Verdict.DENY


def test_read_fd_refuses_more_than_the_limit_and_reads_sparse_files_whole(tmp_path: Path) -> None:
    big = tmp_path / "sparse"
    with open(big, "wb") as f:
        f.truncate(3 << 20)
        f.seek(-4, os.SEEK_END)
        f.write(b"tail")
    fd = os.open(big, os.O_RDONLY)
    try:
        data = read_fd(fd, 3 << 20)
        assert data is not None and len(data) == 3 << 20 and data.endswith(b"tail")
        assert read_fd(fd, (3 << 20) - 1) is None
    finally:
        os.close(fd)


def test_slow_scan_times_out_allowed_uncached_counted_and_scanned_again_next_time(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"slow.yar": SLOW_RULE})
    eng, _ = make_engine(make_ctx, clock, c.dir, scan_timeout_s=1)
    path = write(tmp_path / "victim", bytes(range(100)) * 1000)  # 100 KB: 10^10 steps, far past 1 s
    for _ in range(2):
        answer = verdict(eng, path, open_ro, make_exec_request)
        assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    stats = eng.statistics()
    assert (stats.timeouts, stats.scans, stats.memo.size) == (2, 2, 0)


def test_findings_per_file_capped_and_the_rest_counted(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    n = MAX_FINDINGS_PER_FILE + 4
    c.publish(
        {"many.yar": "".join(f'rule r{i} {{ strings: $a = "MANY-MARK" condition: $a }}\n' for i in range(n))}
    )
    eng, ctx = make_engine(make_ctx, clock, c.dir)
    path = write(tmp_path / "f", b"MANY-MARK")
    assert verdict(eng, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    assert len(ctx.findings) == MAX_FINDINGS_PER_FILE
    assert eng.statistics().findings_capped == 4


def test_memo_bounded_by_setting(
    make_ctx: Callable[..., Any], clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    eng, _ = make_engine(make_ctx, clock, content.dir, memo_entries=2)
    for n in range(3):
        path = write(tmp_path / f"f{n}", b"x" * (n + 1))
        verdict(eng, path, open_ro, make_exec_request)
    memo = eng.statistics().memo
    assert (memo.size, memo.evictions) == (2, 1)


# -- rules: bad input at setup -----------------------------------------------------------------------------


def test_bad_rules_at_setup_raise_one_line_naming_every_error_with_file_and_line(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    c = Content(tmp_path / "c")
    c.publish({
        "a.yar": "rule fine { condition: true }\nrule broken { condition: no_such_thing }\n",
        "b.yara": "rule syntax {\n  condition:\n    and\n}\n",
        "c.yar": BLOCK_RULE,
    })  # fmt: skip
    with pytest.raises(RulesError) as raised:
        YaraEngine().setup(make_ctx(content_dir=c.dir))
    errors = [(Path(i.source).name, i.line) for i in raised.value.issues if i.severity == "error"]
    assert errors == [("a.yar", 2), ("b.yara", 3)]
    message = str(raised.value)
    assert "\n" not in message
    assert f"{c.dir}/a.yar:2: error: unknown identifier" in message
    assert f"{c.dir}/b.yara:3: error: syntax error" in message


def test_include_refused_with_file_and_line(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "outside.yar").write_text("rule outside { condition: true }\n")
    c = Content(tmp_path / "c")
    c.publish({"a.yar": f'rule ok {{ condition: true }}\ninclude "{tmp_path}/outside.yar"\n'})
    with pytest.raises(RulesError, match=rf"{c.dir}/a.yar:2: error: include statements not allowed"):
        YaraEngine().setup(make_ctx(content_dir=c.dir))


def test_non_utf8_rules_file_refused_naming_its_line(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    c = Content(tmp_path / "c")
    c.publish({"a.yar": b"rule ok { condition: true }\n// caf\xe9\n"})
    with pytest.raises(RulesError, match=rf"{c.dir}/a.yar:2: error: not UTF-8"):
        YaraEngine().setup(make_ctx(content_dir=c.dir))


def test_unknown_module_refused(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    c = Content(tmp_path / "c")
    c.publish({"a.yar": 'import "no_such_module"\nrule ok { condition: true }\n'})
    with pytest.raises(RulesError, match=r"a.yar:1: error: unknown module"):
        YaraEngine().setup(make_ctx(content_dir=c.dir))


def test_fifo_in_content_refused_without_hanging(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    c = Content(tmp_path / "c")
    c.publish({"a.yar": BLOCK_RULE})
    os.mkfifo(c.root / "slots" / "1" / "pipe.yar")
    with pytest.raises(RulesError, match=r"pipe.yar: error: not a regular file"):
        YaraEngine().setup(make_ctx(content_dir=c.dir))


def test_other_files_ignored_with_a_warning(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    c = Content(tmp_path / "c")
    c.publish({"block.yar": BLOCK_RULE, "README.txt": "not rules {"})
    eng, _ = make_engine(make_ctx, clock, c.dir)
    assert "README.txt: warning: not a .yar/.yara file: ignored" in caplog.text
    assert eng.statistics().rules.files == 1
    assert verdict(eng, write(tmp_path / "e", EVIL), open_ro, make_exec_request).verdict is Verdict.DENY


def test_missing_content_dir_at_setup_raises(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="content directory missing or unreadable"):
        YaraEngine().setup(make_ctx(content_dir=str(tmp_path / "nope")))


def test_no_content_dir_allows_without_reading_and_says_so(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    eng, _ = make_engine(make_ctx, clock, None)
    assert "no YARA rules" in caplog.text
    answer = verdict(eng, write(tmp_path / "e", EVIL), open_ro, make_exec_request)
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, True)
    assert eng.statistics().scans == 0


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"max_scan_bytes": 0}, "max_scan_bytes: must be an integer in 1..1073741824, got 0"),
        ({"max_scan_bytes": "32M"}, "max_scan_bytes: must be an integer"),
        ({"scan_timeout_s": 0.5}, "scan_timeout_s: must be an integer in 1..8, got 0.5"),
        ({"scan_timeout_s": 9}, "scan_timeout_s: must be an integer in 1..8, got 9"),
        ({"scan_timeout_s": True}, "scan_timeout_s: must be an integer"),
        ({"memo_entries": 0}, "memo_entries: must be an integer in 1..1000000"),
        ({"max_scan_byte": 1}, "unknown key 'max_scan_byte'"),
    ],
)
def test_bad_setting_refused_naming_the_key(
    make_ctx: Callable[..., Any], settings: dict, problem: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        YaraEngine().setup(make_ctx(settings=settings))
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_every_bad_setting_reported_at_once(make_ctx: Callable[..., Any]) -> None:
    with pytest.raises(SettingsError) as raised:
        YaraEngine().setup(make_ctx(settings={"rules": "/etc", "max_scan_bytes": -1, "scan_timeout_s": 99}))
    assert len(raised.value.problems) == 3


# -- rules: updates ----------------------------------------------------------------------------------------


def test_new_rules_take_effect_on_the_tick_after_the_interval_and_flush_verdicts(
    engine: YaraEngine, ctx: Any, clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    path = write(tmp_path / "tool", BENIGN)
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    content.publish({"new.yar": 'rule now_bad : block { strings: $a = "echo fine" condition: $a }'})
    clock.advance(0.5)  # not yet due: the content is checked at most once a second
    engine.on_tick()
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    tick(engine, clock)
    assert ctx.stale == ["YARA rules reloaded"]
    assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.DENY  # not from the memo
    stats = engine.statistics()
    assert (stats.rule_reloads, stats.rules.rules, stats.memo.clears) == (1, 1, 1)


def test_auth_path_never_recompiles(
    engine: YaraEngine, clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    path = write(tmp_path / "tool", BENIGN)
    content.publish({"new.yar": 'rule now_bad : block { strings: $a = "echo fine" condition: $a }'})
    clock.advance(5)
    for _ in range(3):
        assert verdict(engine, path, open_ro, make_exec_request).verdict is Verdict.ALLOW
    assert engine.statistics().rules.checks == 0


def test_same_rules_staged_again_do_not_flush_verdicts(
    engine: YaraEngine, ctx: Any, clock: Any, content: Content
) -> None:
    version = engine.statistics().rules.content_version
    content.publish({"block.yar": BLOCK_RULE, "notice.yara": NOTICE_RULE})
    tick(engine, clock)
    assert ctx.stale == []
    stats = engine.statistics()
    assert (stats.unchanged_reloads, stats.rules.content_version) == (1, version)


def test_broken_update_keeps_the_last_good_rules_and_is_reported_until_fixed(
    engine: YaraEngine, ctx: Any, clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    evil = write(tmp_path / "dropper", EVIL)
    good_version = engine.statistics().rules.content_version
    content.publish({"block.yar": "rule evil_marker : block { condition: \n"})  # broken
    tick(engine, clock)
    assert verdict(engine, evil, open_ro, make_exec_request).verdict is Verdict.DENY
    [problem] = ctx.problems
    assert problem is not None and f"{content.dir}/block.yar:" in problem and "syntax error" in problem
    assert f"2 rules of version {good_version} stay in force" in problem
    tick(engine, clock)  # unchanged broken content: not compiled, counted or reported again
    stats = engine.statistics()
    assert (stats.rules.compile_errors, stats.rules.content_version, len(ctx.problems)) == (
        1,
        good_version,
        1,
    )
    content.publish({"block.yar": "rule other { condition: false }"})  # fixed
    tick(engine, clock)
    assert verdict(engine, evil, open_ro, make_exec_request).verdict is Verdict.ALLOW
    assert ctx.problems[-1] is None
    assert ctx.stale == ["YARA rules reloaded"]


def test_vanished_content_dir_keeps_the_last_good_rules(
    engine: YaraEngine, clock: Any, content: Content, tmp_path: Path, open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:  # fmt: skip
    evil = write(tmp_path / "dropper", EVIL)
    (content.root / "active").unlink()
    tick(engine, clock)
    assert verdict(engine, evil, open_ro, make_exec_request).verdict is Verdict.DENY
    assert engine.statistics().rules.compile_errors == 1


def test_statistics_name_the_rules_in_force_and_their_version(engine: YaraEngine) -> None:
    rules = engine.statistics().rules
    assert (rules.rules, rules.block_rules, rules.files, rules.loads) == (2, 1, 2, 1)
    assert len(rules.content_version) == 16
    assert all(c in "0123456789abcdef" for c in rules.content_version)


def test_short_scans_never_time_out_early_across_yaras_second_ticks(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    """yara-x's limit counts ticks of a shared one-second heartbeat: given 1, a scan that starts just
    before a tick times out after a few ms, and the file would run unscanned. Scans of a few ms back to
    back for 2.5 s span at least two ticks; none may time out."""
    c = Content(tmp_path / "c")
    c.publish({"slow.yar": SLOW_RULE})
    eng, _ = make_engine(make_ctx, clock, c.dir, scan_timeout_s=1, memo_entries=1)
    paths = [write(tmp_path / f"f{i}", bytes(range(100)) * 6 + bytes([i])) for i in range(2)]  # ~0.4 M steps
    files = [open_ro(p) for p in paths]
    end = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < end:  # memo of one, two files in turn: every request is scanned
        eng.on_auth(make_exec_request(paths[n % 2]), files[n % 2])
        n += 1
    stats = eng.statistics()
    assert stats.timeouts == 0
    assert stats.scans == n > 20


def test_request_already_past_its_deadline_not_scanned_the_agent_answered_it(
    engine: YaraEngine, clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    """A backlog must drain: scanning a request the agent has settled by itself only delays the next."""
    path = write(tmp_path / "dropper", EVIL)
    late = verdict(engine, path, open_ro, make_exec_request, deadline_ns=clock() - 1)
    assert (late.verdict, late.cacheable) == (Verdict.ALLOW, False)
    stats = engine.statistics()
    assert (stats.past_deadline, stats.scans) == (1, 0)
    in_time = verdict(engine, path, open_ro, make_exec_request, deadline_ns=clock() + 10**9)
    assert in_time.verdict is Verdict.DENY


def test_public_surface_is_pinned() -> None:
    import ringfence.engines.yara as package

    assert set(package.__all__) == {
        "BLOCK_TAG", "MAX_FINDINGS_PER_FILE", "RULE_PREFIX", "Issue", "IssueSeverity", "MemoStatistics",
        "RuleSet", "RulesError", "RulesStatistics", "SettingsError", "YaraConfig", "YaraEngine", "YaraError",
        "YaraStatistics", "extension",
    }  # fmt: skip
    assert issubclass(package.RulesError, package.YaraError)
    assert issubclass(package.SettingsError, package.YaraError)


def test_rule_name_used_in_two_files_refused_at_the_second(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    """One namespace: two rules of one name would make a finding's rule name ambiguous."""
    c = Content(tmp_path / "c")
    c.publish({"a.yar": BLOCK_RULE, "b.yar": "\n\nrule evil_marker { condition: false }\n"})
    with pytest.raises(RulesError, match=rf"{c.dir}/b.yar:3: error: duplicate rule `evil_marker`"):
        YaraEngine().setup(make_ctx(content_dir=c.dir))
