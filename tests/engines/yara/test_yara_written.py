"""The YARA engine's close-write handler (`on_file`) on real files opened O_RDONLY, with a fake Context:
one scan per content version, findings naming the file and the rule, limits, and the memo the exec of
the same content then hits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.engines.conftest import header
from tests.engines.yara.content import BLOCK_RULE, NOTICE_RULE, SLOW_RULE, Content

from ringfence.engines.yara import YaraEngine
from ringfence.sdk import (
    AuthFile,
    AuthRequest,
    EventKind,
    FileWritten,
    Permission,
    ProcessRef,
    Severity,
    Verdict,
)

Open = Callable[[str], AuthFile]
EVIL = b"\x7fELF fake binary EVIL-MARKER-1234 tail\n"
SUSPICIOUS = b"#!/bin/sh\n# SUSPICIOUS-MARKER-5678\necho hi\n"
BENIGN = b"#!/bin/sh\necho fine\n"
WRITER = ProcessRef(pid=99, exe="/usr/bin/curl", cmdline=("curl", "-o", "x"))


def notice(path: Path) -> FileWritten:
    st = path.stat()
    return FileWritten(
        header=header("close-write"),
        path=str(path),
        process=WRITER,
        dev=st.st_dev,
        ino=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


@pytest.fixture
def setup(make_ctx: Callable[..., Any], clock: Any, tmp_path: Path) -> Callable[..., tuple[YaraEngine, Any]]:
    def make(files: dict[str, str] | None = None, **settings: Any) -> tuple[YaraEngine, Any]:
        content = Content(tmp_path / "content")
        content.publish(files if files is not None else {"block.yar": BLOCK_RULE, "notice.yar": NOTICE_RULE})
        ctx = make_ctx(settings=settings, content_dir=content.dir)
        engine = YaraEngine(clock=clock)
        engine.setup(ctx)
        return engine, ctx

    return make


def written(engine: YaraEngine, path: Path, data: bytes, open_ro: Open) -> None:
    path.write_bytes(data)
    engine.on_file(notice(path), open_ro(str(path)))


def test_manifest_subscribes_to_written_files_with_the_permission_it_needs() -> None:
    manifest = YaraEngine.manifest
    assert manifest.subscribes == frozenset({EventKind.FILE_WRITTEN})
    assert Permission.FILE_CONTENTS in manifest.permissions


def test_written_file_matching_a_rule_raises_a_finding_naming_file_rule_and_writer(
    setup: Callable[..., Any], tmp_path: Path, open_ro: Open
) -> None:
    engine, ctx = setup()
    path = tmp_path / "drop.sh"
    written(engine, path, SUSPICIOUS, open_ro)
    [finding] = ctx.findings
    assert finding.title == "YARA rule suspicious_marker matched written file drop.sh"
    assert finding.severity is Severity.MEDIUM
    fields = finding.fields
    assert (fields["rule"], fields["file_path"], fields["action"]) == (
        "yara.suspicious_marker",
        str(path),
        "detected",
    )
    assert fields["file_sha256"] == hashlib.sha256(SUSPICIOUS).hexdigest()
    assert fields["process"] == WRITER
    assert "(written)" in fields["description"]
    stats = engine.statistics()
    assert (stats.written, stats.written_scans, stats.matches, stats.denied) == (1, 1, 1, 0)


def test_block_rule_on_a_written_file_is_a_high_finding_and_its_exec_is_denied_from_the_memo(
    setup: Callable[..., Any], tmp_path: Path, open_ro: Open, make_exec_request: Callable[..., AuthRequest]
) -> None:
    engine, ctx = setup()
    path = tmp_path / "dropper"
    written(engine, path, EVIL, open_ro)
    [finding] = ctx.findings
    assert finding.title == "Written file dropper matches YARA block rule evil_marker"
    assert finding.severity is Severity.HIGH
    request = msgspec.structs.replace(make_exec_request(str(path)), sha256=hashlib.sha256(EVIL).hexdigest())
    answer = engine.on_auth(request, open_ro(str(path)))
    assert answer.verdict is Verdict.DENY
    assert engine.statistics().scans == 0  # the exec was answered from the close-write scan


def test_same_content_closed_again_is_not_scanned_again_and_new_content_is(
    setup: Callable[..., Any], tmp_path: Path, open_ro: Open
) -> None:
    engine, ctx = setup()
    path = tmp_path / "note"
    written(engine, path, BENIGN, open_ro)
    written(engine, path, BENIGN, open_ro)
    assert ctx.findings == []
    written(engine, path, SUSPICIOUS, open_ro)  # the same inode, rewritten
    written(engine, path, SUSPICIOUS, open_ro)  # and closed again unchanged: reported once
    assert [f.title for f in ctx.findings] == ["YARA rule suspicious_marker matched written file note"]
    stats = engine.statistics()
    assert (stats.written, stats.written_scans, stats.written_unchanged) == (4, 2, 2)


def test_written_file_over_the_size_limit_is_counted_not_scanned(
    setup: Callable[..., Any], tmp_path: Path, open_ro: Open
) -> None:
    engine, ctx = setup(close_write_max_bytes=1024)
    written(engine, tmp_path / "big", b"\0" * 2048 + EVIL, open_ro)
    assert ctx.findings == []
    stats = engine.statistics()
    assert (stats.written_too_large, stats.written_scans) == (1, 0)


def test_scan_that_times_out_is_counted_and_not_remembered(
    setup: Callable[..., Any], tmp_path: Path, open_ro: Open
) -> None:
    engine, ctx = setup({"slow.yar": SLOW_RULE}, scan_timeout_s=1)
    path = tmp_path / "victim"
    slow = bytes(range(100)) * 1000  # 100 KB: 10^10 steps, far past the limit (10 KB, 10^8, once finished)
    written(engine, path, slow, open_ro)
    written(engine, path, slow, open_ro)
    stats = engine.statistics()
    assert (stats.written_failed, stats.written_scans, stats.written_unchanged) == (2, 2, 0)
    assert ctx.findings == []


def test_without_rules_nothing_is_read(make_ctx: Callable[..., Any], clock: Any, tmp_path: Path) -> None:
    ctx = make_ctx(content_dir=None)
    engine = YaraEngine(clock=clock)
    engine.setup(ctx)
    path = tmp_path / "x"
    path.write_bytes(EVIL)
    engine.on_file(notice(path), AuthFile(-1))  # a descriptor it would fail to read: never touched
    stats = engine.statistics()
    assert (stats.written, stats.written_scans, stats.written_failed) == (1, 0, 0)


def test_unreadable_descriptor_is_counted_as_failed(setup: Callable[..., Any], tmp_path: Path) -> None:
    engine, ctx = setup()
    path = tmp_path / "x"
    path.write_bytes(EVIL)
    engine.on_file(notice(path), AuthFile(-1))
    assert engine.statistics().written_failed == 1
    assert ctx.findings == []
