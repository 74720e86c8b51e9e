"""OCSF JSON: the one place where events become dicts.

The mapping follows OCSF 1.x: class_uid, category_uid, activity_id, type_uid (class_uid * 100 +
activity_id), time in ms, metadata, and the class's own objects (process, file, src/dst_endpoint,
finding_info). Fields OCSF has no slot for go under `unmapped`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec

from ringfence.events._model import (
    AuthRequest,
    DetectionFinding,
    Endpoint,
    Event,
    FileActivity,
    Header,
    NetworkActivity,
    ProcessActivity,
    ProcessRef,
)

_PRODUCT = {"name": "Ringfence", "vendor_name": "Ringfence"}

# class_uid, category_uid, class_name
_CLASS: dict[type, tuple[int, int, str]] = {
    ProcessActivity: (1007, 1, "Process Activity"),
    FileActivity: (1001, 1, "File System Activity"),
    NetworkActivity: (4001, 4, "Network Activity"),
    DetectionFinding: (2004, 2, "Detection Finding"),
    AuthRequest: (1007, 1, "Process Activity"),
}


def _process(p: ProcessRef) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": p.pid}
    if p.exe is not None:
        out["file"] = {"path": p.exe, "name": os.path.basename(p.exe)}
    if p.cmdline:
        out["cmd_line"] = " ".join(p.cmdline)
        out["args"] = list(p.cmdline)
    if p.cwd is not None:
        out["working_directory"] = p.cwd
    if p.uid is not None or p.user is not None:
        user: dict[str, Any] = {}
        if p.uid is not None:
            user["uid"] = str(p.uid)
        if p.user is not None:
            user["name"] = p.user
        out["user"] = user
    if p.start_time_ns is not None:
        out["created_time"] = p.start_time_ns // 1_000_000
    if p.container_id is not None:
        out["container"] = {"uid": p.container_id}
    if p.cgroup is not None:
        out["xattributes"] = {"cgroup": p.cgroup}
    if p.parent is not None:
        out["parent_process"] = _process(p.parent)
    elif p.ppid is not None:
        out["parent_process"] = {"pid": p.ppid}
    return out


def _endpoint(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.ip is not None:
        out["ip"] = e.ip
    if e.port is not None:
        out["port"] = e.port
    if e.path is not None:
        out["path"] = e.path
    out["xattributes"] = {"family": e.family}
    return out


def _base(event: Event, header: Header, activity_id: int, activity_name: str) -> dict[str, Any]:
    class_uid, category_uid, class_name = _CLASS[type(event)]
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": header.time_ns // 1_000_000,
        "severity_id": 1,
        "metadata": {
            "uid": header.id,
            "version": "1.3.0",
            "product": _PRODUCT,
            "sequence": header.seq,
            "log_name": header.sensor,
        },
        "device": {"hostname": header.host},
    }


def _process_activity(e: ProcessActivity) -> dict[str, Any]:
    out = _base(e, e.header, int(e.activity), e.activity.name.replace("_", " ").title())
    out["process"] = _process(e.process)
    if e.exit_code is not None:
        out["exit_code"] = e.exit_code
    if e.new_uid is not None or e.new_gid is not None:
        out["unmapped"] = {"new_uid": e.new_uid, "new_gid": e.new_gid}
    return out


def _file_activity(e: FileActivity) -> dict[str, Any]:
    out = _base(e, e.header, int(e.activity), e.activity.name.replace("_", " ").title())
    kind = "Folder" if e.is_dir else "Regular File"
    out["file"] = {"path": e.path, "name": os.path.basename(e.path), "type": kind}
    if e.new_path is not None:
        out["file_result"] = {"path": e.new_path, "name": os.path.basename(e.new_path), "type": kind}
    if e.process is not None:
        out["actor"] = {"process": _process(e.process)}
    return out


def _network_activity(e: NetworkActivity) -> dict[str, Any]:
    out = _base(e, e.header, int(e.activity), e.activity.name.title())
    out["status_id"] = 1 if e.success else 2
    out["status"] = "Success" if e.success else "Failure"
    if e.errno is not None:
        out["status_code"] = str(e.errno)
    if e.local is not None:
        out["src_endpoint"] = _endpoint(e.local)
    if e.remote is not None:
        out["dst_endpoint"] = _endpoint(e.remote)
    out["unmapped"] = {"syscall": e.syscall}
    if e.process is not None:
        out["actor"] = {"process": _process(e.process)}
    return out


def _auth_request(e: AuthRequest) -> dict[str, Any]:
    out = _base(e, e.header, 1 if e.kind == "exec" else 3, "Launch" if e.kind == "exec" else "Open")
    out["process"] = _process(e.process)
    out["unmapped"] = {"auth": e.kind, "path": e.path}
    return out


def _finding(e: DetectionFinding) -> dict[str, Any]:
    out = _base(e, e.header, 1, "Create")
    out["severity_id"] = int(e.severity)
    out["severity"] = e.severity.name.title()
    info: dict[str, Any] = {"title": e.title, "uid": e.header.id, "product": {"name": e.source}}
    if e.description is not None:
        info["desc"] = e.description
    if e.rule is not None:
        info["analytic"] = {"name": e.rule, "type_id": 1, "type": "Rule"}
    if e.related_event is not None:
        info["related_events"] = [{"uid": e.related_event}]
    out["finding_info"] = info
    evidence: dict[str, Any] = {}
    if e.process is not None:
        evidence["process"] = _process(e.process)
    if e.file_path is not None:
        f: dict[str, Any] = {"path": e.file_path, "name": os.path.basename(e.file_path)}
        if e.file_sha256 is not None:
            f["hashes"] = [{"algorithm_id": 3, "algorithm": "SHA-256", "value": e.file_sha256}]
        evidence["file"] = f
    if evidence:
        out["evidences"] = [evidence]
    if e.action is not None:
        out["disposition"] = e.action.title()
    return out


_TO_OCSF = {
    ProcessActivity: _process_activity,
    FileActivity: _file_activity,
    NetworkActivity: _network_activity,
    AuthRequest: _auth_request,
    DetectionFinding: _finding,
}


def to_ocsf(event: Event) -> dict[str, Any]:
    """The OCSF form of an event, as a dict ready for JSON."""
    convert: Callable[[Event], dict[str, Any]] = _TO_OCSF[type(event)]  # type: ignore[assignment]
    return convert(event)


class OcsfEncoder:
    """Encodes events as OCSF JSON lines (bytes ending in a newline)."""

    def __init__(self) -> None:
        self._json = msgspec.json.Encoder()

    def encode(self, event: Event) -> bytes:
        return self._json.encode(to_ocsf(event)) + b"\n"
