"""The reputation engine (the IOC engine under its old id) on sha256 blocklists: its AUTH handler, on real
files opened O_RDONLY, with a fake Context and clock."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from ringfence.engines.reputation import (
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


class Content:
    """A content directory as the agent lays it out: `active` -> slots/<n>, each slot complete before the
    symlink is swapped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slot = 0
        (root / "slots").mkdir(parents=True)

    @property
    def dir(self) -> str:
        return str(self.root / "active")

    def publish(self, files: dict[str, str]) -> None:
        self.slot += 1
        slot = self.root / "slots" / str(self.slot)
        slot.mkdir()
        for name, text in files.items():
            (slot / name).write_text(text)
        link = self.root / ".active-new"
        link.symlink_to(f"slots/{self.slot}")
        link.replace(self.root / "active")


def sync(work: Callable[[], None]) -> None:
    work()


@pytest.fixture
def content(tmp_path: Path) -> Content:
    c = Content(tmp_path / "content")
    c.publish({"blocklist.txt": f"# test list\n{sha(EVIL)}  evil-script\n"})
    return c


@pytest.fixture
def ctx(make_ctx: Callable[..., Any], content: Content) -> Any:
    return make_ctx(content_dir=content.dir)


@pytest.fixture
def engine(ctx: Any, clock: Any) -> ReputationEngine:
    eng = ReputationEngine(clock=clock, background=sync)
    eng.setup(ctx)
    return eng


def tick(engine: ReputationEngine, clock: Any) -> None:
    """A second passes: one tick starts the reload (run at once by `sync`), the next takes it."""
    clock.advance(1)
    engine.on_tick()
    engine.on_tick()


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
    assert finding.fields["rule"] == "ioc.sha256"
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
    c = Content(tmp_path / "c")
    c.publish({"bl.txt": sha(EVIL) + "\n"})
    eng = ReputationEngine(clock=clock, background=sync)
    ctx = make_ctx(content_dir=c.dir)
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
    c = Content(tmp_path / "c")
    c.publish({"bl.txt": f"{digest} big\n"})
    eng = ReputationEngine(clock=clock, background=sync)
    eng.setup(make_ctx(content_dir=c.dir))
    assert eng.on_auth(make_exec_request(str(big)), open_ro(str(big))).verdict is Verdict.DENY


