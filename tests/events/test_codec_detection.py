"""The detection sensors' records (audit, authentication, account change, DNS, log lines) in OCSF 1.8.0."""

from __future__ import annotations

import json

import msgspec
import pytest

from ringfence.events import (
    AccountChange,
    AccountChangeActivityId,
    AuditEvent,
    AuditRecord,
    Authentication,
    AuthenticationActivityId,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    Event,
    EventKind,
    HeaderStamper,
    LogEvent,
    OcsfEncoder,
    ProcessRef,
    event_kind,
    to_ocsf,
)
from tests.fakes import FakeClock
from tests.ocsf.validator import problems

STAMP = HeaderStamper("test", "host-1", FakeClock())
PROC = ProcessRef(pid=10, ppid=1, exe="/usr/bin/su", cmdline=("su", "-"), uid=1000, user="alice")
SYSCALL = AuditRecord(
    type="SYSCALL",
    fields={
        "arch": "c000003e",
        "syscall": "257",
        "success": "yes",
        "exit": "3",
        "a0": "ffffff9c",
        "comm": "cat",
        "exe": "/usr/bin/cat",
        "key": "rf-cred",
        "SYSCALL": "openat",
        "ARCH": "x86_64",
    },
)
PATH = AuditRecord(type="PATH", fields={"item": "0", "name": "/etc/shadow", "nametype": "NORMAL"})
REMOTE = Endpoint(family="inet", ip="192.0.2.7", port=50022, hostname="bastion.example.org")


def _audit(*records: AuditRecord, process: ProcessRef | None = PROC, complete: bool = True) -> AuditEvent:
    return AuditEvent(
        header=STAMP.stamp(),
        serial=812,
        time_ns=1_700_000_000_123_000_000,
        records=records,
        process=process,
        complete=complete,
    )


def _auth(activity: AuthenticationActivityId, **kw: object) -> Authentication:
    return Authentication(header=STAMP.stamp(), activity=activity, **kw)  # type: ignore[arg-type]


def _account(activity: AccountChangeActivityId, **kw: object) -> AccountChange:
    return AccountChange(header=STAMP.stamp(), activity=activity, **kw)  # type: ignore[arg-type]


def _dns(activity: DnsActivityId, **kw: object) -> DnsActivity:
    return DnsActivity(header=STAMP.stamp(), activity=activity, **kw)  # type: ignore[arg-type]


def _log(**kw: object) -> LogEvent:
    fields: dict[str, object] = {"source": "/var/log/auth.log", "message": "session opened for user root"}
    return LogEvent(header=STAMP.stamp(), **{**fields, **kw})  # type: ignore[arg-type]


QUERY = DnsQuery(hostname="example.org", type="A", dns_class="IN")
ANSWERS = (
    DnsAnswer(name="example.org", type="CNAME", data="edge.example.net", ttl=300, dns_class="IN"),
    DnsAnswer(name="edge.example.net", type="A", data="192.0.2.10", ttl=60),
)
RESOLVER = Endpoint(family="inet", ip="192.0.2.53", port=53)
CLIENT = Endpoint(family="inet", ip="10.0.0.2", port=40001)

HAND_BUILT: list[Event] = [
    _audit(SYSCALL, PATH),
    _audit(SYSCALL, PATH, process=None, complete=False),
    _audit(AuditRecord(type="UNKNOWN[1999]")),
    _audit(),
    *(
        _auth(a, success=ok, record_type=t, user="root", uid=0, service="su", process=PROC)
        for a, t in [
            (AuthenticationActivityId.LOGON, "USER_LOGIN"),
            (AuthenticationActivityId.LOGOFF, "USER_LOGOUT"),
            (AuthenticationActivityId.ACCOUNT_SWITCH, "USER_START"),
            (AuthenticationActivityId.OTHER, "USER_ACCT"),
        ]
        for ok in (True, False)
    ),
    _auth(
        AuthenticationActivityId.LOGON,
        success=False,
        record_type="USER_AUTH",
        user="root",
        service="sshd",
        operation="PAM:authentication",
        source=REMOTE,
        terminal="ssh",
        session=4,
    ),
    _auth(AuthenticationActivityId.OTHER, success=True, record_type="USER_CMD", command="id", uid=0),
    _auth(AuthenticationActivityId.LOGON, success=True, record_type="USER_AUTH"),  # nothing known
    *(
        _account(a, success=True, record_type="ADD_USER", user="rf-x", uid=1500)
        for a in AccountChangeActivityId
    ),
    _account(AccountChangeActivityId.CREATE, success=True, record_type="ADD_GROUP", group="rf-g", gid=1501),
    _account(AccountChangeActivityId.OTHER, success=True, record_type="GRP_MGMT", user="bob", group="wheel"),
    _account(AccountChangeActivityId.DELETE, success=False, record_type="DEL_USER", process=PROC),
    _dns(DnsActivityId.QUERY, query=QUERY, transaction_id=0x1234, src=CLIENT, dst=RESOLVER, process=PROC),
    _dns(DnsActivityId.RESPONSE, query=QUERY, transaction_id=0x1234, rcode=0, answers=ANSWERS, src=RESOLVER),
    _dns(DnsActivityId.RESPONSE, query=QUERY, rcode=3, dst=CLIENT),
    _dns(DnsActivityId.RESPONSE, rcode=4000),
    _dns(DnsActivityId.TRAFFIC, query=DnsQuery(hostname="x.example"), dst=Endpoint(family="inet", ip="::1")),
    _log(),
    _log(
        source="journal",
        time_ns=1_700_000_000_999_000_000,
        host="h",
        program="sshd",
        pid=77,
        facility=4,
        severity=6,
        line="Nov 14 22:13:20 h sshd[77]: session opened for user root",
        process=PROC,
    ),
    *(_log(severity=s) for s in range(8)),
    _log(severity=9),
]


@pytest.mark.parametrize("event", HAND_BUILT, ids=lambda e: f"{type(e).__name__}-{e.header.seq}")
def test_every_detection_record_is_valid_ocsf_1_8_0_without_warnings(event: Event) -> None:
    assert problems(to_ocsf(event)) == []


@pytest.mark.parametrize("event", HAND_BUILT, ids=lambda e: f"{type(e).__name__}-{e.header.seq}")
def test_detection_records_roundtrip_through_msgpack_as_the_event_union(event: Event) -> None:
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(event), type=Event) == event


def test_each_new_record_has_its_own_routing_kind() -> None:
    kinds = {type(e): event_kind(e) for e in HAND_BUILT}
    assert kinds == {
        AuditEvent: EventKind.AUDIT,
        Authentication: EventKind.AUTHENTICATION,
        AccountChange: EventKind.ACCOUNT,
        DnsActivity: EventKind.DNS,
        LogEvent: EventKind.LOG,
    }


def test_audit_event_is_a_base_event_that_keeps_every_record_and_field() -> None:
    d = to_ocsf(_audit(SYSCALL, PATH))
    assert (d["class_uid"], d["category_uid"], d["activity_id"], d["type_uid"]) == (0, 0, 99, 99)
    assert d["activity_name"] == "SYSCALL" and d["type_name"] == "Base Event: SYSCALL"
    assert d["time"] == 1_700_000_000_123
    assert d["unmapped"]["audit"] == {
        "serial": 812,
        "records": [{"type": "SYSCALL", "fields": SYSCALL.fields}, {"type": "PATH", "fields": PATH.fields}],
    }
    assert d["actor"]["process"]["file"]["path"] == "/usr/bin/su"


def test_audit_event_without_eoe_says_so_and_has_no_actor_when_unknown() -> None:
    d = to_ocsf(_audit(SYSCALL, process=None, complete=False))
    assert d["unmapped"]["audit"]["complete"] is False and "actor" not in d


def test_audit_records_survive_a_json_replay_in_order() -> None:
    line = OcsfEncoder().encode(_audit(SYSCALL, PATH))
    records = json.loads(line)["unmapped"]["audit"]["records"]
    assert [AuditRecord(type=r["type"], fields=r["fields"]) for r in records] == [SYSCALL, PATH]
    assert list(records[0]["fields"]) == list(SYSCALL.fields)


def test_failed_remote_login_names_user_service_source_and_session() -> None:
    d = to_ocsf(
        _auth(
            AuthenticationActivityId.LOGON,
            success=False,
            record_type="USER_AUTH",
            user="root",
            service="sshd",
            operation="PAM:authentication",
            source=REMOTE,
            terminal="ssh",
            session=4,
        )
    )
    assert (d["class_uid"], d["activity_id"], d["activity_name"], d["type_uid"]) == (3002, 1, "Logon", 300201)
    assert (d["status_id"], d["status"]) == (2, "Failure")
    assert d["user"] == {"name": "root"} and d["service"] == {"name": "sshd"}
    assert d["src_endpoint"] == {"ip": "192.0.2.7", "hostname": "bastion.example.org", "port": 50022}
    assert d["is_remote"] is True and d["session"] == {"uid": "4", "terminal": "ssh"}
    assert d["unmapped"]["audit"] == {"type": "USER_AUTH", "op": "PAM:authentication"}


def test_authentication_with_nothing_known_still_names_a_user_and_a_service() -> None:
    d = to_ocsf(_auth(AuthenticationActivityId.LOGON, success=True, record_type="USER_AUTH"))
    assert d["user"] == {"name": "unknown"} and d["service"] == {"name": "unknown"}


def test_other_authentication_is_named_after_its_record_and_sudo_keeps_the_command() -> None:
    d = to_ocsf(_auth(AuthenticationActivityId.OTHER, success=True, record_type="USER_CMD", command="id"))
    assert (d["activity_id"], d["activity_name"], d["type_name"]) == (99, "USER_CMD", "Authentication: Other")
    assert d["unmapped"]["command"] == "id"


