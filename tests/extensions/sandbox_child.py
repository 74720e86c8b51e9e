"""Run by the sandbox tests as a child: enter the sandbox, try one thing, print the outcome as JSON.

Usage: python sandbox_child.py ACTION POLICY_JSON PREPARED_JSON [ARG...]
Exit 0 with one JSON line on stdout; exit 3 if enter_sandbox raised (message on stderr).
Outcomes are "ok" or the errno name (EPERM, EACCES, ...), so the test can tell which layer refused.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import sys
import threading

import msgspec

from ringfence.extensions._sandbox import (
    PreparedSandbox,
    SandboxError,
    SandboxPolicy,
    enter_sandbox,
)

LIBC = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
CLONE_NEWUSER = 0x10000000


def outcome(fn, *args) -> str:
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "ok"


def libc_outcome(result: int) -> str:
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]


def read_file(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


def write_file(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"x")


def open_socket(family: int) -> None:
    socket.socket(family, socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM).close()


def do_read(args: list[str]) -> dict[str, str]:
    return {path: outcome(read_file, path) for path in args}


def do_write(args: list[str]) -> dict[str, str]:
    return {path: outcome(write_file, path) for path in args}


def do_sockets(args: list[str]) -> dict[str, str]:
    return {name: outcome(open_socket, getattr(socket, name)) for name in args}


def do_socketpair(args: list[str]) -> dict[str, str]:
    with socket.socket(fileno=int(args[0])) as sock:
        sock.sendall(b"ping")
        return {"reply": sock.recv(16).decode()}


def blocked_child() -> tuple[int, int]:
    """A forked child that blocks until the returned pipe end is closed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    return pid, w


def do_ptrace(args: list[str]) -> dict[str, str]:
    ptrace = LIBC.ptrace
    ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    pid, w = blocked_child()
    try:
        own = libc_outcome(ptrace(PTRACE_ATTACH, pid, None, None))
        if own == "ok":
            ptrace(PTRACE_DETACH, pid, None, None)
        parent = libc_outcome(ptrace(PTRACE_ATTACH, os.getppid(), None, None))
    finally:
        os.close(w)
        os.waitpid(pid, 0)
    return {"own_child": own, "parent": parent}


def do_mount(args: list[str]) -> dict[str, str]:
    mount = LIBC.mount
    mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
    unshare = LIBC.unshare
    unshare.argtypes = (ctypes.c_int,)
    return {
        "mount": libc_outcome(mount(b"none", args[0].encode(), b"tmpfs", 0, None)),
        "unshare_user": libc_outcome(unshare(CLONE_NEWUSER)),
    }


def do_exec(args: list[str]) -> dict[str, str]:
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(args[0], [args[0]])
        except OSError as e:
            os._exit(e.errno or 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {"exec": "ok" if code == 0 else errno.errorcode.get(code, str(code))}


def do_alloc_once(args: list[str]) -> dict[str, str]:
    try:
        block = bytearray(1 << 30)
    except MemoryError:
        return {"alloc": "MemoryError"}
    return {"alloc": f"ok {len(block)}"}


def do_alloc_touch(args: list[str]) -> dict[str, str]:
    chunks = []
    try:
        for _ in range(64):  # 64 x 16 MiB = 1 GiB, every page touched (bytearray zero-fills)
            chunks.append(bytearray(16 << 20))
    except MemoryError:
        return {"alloc": f"MemoryError after {len(chunks)} chunks"}
    return {"alloc": f"survived {len(chunks)} chunks"}


def do_forkbomb(args: list[str]) -> dict[str, str]:
    r, w = os.pipe()
    pids: list[int] = []
    failure = "none"
    for _ in range(int(args[0])):
        try:
            pid = os.fork()
        except OSError as e:
            failure = errno.errorcode.get(e.errno or 0, str(e))
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        pids.append(pid)
    os.close(w)
    for pid in pids:
        os.waitpid(pid, 0)
    return {"forked": str(len(pids)), "failure": failure}


def do_orphan(args: list[str]) -> dict[str, str]:
    """Leave a grandchild behind, blocked forever, for release_sandbox to find."""
    r, _w = os.pipe()
    pid = os.fork()
    if pid == 0:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):  # let the test's pipes reach EOF when the child exits
            os.dup2(null, fd)
        os.read(r, 1)  # this process keeps `_w` open, so the read never returns
        os._exit(0)
    return {"orphan": str(pid)}


def do_signal(args: list[str]) -> dict[str, str]:
    return {"signal": outcome(os.kill, int(args[0]), 0)}


def connect_abstract(name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + name)


def do_abstract_connect(args: list[str]) -> dict[str, str]:
    return {"connect": outcome(connect_abstract, args[0])}


def do_wait(args: list[str]) -> dict[str, str]:
    print("ready", flush=True)
    sys.stdin.read()
    return {}


ACTIONS = {name[3:]: fn for name, fn in globals().items() if name.startswith("do_")}


def main() -> int:
    action, policy_json, prepared_json, *args = sys.argv[1:]
    policy = msgspec.json.decode(policy_json, type=SandboxPolicy)
    prepared = msgspec.json.decode(prepared_json, type=PreparedSandbox)
    if action == "threaded_enter":
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    try:
        enter_sandbox(policy, prepared)
    except SandboxError as e:
        print(f"enter_sandbox: {e}", file=sys.stderr)
        return 3
    print(json.dumps(ACTIONS[action](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
