"""The OCSF parts that every class shares: classification, the base attributes, processes, users,
files and endpoints. `_codec` and `_codec_detection` build their classes from these; see `_codec` for the
conventions.
"""

from __future__ import annotations

import functools
from typing import Any

from ringfence.events._common import Endpoint, Header, ProcessRef

OCSF_VERSION = "1.8.0"

_PRODUCT = {"name": "Ringfence", "vendor_name": "Ringfence"}
_DEVICE_TYPE = {"type_id": 0, "type": "Unknown"}  # server, desktop or VM: the agent cannot tell
_OS = {"name": "Linux", "type_id": 200, "type": "Linux"}

# class_uid: (class caption, category_uid, category caption)
_CLASSES = {
    1001: ("File System Activity", 1, "System Activity"),
    1007: ("Process Activity", 1, "System Activity"),
    4001: ("Network Activity", 4, "Network Activity"),
    2004: ("Detection Finding", 2, "Findings"),
    4003: ("DNS Activity", 4, "Network Activity"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    3001: ("Account Change", 3, "Identity & Access Management"),
    0: ("Base Event", 0, "Uncategorized"),  # raw audit events and log lines: no class of their own
}
_SEVERITY = ("Unknown", "Informational", "Low", "Medium", "High", "Critical", "Fatal")
_OTHER = 99
_INT32_MAX = 2**31 - 1

_FILE_TYPE = {False: (1, "Regular File"), True: (2, "Folder")}


def _name(path: str) -> str:
    """The last component (os.path.basename, faster); the path itself when that is empty, as for /."""
    return path.rpartition("/")[2] or path


def _file(path: str, is_dir: bool = False) -> dict[str, Any]:
    type_id, type_name = _FILE_TYPE[is_dir]
    return {"path": path, "name": _name(path), "type_id": type_id, "type": type_name}


def _user(p: ProcessRef) -> dict[str, Any] | None:
    user: dict[str, Any] = {}
    if p.uid is not None:
        user["uid"] = str(p.uid)
    if p.user is not None:
        user["name"] = p.user
    return user or None


def _process(p: ProcessRef, profiles: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": p.pid}
    if p.exe is not None:
        out["file"] = exe = _file(p.exe)
        out["name"] = exe["name"]
    if p.cmdline:
        out["cmd_line"] = " ".join(p.cmdline)
    if p.cwd is not None:
        out["working_directory"] = p.cwd
    if (user := _user(p)) is not None:
        out["user"] = user
    if p.start_time_ns is not None:
        out["created_time"] = p.start_time_ns // 1_000_000
    if p.container_id is not None:
        out["container"] = {"uid": p.container_id}
        profiles.add("container")
    if p.cgroup is not None:
        out["xattributes"] = {"cgroup": p.cgroup}
    if p.parent is not None:
        out["parent_process"] = _process(p.parent, profiles)
    elif p.ppid is not None:
        out["parent_process"] = {"pid": p.ppid}
    return out


@functools.lru_cache(maxsize=256)
def _head(class_uid: int, activity_id: int, activity_name: str) -> dict[str, Any]:
    """The classification attributes of one class and activity: the same for every event of it."""
    class_name, category_uid, category_name = _CLASSES[class_uid]
    # Other is the caption of type_uid X99; a Base Event's type_uid is 99 itself, whose name must say more
    type_caption = activity_name if activity_id != _OTHER or class_uid == 0 else "Other"
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {type_caption}",
    }


@functools.lru_cache(maxsize=16)
def _device(host: str) -> dict[str, Any]:
    return {"hostname": host, **_DEVICE_TYPE, "os": _OS}


def _base(
    class_uid: int, activity_id: int, activity_name: str, header: Header, profiles: set[str]
) -> dict[str, Any]:
    """The attributes every class shares. `metadata.profiles` is the set itself, filled in as we go.
    The cached parts are shared between events: nothing may change them in place."""
    profiles.add("host")
    out = dict(_head(class_uid, activity_id, activity_name))
    out["time"] = header.time_ns // 1_000_000
    out["severity_id"], out["severity"] = 1, "Informational"
    out["metadata"] = {
        "uid": header.id,
        "version": OCSF_VERSION,
        "product": _PRODUCT,
        "profiles": profiles,
        "log_name": header.sensor,
    }
    out["device"] = _device(header.host)
    if header.seq <= _INT32_MAX:
        out["metadata"]["sequence"] = header.seq
    else:  # metadata.sequence is a 32-bit integer_t; a long-lived sensor's count is not lost
        _unmapped(out)["sequence"] = header.seq
    return out


def _unmapped(out: dict[str, Any]) -> dict[str, Any]:
    unmapped: dict[str, Any] = out.setdefault("unmapped", {})
    return unmapped


def _done(out: dict[str, Any]) -> dict[str, Any]:
    out["metadata"]["profiles"] = sorted(out["metadata"]["profiles"])
    return out


def _endpoint(e: Endpoint) -> dict[str, Any]:
    """A socket address. One without an IP is named by its unix path, else by its family (netlink)."""
    out: dict[str, Any] = {}
    if e.ip is not None:
        out["ip"] = e.ip
    elif e.hostname is None:
        out["name"] = e.path or e.family
    if e.hostname is not None:
        out["hostname"] = e.hostname
    if e.port is not None:
        out["port"] = e.port
    return out
