from __future__ import annotations

import json

import msgspec
import pytest

from ringfence.events import (
    AuthKind,
    AuthRequest,
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
    from_ocsf,
    to_ocsf,
)
from ringfence.events import _codec as codec
from tests.fakes import FakeClock
from tests.ocsf.validator import problems

STAMP = HeaderStamper("test", "host-1", FakeClock())
PROC = ProcessRef(
    pid=10,
    ppid=1,
    exe="/usr/bin/curl",
    cmdline=("curl", "-s", "x"),
    cwd="/root",
    uid=0,
    user="root",
    gid=0,
    start_time_ns=1_700_000_000_123_456_789,
    cgroup="/user.slice",
    parent=ProcessRef(pid=1, exe="/sbin/init"),
)
IN_CONTAINER = ProcessRef(pid=11, ppid=10, exe="/bin/sh", container_id="c0ffee", parent=PROC)
BARE = ProcessRef(pid=12)
LO4, LO6 = Endpoint(family="inet", ip="127.0.0.1", port=40000), Endpoint(family="inet6", ip="::1", port=8080)
UNIX = Endpoint(family="unix", path="/run/x.sock")


def _process(activity: ProcessActivityId, process: ProcessRef = PROC, **kw: int) -> ProcessActivity:
    return ProcessActivity(header=STAMP.stamp(), activity=activity, process=process, **kw)  # type: ignore[arg-type]


def _net(
    syscall: str, local: Endpoint | None, remote: Endpoint | None, success: bool = True
) -> NetworkActivity:
    activity = {"listen": NetworkActivityId.LISTEN, "bind": NetworkActivityId.BIND}.get(
        syscall, NetworkActivityId.OPEN if success else NetworkActivityId.REFUSE
    )
    return NetworkActivity(
        header=STAMP.stamp(),
        activity=activity,
        syscall=syscall,
        success=success,
        errno=None if success else 111,
        local=local,
        remote=remote,
        process=PROC,
    )


def _finding(action: str | None, **kw: object) -> DetectionFinding:
    return DetectionFinding(
        header=STAMP.stamp(), title="Blocked", severity=Severity.HIGH, source="rep", action=action, **kw
    )  # type: ignore[arg-type]


HAND_BUILT: list[Event] = [
    *(_process(a) for a in ProcessActivityId),
    _process(ProcessActivityId.TERMINATE, exit_code=3),
    _process(ProcessActivityId.SET_USER_ID, new_uid=1000, new_gid=1000),
    _process(ProcessActivityId.LAUNCH, IN_CONTAINER),
    _process(ProcessActivityId.LAUNCH, BARE),
    _process(ProcessActivityId.FORK, ProcessRef(pid=13, ppid=12)),
    *(FileActivity(header=STAMP.stamp(), activity=a, path="/a/x", process=PROC) for a in FileActivityId),
    FileActivity(header=STAMP.stamp(), activity=FileActivityId.RENAME, path="/a/x", new_path="/b/y"),
    FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path="/a/d", is_dir=True),
    _net("connect", LO4, LO4),
    _net("connect", None, LO6, success=False),
    _net("accept4", LO4, LO4),
    _net("bind", LO4, None),
    _net("listen", LO6, None),
    _net("connect", None, UNIX),
    _net("bind", Endpoint(family="netlink"), None),
    _net("listen", None, None),
    _finding("denied", file_path="/tmp/m", file_sha256="ab" * 32, rule="r1", related_event="e1"),
    _finding("killed", process=IN_CONTAINER, description="why"),
    _finding(None),
    _finding(None, techniques=("T1059.004", "T1105"), tactics=("execution", "command-and-control")),
    _finding(None, tactics=("persistence", "made-up-tactic")),
    *(_finding(a) for a in ("allowed", "quarantined", "isolated", "deleted", "observed", "")),
    _finding(None, shadow=True),
    AuthRequest(header=STAMP.stamp(), kind=AuthKind.EXEC, path="/tmp/m", process=PROC),
    AuthRequest(header=STAMP.stamp(), kind=AuthKind.OPEN, path="/etc/shadow", process=BARE),
]


