"""The shared Linux primitives: /proc/<pid>/stat parsing and the netlink receive buffer."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from ringfence._linux import PF_KTHREAD, force_rcvbuf, parse_proc_stat, read_proc_stat, readable


def test_comm_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    line = "4242 (a) (b c)) S 17 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 0 0"
    stat = parse_proc_stat(line)
    assert (stat.pid, stat.comm, stat.state, stat.ppid) == (4242, "a) (b c)", "S", 17)
    assert stat.flags == 4194560 and stat.start_ticks == 987654


def test_own_stat_matches_what_the_kernel_says() -> None:
    stat = read_proc_stat(os.getpid())
    assert stat is not None
    assert stat.ppid == os.getppid() and stat.pid == os.getpid()
    assert not stat.flags & PF_KTHREAD


def test_kernel_thread_is_flagged() -> None:
    stat = read_proc_stat(2)  # kthreadd
    assert stat is not None and stat.flags & PF_KTHREAD


def test_gone_process_reads_as_none() -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    assert read_proc_stat(child.pid) is None


@pytest.mark.parametrize("text", ["", "12 (x S 1", "12 (x) S 1 2"])
def test_truncated_stat_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a /proc"):
        parse_proc_stat(text)


def test_forced_receive_buffer_passes_the_cap_as_root() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert force_rcvbuf(sock, 16 << 20)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 16 << 20


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path) -> None:
    from ringfence._linux import write_atomic

    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new" * 100_000)
    assert target.read_bytes() == b"new" * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path) -> None:
    from ringfence._linux import write_atomic

    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    (tmp_path / "f.json.tmp").symlink_to("/etc/passwd")  # a planted link is refused, never followed
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"


def test_readable_waits_on_descriptors_past_1024(descriptors_past_1024: int) -> None:
    r, w = os.pipe()
    try:
        assert r > 1024
        assert readable([r], 0) == []
        assert readable([r], 0.05) == [], "waited and nothing came"
        os.write(w, b"x")
        assert readable([r], None) == [r]
        os.close(w)
        w = -1
        assert readable([r], 0) == [r], "a hung-up pipe is readable (EOF)"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