def test_hash_added_to_content_takes_effect_on_the_next_tick_after_the_interval(
    engine: ReputationEngine,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    path = write(tmp_path / "tool.sh", BENIGN)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    content.publish({"blocklist.txt": f"{sha(EVIL)}\n{sha(BENIGN)} now-bad\n"})
    clock.advance(0.5)  # not yet due: the content is checked at most once a second
    engine.on_tick()
    engine.on_tick()
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    tick(engine, clock)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    stats = engine.statistics()
    assert (stats.reloads, stats.content.entries) == (1, 2)


def test_auth_path_never_reloads_content(
    engine: ReputationEngine,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    """A reload of a million entries takes seconds: it must never run inside an AUTH answer."""
    path = write(tmp_path / "tool.sh", BENIGN)
    content.publish({"blocklist.txt": f"{sha(BENIGN)}\n"})
    clock.advance(5)
    for _ in range(3):
        assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW
    assert engine.statistics().content.checks == 0


def test_reload_runs_in_the_background_while_the_old_list_answers(
    make_ctx: Callable[..., Any],
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    queued: list[Callable[[], None]] = []
    eng = ReputationEngine(clock=clock, background=queued.append)
    eng.setup(make_ctx(content_dir=content.dir))
    evil = write(tmp_path / "dropper.sh", EVIL)
    content.publish({"blocklist.txt": f"{sha(BENIGN)}\n"})
    clock.advance(1)
    eng.on_tick()
    assert len(queued) == 1  # the load was handed off, not run on this thread
    clock.advance(1)
    eng.on_tick()
    assert len(queued) == 1  # one load at a time
    assert eng.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.DENY
    queued.pop()()
    eng.on_tick()
    assert eng.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.ALLOW


def test_reload_noticed_on_tick_flushes_cached_verdicts(
    engine: ReputationEngine, ctx: Any, clock: Any, content: Content
) -> None:
    """Cached files raise no AUTH request: a tick must notice the new list and say verdicts are stale."""
    tick(engine, clock)
    assert ctx.stale == []
    content.publish({"blocklist.txt": f"{sha(EVIL)}\n{sha(BENIGN)}\n"})
    tick(engine, clock)
    assert ctx.stale == ["IOC content reloaded"]
    assert engine.statistics().reloads == 1


def test_same_list_staged_again_does_not_flush_verdicts(
    engine: ReputationEngine, ctx: Any, clock: Any, content: Content
) -> None:
    content.publish({"blocklist.txt": f"# reordered, same entries\n{sha(EVIL)}  evil-script\n"})
    tick(engine, clock)
    assert ctx.stale == []
    assert engine.statistics().content.unchanged_reloads == 1


def test_broken_new_content_keeps_last_good_list_and_is_reported_until_fixed(
    engine: ReputationEngine,
    ctx: Any,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    evil = write(tmp_path / "dropper.sh", EVIL)
    content.publish({"blocklist.txt": f"{sha(BENIGN)}\nthis line is not a hash\n"})
    tick(engine, clock)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.DENY
    [problem] = ctx.problems
    assert problem is not None and f"{content.dir}/blocklist.txt:2: error:" in problem
    assert "1 entries stay in force" in problem
    tick(engine, clock)  # unchanged broken content: not re-read, not counted or reported again
    assert engine.statistics().content.reload_errors == 1 and len(ctx.problems) == 1
    content.publish({"blocklist.txt": f"{sha(BENIGN)}\n"})  # fixed
    tick(engine, clock)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.ALLOW
    assert ctx.problems[-1] is None
    assert ctx.stale == ["IOC content reloaded"]


def test_vanished_content_dir_keeps_last_good_list(
    engine: ReputationEngine,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    evil = write(tmp_path / "dropper.sh", EVIL)
    (content.root / "active").unlink()
    tick(engine, clock)
    assert engine.on_auth(make_exec_request(evil), open_ro(evil)).verdict is Verdict.DENY
    assert engine.statistics().content.reload_errors == 1


def test_every_file_of_the_content_is_a_blocklist(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"a.txt": f"{sha(EVIL)}\n", "b.txt": f"{sha(BENIGN)} from-b\n"})
    eng = ReputationEngine(clock=clock, background=sync)
    ctx = make_ctx(content_dir=c.dir)
    eng.setup(ctx)
    for data in (EVIL, BENIGN):
        path = write(tmp_path / sha(data)[:8], data)
        assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert ctx.findings[1].title == "Blocked execution of from-b"


def test_no_content_dir_runs_with_an_empty_list_and_says_so(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    eng = ReputationEngine(clock=clock, background=sync)
    eng.setup(make_ctx())
    path = write(tmp_path / "dropper.sh", EVIL)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW


def test_bad_content_at_setup_raises_one_line_with_every_issue(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"bl.txt": "bad one\n\nbad two\n"})
    with pytest.raises(BlocklistError) as raised:
        ReputationEngine(background=sync).setup(make_ctx(content_dir=c.dir))
    assert [i.line for i in raised.value.issues] == [1, 3]
    message = str(raised.value)
    assert "\n" not in message and f"{c.dir}/bl.txt:1: error:" in message and f"{c.dir}/bl.txt:3:" in message


def test_missing_content_dir_at_setup_raises(make_ctx: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(BlocklistError, match="content directory missing or unreadable"):
        ReputationEngine(background=sync).setup(make_ctx(content_dir=str(tmp_path / "nope")))


def test_blocklist_setting_naming_an_operator_path_refused_naming_the_content_key(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    """The old `blocklist` setting made the sandbox open the operator's path: refused, never read."""
    bl = tmp_path / "bl.txt"
    bl.write_text(sha(EVIL) + "\n")
    with pytest.raises(SettingsError, match=r'extensions\.content\."ringfence\.reputation"'):
        ReputationEngine(background=sync).setup(make_ctx(settings={"blocklist": str(bl)}))


def test_bad_settings_rejected_with_every_problem(make_ctx: Callable[..., Any]) -> None:
    with pytest.raises(SettingsError) as raised:
        ReputationEngine().setup(make_ctx(settings={"blocklst": "/x", "blocklist": "/y", "memo_entries": 0}))
    problems = raised.value.problems
    assert len(problems) == 3
    assert any("unknown key 'blocklst'" in p for p in problems)
    assert any(p.startswith("blocklist: the engine reads no operator path") for p in problems)
    assert any(p.startswith("memo_entries:") for p in problems)


def test_memo_bounded_by_setting(
    make_ctx: Callable[..., Any],
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    eng = ReputationEngine(clock=clock, background=sync)
    eng.setup(make_ctx(settings={"memo_entries": 2}, content_dir=content.dir))
    for n in range(3):
        path = write(tmp_path / f"f{n}", b"x" * (n + 1))
        eng.on_auth(make_exec_request(path), open_ro(path))
    memo = eng.statistics().memo
    assert (memo.size, memo.evictions) == (2, 1)


def test_reload_on_the_real_background_thread_takes_effect(
    make_ctx: Callable[..., Any],
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    eng = ReputationEngine(clock=clock)  # the default: a thread per reload
    ctx = make_ctx(content_dir=content.dir)
    eng.setup(ctx)
    path = write(tmp_path / "tool.sh", BENIGN)
    content.publish({"blocklist.txt": f"{sha(BENIGN)}\n"})
    clock.advance(1)
    deadline = time.monotonic() + 10
    while eng.statistics().reloads == 0 and time.monotonic() < deadline:
        eng.on_tick()
        time.sleep(0.01)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert ctx.stale == ["IOC content reloaded"]
