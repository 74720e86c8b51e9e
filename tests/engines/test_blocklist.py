"""Blocklist parsing: strict, every bad line reported with file:line, nothing half-loaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ringfence.engines.ioc._blocklist import read_into
from ringfence.engines.reputation import (
    Blocklist,
    BlocklistBuilder,
    BlocklistError,
    IssueSeverity,
    parse_blocklist,
    read_blocklist,
)

A = hashlib.sha256(b"a").hexdigest()
B = hashlib.sha256(b"b").hexdigest()
C = hashlib.sha256(b"c").hexdigest()


def test_hashes_labels_and_comments_parsed() -> None:
    data = f"""# a header comment

{A}
{B.upper()}   eicar test file   # trailing comment
   {C}\t# only a comment after the hash
""".encode()
    result = parse_blocklist(data, "/etc/bl.txt")
    assert result.ok
    assert result.issues == ()
    assert len(result.blocklist) == 3
    match_a, match_b, match_c = (result.blocklist.match(h) for h in (A, B, C))
    assert match_a is not None and match_a.label is None
    assert match_b is not None and match_b.label == "eicar test file"
    assert match_b.sha256 == B  # lowercase, whatever the file's case
    assert match_c is not None and match_c.label is None


def test_lookup_is_case_insensitive() -> None:
    blocklist = parse_blocklist(A.encode(), "x").blocklist
    assert A.upper() in blocklist
    assert B not in blocklist
    assert "not-hex" not in blocklist


def test_every_bad_line_reported_with_file_and_line() -> None:
    data = f"""{A}
{A[:40]}
zz{A[2:]}  label
{A}0
\xff\xfe
{B}
""".encode("latin-1")
    result = parse_blocklist(data, "/etc/bl.txt")
    assert not result.ok
    errors = [i for i in result.issues if i.severity is IssueSeverity.ERROR]
    assert [i.line for i in errors] == [2, 3, 4, 5]
    rendered = [str(i) for i in errors]
    assert rendered[0].startswith("/etc/bl.txt:2: error:") and "40 hex digits, expected 64" in rendered[0]
    assert "non-hex character(s) 'z'" in rendered[1]
    assert "65 hex digits" in rendered[2]
    assert "not UTF-8" in rendered[3]


def test_file_with_one_bad_line_rejected_whole(tmp_path: Path) -> None:
    path = tmp_path / "bl.txt"
    path.write_text(f"{A} good\nnot-a-hash\n{B} good too\nstill bad\n")
    with pytest.raises(BlocklistError) as raised:
        read_blocklist(str(path), max_bytes=1 << 20)
    assert [(i.source, i.line) for i in raised.value.issues] == [(str(path), 2), (str(path), 4)]
    assert f"{path}:2:" in str(raised.value) and f"{path}:4:" in str(raised.value)


def test_empty_file_is_an_empty_blocklist(tmp_path: Path) -> None:
    path = tmp_path / "bl.txt"
    path.write_bytes(b"")
    result = read_blocklist(str(path), max_bytes=1 << 20)
    assert len(result.blocklist) == 0
    assert result.issues == ()


def test_duplicate_hash_warns_and_keeps_first_label() -> None:
    result = parse_blocklist(f"{A} first\n{A.upper()} second\n".encode(), "bl")
    assert result.ok
    assert [(i.severity, i.line) for i in result.issues] == [(IssueSeverity.WARNING, 2)]
    match = result.blocklist.match(A)
    assert match is not None and match.label == "first"


def test_missing_file_rejected_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(BlocklistError, match=r"absent\.txt: error: cannot open"):
        read_blocklist(str(path), max_bytes=1 << 20)


def test_fifo_at_blocklist_path_rejected_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(BlocklistError, match="not a regular file"):
        read_blocklist(str(path), max_bytes=1 << 20)


def test_oversized_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bl.txt"
    path.write_text(f"{A}\n{B}\n")
    with pytest.raises(BlocklistError, match="larger than the limit of 100 bytes"):
        read_blocklist(str(path), max_bytes=100)


def test_lists_from_several_files_merged_first_file_wins(tmp_path: Path) -> None:
    (tmp_path / "1.txt").write_text(f"{A} from-first\n")
    (tmp_path / "2.txt").write_text(f"{A} from-second\n{B}\n")
    builder = BlocklistBuilder()
    issues: list = []
    for name in ("1.txt", "2.txt"):
        read_into(builder, str(tmp_path / name), name, max_bytes=1 << 20, issues=issues)
    merged = builder.build(issues)
    assert len(merged) == 2
    match = merged.match(A)
    assert match is not None and match.label == "from-first"
    assert [(i.severity, i.source, i.line) for i in issues] == [(IssueSeverity.WARNING, "2.txt", 1)]
    assert len(Blocklist()) == 0


def test_unlabelled_first_entry_keeps_no_label_over_a_later_labelled_duplicate() -> None:
    result = parse_blocklist(f"{A}\n{A} late-label\n".encode(), "bl")
    match = result.blocklist.match(A)
    assert match is not None and match.label is None


def test_compact_list_finds_every_entry_and_nothing_else() -> None:
    digests = [hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(5000)]
    data = "\n".join(d.hex() + (" lbl" if i % 7 == 0 else "") for i, d in enumerate(digests)).encode()
    blocklist = parse_blocklist(data, "bl").blocklist
    assert len(blocklist) == 5000
    labelled = len(range(0, 5000, 7))
    flat = 5000 * 32 + labelled * 3  # digests and label text in flat buffers, no object per entry
    assert flat < blocklist.nbytes <= flat + 5000 * 8  # plus a 4-byte label offset and source index each
    for i, d in enumerate(digests):
        match = blocklist.match(d.hex())
        assert match is not None and match.label == ("lbl" if i % 7 == 0 else None)
        assert match.source == "bl"
    for i in range(5000, 5500):
        assert hashlib.sha256(i.to_bytes(4, "little")).hexdigest() not in blocklist
    assert "00" * 32 not in blocklist and "ff" * 32 not in blocklist and "ab" not in blocklist


def test_equal_lists_compare_equal_and_a_changed_label_does_not() -> None:
    one = parse_blocklist(f"{B}\n{A} x\n".encode(), "1").blocklist
    same = parse_blocklist(f"{A} x\n{B}\n".encode(), "2").blocklist
    relabelled = parse_blocklist(f"{A} y\n{B}\n".encode(), "3").blocklist
    assert one == same
    assert one != relabelled


def test_error_message_is_one_line_with_every_error() -> None:
    result = parse_blocklist(b"bad one\n" + A.encode() + b"\nbad two\n", "/etc/bl.txt")
    message = str(BlocklistError(result.issues))
    assert "\n" not in message
    assert message.startswith("/etc/bl.txt:1: error: 'bad' is not a sha256")
    assert "; /etc/bl.txt:3: error: 'bad' is not a sha256" in message


def test_error_message_shows_twenty_errors_then_a_count() -> None:
    result = parse_blocklist(b"x\n" * 25, "bl")
    message = str(BlocklistError(result.issues))
    assert "bl:20:" in message and "bl:21:" not in message and message.endswith("; and 5 more")