@pytest.mark.parametrize("event", HAND_BUILT, ids=lambda e: f"{type(e).__name__}-{e.header.seq}")
def test_every_hand_built_record_is_valid_ocsf_1_8_0_without_warnings(event: Event) -> None:
    assert problems(to_ocsf(event)) == []


def test_every_record_declares_ocsf_1_8_0_and_the_host_profile() -> None:
    for event in HAND_BUILT:
        metadata = to_ocsf(event)["metadata"]
        assert metadata["version"] == "1.8.0" and "host" in metadata["profiles"]


def test_finding_carries_attack_techniques_sub_techniques_and_tactics_with_their_ids() -> None:
    d = to_ocsf(
        _finding(None, techniques=("T1059.004", "T1105"), tactics=("execution", "command-and-control"))
    )
    attacks = d["finding_info"]["attacks"]
    assert len(attacks) == 4  # two techniques, each under both tactics
    first = attacks[0]
    assert first["technique"] == {"uid": "T1059"} and first["sub_technique"] == {"uid": "T1059.004"}
    assert first["tactic"] == {"uid": "TA0002", "name": "Execution"}
    assert attacks[1]["tactic"] == {"uid": "TA0011", "name": "Command and Control"}
    assert attacks[2]["technique"] == {"uid": "T1105"} and "sub_technique" not in attacks[2]
    only_tactics = to_ocsf(_finding(None, tactics=("persistence", "made-up-tactic")))["finding_info"][
        "attacks"
    ]
    assert only_tactics == [
        {"tactic": {"uid": "TA0003", "name": "Persistence"}},
        {"tactic": {"name": "made-up-tactic"}},
    ]
    assert "attacks" not in to_ocsf(_finding(None))["finding_info"]


def test_a_shadow_instance_finding_is_labelled_shadow_and_decodes_back() -> None:
    """Candidate content on trial: a SIEM must be able to tell its findings from the real ones."""
    shadow = _finding(None, shadow=True)
    d = to_ocsf(shadow)
    assert d["metadata"]["labels"] == ["shadow"] and "labels" not in to_ocsf(_finding(None))["metadata"]
    back = from_ocsf(json.loads(json.dumps(d)))
    assert isinstance(back, DetectionFinding) and back.shadow and back.header.id == shadow.header.id
    assert not from_ocsf(json.loads(json.dumps(to_ocsf(_finding(None))))).shadow  # type: ignore[union-attr]
    assert "labels" not in to_ocsf(HAND_BUILT[0])["metadata"]  # the shared metadata was not changed


def test_process_launch_has_its_parent_as_actor_and_no_argv_list() -> None:
    d = to_ocsf(_process(ProcessActivityId.LAUNCH))
    assert (d["class_uid"], d["activity_id"], d["type_uid"], d["launch_type"]) == (1007, 1, 100701, "Exec")
    assert d["actor"]["process"]["file"]["path"] == "/sbin/init"
    assert d["process"]["parent_process"]["pid"] == 1
    assert d["process"]["cmd_line"] == "curl -s x" and "args" not in d["process"]
    assert d["process"]["working_directory"] == "/root"
    assert d["process"]["file"]["type_id"] == 1 and d["process"]["user"] == {"uid": "0", "name": "root"}
    assert d["process"]["created_time"] == 1_700_000_000_123
    assert d["device"]["hostname"] == "host-1" and "type_id" in d["device"]


def test_fork_is_a_launch_of_type_fork() -> None:
    d = to_ocsf(_process(ProcessActivityId.FORK))
    assert (d["activity_id"], d["launch_type_id"], d["launch_type"]) == (1, 2, "Fork")


def test_terminate_is_reflexive_the_process_is_its_own_actor() -> None:
    d = to_ocsf(_process(ProcessActivityId.TERMINATE, exit_code=3))
    assert d["actor"]["process"]["pid"] == 10 and d["exit_code"] == 3


def test_launch_with_parent_pid_only_names_the_parent_by_pid() -> None:
    d = to_ocsf(_process(ProcessActivityId.FORK, ProcessRef(pid=13, ppid=12)))
    assert d["actor"] == {"process": {"pid": 12}}


