"""The reputation engine's AUTH handler, on real files opened O_RDONLY, with a fake Context and clock."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from ringfence.engines.reputation import (
    RULE,
    BlocklistError,
    ReputationEngine,
    SettingsError,
    extension,
)
from ringfence.sdk import AuthFile, AuthRequest, EventKind, FailurePolicy, Permission, Severity, Verdict

Open = Callable[[str], AuthFile]
MakeRequest = Callable[..., AuthRequest]

EVIL = b"#!/bin/sh\necho evil\n"
BENIGN = b"#!/bin/sh\necho fine\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def blocklist(tmp_path: Path) -> Path:
    path = tmp_path / "blocklist.txt"
    path.write_text(f"# test list\n{sha(EVIL)}  evil-script\n")
    return path


@pytest.fixture
def ctx(make_ctx: Callable[..., Any], blocklist: Path) -> Any:
    return make_ctx(settings={"blocklist": str(blocklist)})


@pytest.fixture
def engine(ctx: Any, clock: Any) -> ReputationEngine:
    eng = ReputationEngine(clock=clock)
    eng.setup(ctx)
    return eng


def test_entry_point_object_is_the_engine_class() -> None:
    assert extension is ReputationEngine
    manifest = extension.manifest
    assert manifest.id == "ringfence.reputation"
    assert manifest.vendor == "Ringfence"
    assert manifest.auth is not None
    assert manifest.auth.kinds == frozenset({EventKind.AUTH_EXEC})
    assert manifest.auth.deadline_ms == 250
    assert manifest.auth.failure is FailurePolicy.FAIL_OPEN
    assert manifest.permissions == frozenset({Permission.FILE_CONTENTS})


def test_engine_published_under_its_manifest_id_entry_point() -> None:
    found = {ep.name: ep for ep in entry_points(group="ringfence.extensions")}
    assert found["ringfence.reputation"].load() is ReputationEngine


def test_blocklisted_file_denied_with_finding(
    engine: ReputationEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "dropper.sh", EVIL)
    request = make_exec_request(path)
    answer = engine.on_auth(request, open_ro(path))
    assert answer.verdict is Verdict.DENY
    assert answer.cacheable is False
    assert answer.reason is not None and sha(EVIL) in answer.reason
    [finding] = ctx.findings
    assert finding.title == "Blocked execution of evil-script"
    assert finding.severity is Severity.HIGH
    assert finding.fields["rule"] == RULE == "reputation.blocklist"
    assert finding.fields["file_path"] == path
    assert finding.fields["file_sha256"] == sha(EVIL)
    assert finding.fields["process"] == request.process
    assert finding.fields["action"] == "denied"
    assert finding.fields["related_event"] == request.header.id
    assert engine.statistics().denied == 1
    engine.teardown()


def test_unlabelled_hash_finding_titled_with_basename(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    bl = tmp_path / "bl.txt"
    bl.write_text(sha(EVIL) + "\n")
    eng = ReputationEngine(clock=clock)
    ctx = make_ctx(settings={"blocklist": str(bl)})
    eng.setup(ctx)
    path = write(tmp_path / "payload", EVIL)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert ctx.findings[0].title == "Blocked execution of payload"


def test_other_file_allowed_cacheable_without_finding(
    engine: ReputationEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN)
    answer = engine.on_auth(make_exec_request(path), open_ro(path))
    assert answer.verdict is Verdict.ALLOW
    assert answer.cacheable is True
    assert ctx.findings == []


def test_request_without_descriptor_allowed_uncached_and_counted(
    engine: ReputationEngine, make_exec_request: MakeRequest
) -> None:
    answer = engine.on_auth(make_exec_request("/usr/bin/true"), None)
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    assert engine.statistics().no_descriptor == 1


def test_unreadable_descriptor_allowed_uncached_and_counted(
    engine: ReputationEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    directory = tmp_path / "adir"
    directory.mkdir()
    answer = engine.on_auth(make_exec_request(str(directory)), open_ro(str(directory)))  # pread: EISDIR
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, False)
    assert engine.statistics().hash_errors == 1


def test_file_hashed_through_descriptor_not_path(
    engine: ReputationEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "swap", EVIL)
    file = open_ro(path)
    os.unlink(path)
    write(tmp_path / "swap", BENIGN)  # a different file now sits at the path
    assert engine.on_auth(make_exec_request(path), file).verdict is Verdict.DENY


def test_unchanged_file_not_rehashed(
    engine: ReputationEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN)
    engine.on_auth(make_exec_request(path), open_ro(path))
    engine.on_auth(make_exec_request(path), open_ro(path))
    memo = engine.statistics().memo
    assert (memo.misses, memo.hits, memo.size) == (1, 1, 1)


def test_rewritten_file_rehashed_not_served_from_memo(
    engine: ReputationEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN + b"# a longer benign script\n")
    inode = os.stat(path).st_ino
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    with open(path, "wb") as f:  # same inode, new contents and size
        f.write(EVIL)
    assert os.stat(path).st_ino == inode
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert engine.statistics().memo.misses == 2


def test_same_size_rewrite_with_mtime_put_back_rehashed(
    engine: ReputationEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    benign = EVIL.replace(b"evil", b"good")
    assert len(benign) == len(EVIL)
    path = write(tmp_path / "tool.sh", benign)
    before = os.stat(path)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    with open(path, "r+b") as f:
        f.write(EVIL)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("this filesystem gave the rewrite the same ctime (coarse timestamps)")
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY


def test_file_larger_than_one_chunk_hashed_whole(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(5 << 20)  # sparse, 5 chunks of zeros
        f.seek(-4, os.SEEK_END)
        f.write(b"tail")
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    bl = tmp_path / "bl.txt"
    bl.write_text(f"{digest} big\n")
    eng = ReputationEngine(clock=clock)
    eng.setup(make_ctx(settings={"blocklist": str(bl)}))
    assert eng.on_auth(make_exec_request(str(big)), open_ro(str(big))).verdict is Verdict.DENY


def test_hash_added_to_blocklist_takes_effect_after_recheck_interval(
    engine: ReputationEngine,
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    new = tmp_path / "blocklist.new"
    new.write_text(blocklist.read_text() + f"{sha(BENIGN)} now-bad\n")
    new.replace(blocklist)
    clock.advance(0.5)  # not yet due: the AUTH path stats the list at most once a second
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    clock.advance(0.5)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    stats = engine.statistics()
    assert (stats.blocklist_reloads, stats.blocklist.entries) == (1, 2)


def test_reload_noticed_on_tick_flushes_cached_verdicts(
    engine: ReputationEngine, ctx: Any, clock: Any, blocklist: Path
) -> None:
    """Cached files raise no AUTH request: a tick must notice the new list and say verdicts are stale."""
    engine.on_tick()
    assert ctx.stale == []
    with open(blocklist, "a") as f:
        f.write(f"{sha(BENIGN)}\n")
    clock.advance(1)
    engine.on_tick()
    assert ctx.stale == ["blocklist reloaded"]
    assert engine.statistics().blocklist_reloads == 1


def test_blocklist_edited_in_place_reloaded(
    engine: ReputationEngine,
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN)
    with open(blocklist, "a") as f:
        f.write(f"{sha(BENIGN)}\n")
    clock.advance(1)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY


def test_broken_blocklist_reload_keeps_last_good_list(
    engine: ReputationEngine,
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    evil = write(tmp_path / "dropper.sh", EVIL)
    blocklist.write_text(f"{sha(BENIGN)}\nthis line is not a hash\n")
    clock.advance(1)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.DENY
    clock.advance(1)  # unchanged broken file: not re-parsed, not counted again
    engine.on_auth(make_exec_request(evil), open_ro(evil))
    assert engine.statistics().blocklist.reload_errors == 1
    blocklist.write_text(f"{sha(BENIGN)}\n")  # fixed
    clock.advance(1)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.ALLOW


def test_deleted_blocklist_keeps_last_good_list(
    engine: ReputationEngine,
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    evil = write(tmp_path / "dropper.sh", EVIL)
    blocklist.unlink()
    clock.advance(1)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.DENY
    assert engine.statistics().blocklist.reload_errors == 1


def test_content_dir_blocklist_used_with_settings_blocklist(
    make_ctx: Callable[..., Any],
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "blocklist.txt").write_text(f"{sha(BENIGN)} from-content\n")
    eng = ReputationEngine(clock=clock)
    ctx = make_ctx(settings={"blocklist": str(blocklist)}, content_dir=str(content))
    eng.setup(ctx)
    for data in (EVIL, BENIGN):
        path = write(tmp_path / sha(data)[:8], data)
        assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert ctx.findings[1].title == "Blocked execution of from-content"


def test_content_dir_blocklist_appearing_later_loaded(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    content = tmp_path / "content"
    content.mkdir()
    eng = ReputationEngine(clock=clock)
    eng.setup(make_ctx(content_dir=str(content)))
    path = write(tmp_path / "dropper.sh", EVIL)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    (content / "blocklist.txt").write_text(sha(EVIL) + "\n")
    clock.advance(1)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY


def test_bad_blocklist_at_setup_raises_with_every_issue(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    bl = tmp_path / "bl.txt"
    bl.write_text("bad one\n\nbad two\n")
    with pytest.raises(BlocklistError) as raised:
        ReputationEngine().setup(make_ctx(settings={"blocklist": str(bl)}))
    assert [i.line for i in raised.value.issues] == [1, 3]


def test_missing_configured_blocklist_at_setup_raises(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(BlocklistError, match="cannot open"):
        ReputationEngine().setup(make_ctx(settings={"blocklist": str(tmp_path / "nope.txt")}))


def test_bad_settings_rejected_with_every_problem(make_ctx: Callable[..., Any]) -> None:
    with pytest.raises(SettingsError) as raised:
        ReputationEngine().setup(
            make_ctx(settings={"blocklst": "/x", "blocklist": "relative.txt", "memo_entries": 0})
        )
    problems = raised.value.problems
    assert len(problems) == 3
    assert any("unknown key 'blocklst'" in p for p in problems)
    assert any(p.startswith("blocklist: must be an absolute path") for p in problems)
    assert any(p.startswith("memo_entries:") for p in problems)


def test_memo_bounded_by_setting(
    make_ctx: Callable[..., Any],
    clock: Any,
    blocklist: Path,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    eng = ReputationEngine(clock=clock)
    eng.setup(make_ctx(settings={"blocklist": str(blocklist), "memo_entries": 2}))
    for n in range(3):
        path = write(tmp_path / f"f{n}", b"x" * (n + 1))
        eng.on_auth(make_exec_request(path), open_ro(path))
    memo = eng.statistics().memo
    assert (memo.size, memo.evictions) == (2, 1)