def test_account_created_names_the_account_and_the_actor() -> None:
    d = to_ocsf(
        _account(
            AccountChangeActivityId.CREATE,
            success=True,
            record_type="ADD_USER",
            user="rf-x",
            uid=1500,
            process=PROC,
        )
    )
    assert (d["class_uid"], d["activity_id"], d["activity_name"]) == (3001, 1, "Create")
    assert d["user"] == {"name": "rf-x", "uid": "1500"} and d["actor"]["process"]["pid"] == 10


def test_group_change_puts_the_group_under_the_user() -> None:
    d = to_ocsf(
        _account(
            AccountChangeActivityId.CREATE, success=True, record_type="ADD_GROUP", group="rf-g", gid=1501
        )
    )
    assert d["user"] == {"name": "rf-g", "groups": [{"name": "rf-g", "uid": "1501"}]}
    d = to_ocsf(
        _account(
            AccountChangeActivityId.OTHER, success=True, record_type="GRP_MGMT", user="bob", group="wheel"
        )
    )
    assert d["user"] == {"name": "bob", "groups": [{"name": "wheel"}]} and d["activity_name"] == "GRP_MGMT"


def test_dns_response_has_query_rcode_answers_and_their_owner_names() -> None:
    d = to_ocsf(
        _dns(
            DnsActivityId.RESPONSE, query=QUERY, transaction_id=0x1234, rcode=0, answers=ANSWERS, src=RESOLVER
        )
    )
    assert (d["class_uid"], d["activity_id"], d["activity_name"], d["type_uid"]) == (
        4003,
        2,
        "Response",
        400302,
    )
    assert d["query"] == {"hostname": "example.org", "type": "A", "class": "IN", "packet_uid": 0x1234}
    assert (d["rcode_id"], d["rcode"]) == (0, "NoError")
    assert d["answers"][0] == {"rdata": "edge.example.net", "type": "CNAME", "ttl": 300, "class": "IN"}
    assert d["unmapped"]["answer_names"] == ["example.org", "edge.example.net"]
    assert d["src_endpoint"] == {"ip": "192.0.2.53", "port": 53} and "dst_endpoint" not in d


def test_dns_rcode_outside_the_rfc_table_is_other_with_its_number() -> None:
    d = to_ocsf(_dns(DnsActivityId.RESPONSE, rcode=4000))
    assert (d["rcode_id"], d["rcode"]) == (99, "rcode 4000")
    assert d["dst_endpoint"] == {"name": "unknown"}  # the schema needs one endpoint


def test_endpoint_hostname_is_the_destination_hostname() -> None:
    d = to_ocsf(_dns(DnsActivityId.TRAFFIC, query=QUERY, dst=Endpoint(family="inet", hostname="ns1.example")))
    assert d["dst_endpoint"] == {"hostname": "ns1.example"}


def test_log_line_is_a_base_event_with_its_own_time_message_and_raw_line() -> None:
    line = "Nov 14 22:13:20 h sshd[77]: session opened for user root"
    d = to_ocsf(
        _log(
            source="journal",
            time_ns=1_700_000_000_999_000_000,
            host="h",
            program="sshd",
            pid=77,
            facility=4,
            severity=3,
            line=line,
        )
    )
    assert (d["class_uid"], d["activity_id"], d["activity_name"], d["type_name"]) == (
        0,
        99,
        "Log",
        "Base Event: Log",
    )
    assert d["time"] == 1_700_000_000_999 and d["raw_data"] == line
    assert d["message"] == "session opened for user root"
    assert (d["severity_id"], d["severity"]) == (4, "High")
    assert d["unmapped"]["log"] == {
        "source": "journal",
        "host": "h",
        "program": "sshd",
        "pid": 77,
        "facility": 4,
        "severity": 3,
    }


def test_log_line_without_its_own_time_takes_the_time_it_was_read() -> None:
    event = _log(severity=42)
    d = to_ocsf(event)
    assert d["time"] == event.header.time_ns // 1_000_000 and d["severity_id"] == 1


def test_a_base_event_named_other_is_flagged_by_the_validator() -> None:
    """The reason a Base Event's activity and type are named after what it holds: 'Other' warns."""
    d = dict(to_ocsf(_log()))
    d["activity_name"], d["type_name"] = "Other", "Base Event: Other"
    found = problems(d)
    assert any("attribute_enum_sibling_suspicious_other at activity_name" in p for p in found)
    assert any("attribute_enum_sibling_suspicious_other at type_name" in p for p in found)


def test_account_switch_is_a_substitute_user() -> None:
    d = to_ocsf(
        _auth(AuthenticationActivityId.ACCOUNT_SWITCH, success=True, record_type="USER_START", user="bob")
    )
    assert (d["activity_id"], d["activity_name"]) == (7, "Account Switch")
    assert (d["account_switch_type_id"], d["account_switch_type"]) == (1, "Substitute User")


def test_detection_records_reach_an_extension_in_an_event_batch() -> None:
    """The SDK's host frame decodes every new record, so an extension can subscribe to the new kinds."""
    from ringfence.sdk._protocol import EventBatch, HostFrame

    frame = EventBatch(events=HAND_BUILT)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(frame), type=HostFrame) == frame