def test_container_id_declares_the_container_profile() -> None:
    d = to_ocsf(_process(ProcessActivityId.LAUNCH, IN_CONTAINER))
    assert d["process"]["container"] == {"uid": "c0ffee"}
    assert d["metadata"]["profiles"] == ["container", "host"]


def test_file_rename_maps_old_and_new_path_with_type_ids() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.RENAME, path="/a/x", new_path="/a/y")
    d = to_ocsf(e)
    assert (d["class_uid"], d["activity_id"], d["activity_name"]) == (1001, 5, "Rename")
    assert d["file"] == {"path": "/a/x", "name": "x", "type_id": 1, "type": "Regular File"}
    assert d["file_result"]["path"] == "/a/y"
    assert d["actor"] == {"process": {"pid": 0}}  # the schema requires an actor; the kernel gave none


def test_folder_is_type_2() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path="/a/d", is_dir=True)
    assert to_ocsf(e)["file"]["type_id"] == 2


def test_connect_source_is_us_destination_the_server() -> None:
    local, remote = (
        Endpoint(family="inet", ip="10.0.0.2", port=5555),
        Endpoint(family="inet", ip="10.0.0.1", port=80),
    )
    d = to_ocsf(_net("connect", local, remote))
    assert d["src_endpoint"] == {"ip": "10.0.0.2", "port": 5555}
    assert d["dst_endpoint"] == {"ip": "10.0.0.1", "port": 80}
    assert d["connection_info"] == {"direction_id": 2, "direction": "Outbound", "protocol_ver_id": 4}
    assert d["actor"]["process"]["pid"] == 10 and d["unmapped"] == {"syscall": "connect", "family": "inet"}


def test_accept_source_is_the_remote_client() -> None:
    local, remote = (
        Endpoint(family="inet", ip="10.0.0.1", port=80),
        Endpoint(family="inet", ip="10.0.0.2", port=5555),
    )
    d = to_ocsf(_net("accept4", local, remote))
    assert d["src_endpoint"]["port"] == 5555 and d["dst_endpoint"]["port"] == 80
    assert d["connection_info"]["direction"] == "Inbound"


def test_loopback_peer_is_local_direction() -> None:
    assert to_ocsf(_net("connect", LO4, LO4))["connection_info"]["direction_id"] == 4


@pytest.mark.parametrize("syscall", ["bind", "listen"])
def test_bind_and_listen_name_the_local_socket_as_destination(syscall: str) -> None:
    d = to_ocsf(_net(syscall, LO6, None))
    assert d["dst_endpoint"] == {"ip": "::1", "port": 8080} and "src_endpoint" not in d
    assert d["activity_name"] == syscall.title()


def test_refused_connect_has_status_failure_and_errno() -> None:
    d = to_ocsf(_net("connect", None, LO6, success=False))
    assert (d["activity_id"], d["status_id"], d["status_code"], d["status_detail"]) == (
        5,
        2,
        "111",
        "ECONNREFUSED",
    )


def test_unix_and_netlink_sockets_are_named_endpoints() -> None:
    assert to_ocsf(_net("connect", None, UNIX))["dst_endpoint"] == {"name": "/run/x.sock"}
    assert to_ocsf(_net("bind", Endpoint(family="netlink"), None))["dst_endpoint"] == {"name": "netlink"}


def test_denied_finding_is_blocked_with_security_control_profile_and_hash_evidence() -> None:
    d = to_ocsf(_finding("denied", file_path="/tmp/m", file_sha256="ab" * 32))
    assert d["class_uid"] == 2004 and (d["severity_id"], d["severity"]) == (4, "High")
    assert d["evidences"][0]["file"]["hashes"][0] == {
        "algorithm_id": 3,
        "algorithm": "SHA-256",
        "value": "ab" * 32,
    }
    assert (d["action_id"], d["action"], d["disposition_id"], d["disposition"]) == (2, "Denied", 2, "Blocked")
    assert d["metadata"]["profiles"] == ["host", "security_control"]
    assert (
        d["finding_info"]["product"] == {"name": "rep"} and d["finding_info"]["uid"] == d["metadata"]["uid"]
    )


def test_unknown_action_is_other_with_its_own_words() -> None:
    d = to_ocsf(_finding("killed"))
    assert (d["action_id"], d["action"], d["disposition_id"], d["disposition"]) == (
        99,
        "Killed",
        99,
        "Killed",
    )


def test_finding_without_action_has_no_disposition_but_is_from_a_security_control() -> None:
    d = to_ocsf(_finding(None))
    assert "disposition" not in d and "action_id" not in d
    assert d["metadata"]["profiles"] == ["host", "security_control"] and d["is_alert"] is True


def test_exec_auth_request_is_a_launch_of_the_path_by_the_process() -> None:
    d = to_ocsf(AuthRequest(header=STAMP.stamp(), kind=AuthKind.EXEC, path="/tmp/m", process=PROC))
    assert (d["class_uid"], d["activity_id"]) == (1007, 1)
    assert (
        d["process"]["file"]["path"] == "/tmp/m" and d["actor"]["process"]["file"]["path"] == "/usr/bin/curl"
    )


def test_open_auth_request_is_a_file_open() -> None:
    d = to_ocsf(AuthRequest(header=STAMP.stamp(), kind=AuthKind.OPEN, path="/etc/shadow", process=PROC))
    assert (d["class_uid"], d["activity_id"], d["file"]["path"]) == (1001, 14, "/etc/shadow")


def test_encoder_writes_one_json_line() -> None:
    line = OcsfEncoder().encode(_process(ProcessActivityId.FORK))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["launch_type"] == "Fork"


def test_sequence_numbers_are_per_sensor_and_gapless() -> None:
    s = HeaderStamper("a", "h", FakeClock())
    assert [s.stamp().seq for _ in range(3)] == [1, 2, 3]
    assert s.last_seq == 3


def test_events_roundtrip_through_msgpack_as_tagged_union() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.DELETE, path="/x", process=PROC)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=Event)
    assert back == e


def test_names_and_argv_that_are_not_utf8_encode_as_escaped_text() -> None:
    odd = b"/t/\xff\xfe.bin".decode("utf-8", "surrogateescape")  # as the sensors decode paths
    proc = ProcessRef(pid=5, exe=odd, cmdline=("sh", b"-\xff".decode("utf-8", "surrogateescape")))
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=odd, process=proc)
    d = json.loads(OcsfEncoder().encode(e))
    assert d["file"]["path"] == "/t/\\xff\\xfe.bin" and d["file"]["name"] == "\\xff\\xfe.bin"
    assert d["actor"]["process"]["cmd_line"] == "sh -\\xff"
    assert problems(d) == []


def test_a_lone_surrogate_not_from_surrogateescape_is_escaped_too() -> None:
    e = FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path="/t/\ud800")
    assert json.loads(OcsfEncoder().encode(e))["file"]["path"] == "/t/\\ud800"


def test_sequence_beyond_integer_t_is_kept_in_unmapped() -> None:
    header = msgspec.structs.replace(STAMP.stamp(), seq=2**31)
    d = to_ocsf(FileActivity(header=header, activity=FileActivityId.CREATE, path="/x"))
    assert "sequence" not in d["metadata"] and d["unmapped"]["sequence"] == 2**31
    assert problems(d) == []


@pytest.mark.parametrize(
    ("class_uid", "activity_id", "activity_name", "body"),
    [
        (4003, 1, "Query", lambda p: {"query": {"hostname": "example.org"}, "dst_endpoint": {"ip": "::1"}}),
        (3002, 1, "Logon", lambda p: {"user": {"name": "root"}, "service": {"name": "sshd"}}),
        (3001, 3, "Password Change", lambda p: {"user": {"uid": "1000"}, "actor": {"process": p}}),
    ],
)
def test_shared_parts_fit_the_classes_the_detection_issue_adds(
    class_uid: int, activity_id: int, activity_name: str, body
) -> None:
    profiles: set[str] = set()
    d = codec._base(class_uid, activity_id, activity_name, STAMP.stamp(), profiles)
    d.update(body(codec._process(PROC, profiles)))
    assert problems(codec._done(d)) == []
