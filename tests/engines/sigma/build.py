"""Hand-built events for the Sigma engine's tests, and a rule-text helper."""

from __future__ import annotations

import itertools
import textwrap
import uuid
from pathlib import Path

from ringfence.sdk import (
    Endpoint,
    FileActivity,
    FileActivityId,
    Header,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

_seq = itertools.count(1)


def header() -> Header:
    n = next(_seq)
    return Header(id=uuid.uuid4().hex, time_ns=n, mono_ns=n, host="test", sensor="test", seq=n)


def proc(
    exe: str = "/usr/bin/true",
    cmdline: tuple[str, ...] | str = (),
    *,
    pid: int = 4242,
    user: str | None = "root",
    cwd: str | None = "/root",
    parent_exe: str | None = "/usr/bin/bash",
    parent_cmdline: tuple[str, ...] = ("bash",),
) -> ProcessRef:
    argv = tuple(cmdline.split(" ")) if isinstance(cmdline, str) else cmdline
    parent = None
    if parent_exe is not None:
        parent = ProcessRef(pid=pid - 1, exe=parent_exe, cmdline=parent_cmdline, user=user, uid=0)
    return ProcessRef(
        pid=pid, ppid=pid - 1, exe=exe, cmdline=argv or (exe,), cwd=cwd, user=user, uid=0, parent=parent
    )


def exec_event(
    exe: str = "/usr/bin/true", cmdline: tuple[str, ...] | str = (), **kw: object
) -> ProcessActivity:
    return ProcessActivity(
        header=header(), activity=ProcessActivityId.LAUNCH, process=proc(exe, cmdline, **kw)
    )  # type: ignore[arg-type]


def file_event(
    path: str,
    activity: FileActivityId = FileActivityId.CREATE,
    *,
    new_path: str | None = None,
    exe: str = "/usr/bin/touch",
) -> FileActivity:
    return FileActivity(header=header(), activity=activity, path=path, new_path=new_path, process=proc(exe))


def connect(ip: str, port: int, *, exe: str = "/usr/bin/curl", syscall: str = "connect") -> NetworkActivity:
    family = "inet6" if ":" in ip else "inet"
    return NetworkActivity(
        header=header(),
        activity=NetworkActivityId.OPEN,
        syscall=syscall,
        success=True,
        local=Endpoint(family=family, ip="10.0.0.5" if family == "inet" else "fd00::5", port=40000),
        remote=Endpoint(family=family, ip=ip, port=port),
        process=proc(exe),
    )


def rule(
    detection: str, *, category: str = "process_creation", rule_id: str | None = None, extra: str = ""
) -> str:
    """A complete Sigma rule around a detection block (given unindented)."""
    ident = rule_id or str(uuid.uuid4())
    body = textwrap.indent(textwrap.dedent(detection).strip(), "    ")
    return (
        f"title: test rule {ident[:8]}\nid: {ident}\nstatus: test\nlevel: high\n"
        f"tags:\n    - attack.execution\n    - attack.t1059.004\n"
        f"logsource:\n    product: linux\n    category: {category}\ndetection:\n{body}\n{extra}"
    )


def write_rules(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory
