from __future__ import annotations

import json

import msgspec

from ringfence.events import (
    DetectionFinding,
    Endpoint,
    Event,
    FileActivity,
    FileActivityId,
    HeaderStamper,
    NetworkActivity,
    NetworkActivityId,
    OcsfEncoder,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Severity,
    to_ocsf,
)
from tests.fakes import FakeClock

STAMP = HeaderStamper("test", "host-1", FakeClock())
PROC = ProcessRef(
    pid=10,
    ppid=1,
    exe="/usr/bin/curl",
    cmdline=("curl", "-s", "x"),
    cwd="/root",
    uid=0,
    user="root",
    parent=ProcessRef(pid=1, exe="/sbin/init"),
)


def test_sequence_numbers_are_per_sensor_and_gapless() -> None:
    s = HeaderStamper("a", "h", FakeClock())
    assert [s.stamp().seq for _ in range(3)] == [1, 2, 3]
    assert s.last_seq == 3


def test_process_launch_maps_to_ocsf_1007_with_parent() -> None:
    e = ProcessActivity(header=STAMP.stamp(), activity=ProcessActivityId.LAUNCH, process=PROC)
    d = to_ocsf(e)
    assert (d["class_uid"], d["activity_id"], d["type_uid"]) == (1007, 1, 100701)
    assert d["process"]["args"] == ["curl", "-s", "x"]
    assert d["process"]["working_directory"] == "/root"
    assert d["process"]["parent_process"]["file"]["path"] == "/sbin/init"
    assert d["device"]["hostname"] == "host-1"


def test_file_rename_maps_old_and_new_path() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.RENAME, path="/a/x", new_path="/a/y")
    d = to_ocsf(e)
    assert (d["class_uid"], d["activity_id"]) == (1001, 5)
    assert d["file"]["path"] == "/a/x" and d["file_result"]["path"] == "/a/y"


def test_network_connect_maps_endpoints_and_status() -> None:
    e = NetworkActivity(
        header=STAMP.stamp(),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=False,
        errno=111,
        remote=Endpoint(family="inet6", ip="::1", port=8080),
        process=PROC,
    )
    d = to_ocsf(e)
    assert d["class_uid"] == 4001 and d["status"] == "Failure" and d["status_code"] == "111"
    assert d["dst_endpoint"]["ip"] == "::1" and d["dst_endpoint"]["port"] == 8080


def test_finding_maps_to_2004_with_hash_evidence() -> None:
    e = DetectionFinding(
        header=STAMP.stamp(),
        title="Blocked",
        severity=Severity.HIGH,
        source="rep",
        file_path="/tmp/m",
        file_sha256="ab" * 32,
        action="denied",
    )
    d = to_ocsf(e)
    assert d["class_uid"] == 2004 and d["severity_id"] == 4
    assert d["evidences"][0]["file"]["hashes"][0]["value"] == "ab" * 32
    assert d["disposition"] == "Denied"


def test_encoder_writes_one_json_line() -> None:
    line = OcsfEncoder().encode(
        ProcessActivity(header=STAMP.stamp(), activity=ProcessActivityId.FORK, process=PROC)
    )
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["activity_id"] == 99


def test_events_roundtrip_through_msgpack_as_tagged_union() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.DELETE, path="/x", process=PROC)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=Event)
    assert back == e
