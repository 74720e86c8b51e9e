"""The field table is the schema contract (issue 8): every field it says is supplied really is read from
a record with its declared type, so the table cannot drift from the event model; a rule comparing a
value of the wrong type is reported at its line."""

from __future__ import annotations

import re

import msgspec
from tests.engines.sigma.build import header, rule, write_rules

from ringfence.engines.sigma import CONTENT_INTERFACE, LOGSOURCES, Logsource, SigmaEngine, load_directory
from ringfence.engines.sigma._fields import field_spec
from ringfence.sdk import (
    AccountChange,
    AccountChangeActivityId,
    Authentication,
    AuthenticationActivityId,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    FileActivity,
    FileActivityId,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)
from ringfence.sensors.audit._records import decode_record

PARENT = ProcessRef(pid=1, exe="/sbin/init", cmdline=("init",), user="root", uid=0)
FULL = ProcessRef(pid=9, ppid=1, exe="/bin/x", cmdline=("x", "-y"), cwd="/w", uid=5, user="u", parent=PARENT)
EVENTS = {
    Logsource.PROCESS_CREATION: ProcessActivity(
        header=header(), activity=ProcessActivityId.LAUNCH, process=FULL
    ),
    Logsource.FILE_EVENT: FileActivity(
        header=header(), activity=FileActivityId.CREATE, path="/a", process=FULL
    ),
    Logsource.FILE_CHANGE: FileActivity(
        header=header(), activity=FileActivityId.CLOSE_WRITE, path="/a", process=FULL
    ),
    Logsource.FILE_DELETE: FileActivity(
        header=header(), activity=FileActivityId.DELETE, path="/a", process=FULL
    ),
    Logsource.FILE_RENAME: FileActivity(
        header=header(), activity=FileActivityId.RENAME, path="/a", new_path="/b", process=FULL
    ),
    Logsource.NETWORK_CONNECTION: NetworkActivity(
        header=header(),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=True,
        local=Endpoint(family="inet", ip="10.0.0.1", port=40000),
        remote=Endpoint(family="inet", ip="1.2.3.4", port=443, hostname="a.example"),
        process=FULL,
    ),
    Logsource.AUTHENTICATION: Authentication(
        header=header(),
        activity=AuthenticationActivityId.LOGON,
        success=False,
        record_type="USER_AUTH",
        user="root",
        uid=0,
        service="sshd",
        operation="PAM:authentication",
        source=Endpoint(family="inet", ip="203.0.113.9", hostname="scanner.example"),
        terminal="ssh",
        command="/usr/bin/id",
        process=FULL,
    ),
    Logsource.ACCOUNT_CHANGE: AccountChange(
        header=header(),
        activity=AccountChangeActivityId.CREATE,
        success=True,
        record_type="ADD_USER",
        user="alice",
        uid=1001,
        group="sudo",
        gid=27,
        operation="adding user",
        process=FULL,
    ),
    Logsource.DNS_QUERY: DnsActivity(
        header=header(),
        activity=DnsActivityId.QUERY,
        query=DnsQuery(hostname="a.example", type="A"),
        process=FULL,
    ),
    Logsource.DNS: DnsActivity(
        header=header(),
        activity=DnsActivityId.RESPONSE,
        query=DnsQuery(hostname="a.example", type="A"),
        answers=(DnsAnswer(name="a.example", type="A", data="1.2.3.4"),),
    ),
    Logsource.SUDO: LogEvent(
        header=header(),
        source="/var/log/auth.log",
        program="sudo",
        message="alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id -u",
    ),
}
# real records as the audit sensor decodes them (hex decoded, enriched SYSCALL), one of each kind rules read
AUDIT_LINES = [
    (1300, 'arch=c000003e syscall=59 success=yes exit=0 a0=55d1 a1=55d2 a2=55d3 a3=0 items=2 ppid=10 pid=11 '
     'auid=1000 uid=0 gid=0 euid=33 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 comm="split" '
     'exe=2F7573722F62696E2F73706C6974 subj=unconfined key="susp_activity"'),
    (1309, 'argc=3 a0="getcap" a1="-r" a2=2F'),
    (1302, 'item=0 name="/etc/ld.so.preload" inode=12 dev=fd:01 mode=0100644 ouid=0 ogid=0 rdev=00:00 '
     'nametype=CREATE'),
    (1131, "pid=1 uid=0 auid=4294967295 ses=4294967295 msg='unit=ufw comm=\"systemd\" "
     "exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=success'"),
]  # fmt: skip
AUDIT_RULE_FIELDS = {
    "type": "SYSCALL", "SYSCALL": "execve", "comm": "split", "exe": "/usr/bin/split", "key": "susp_activity",
    "euid": "33", "a0": "getcap", "a1": "-r", "a2": "/", "name": "/etc/ld.so.preload", "nametype": "CREATE",
    "unit": "ufw", "syscall": "59",
}  # fmt: skip


def test_every_supplied_field_is_read_from_a_real_record_with_its_declared_type() -> None:
    assert set(EVENTS) | {Logsource.AUDITD} == {s for s, fields in LOGSOURCES.items() if fields}
    for source, fields in LOGSOURCES.items():
        if source is Logsource.AUDITD:
            continue  # below: its fields are whatever the kernel writes
        for name, spec in fields.items():
            if spec.getter is None:
                continue
            value = spec.getter(EVENTS[source])
            assert value is not None, (source, name)
            assert isinstance(value, int if spec.numeric else str), (source, name, value)


def test_the_audit_fields_sigmahq_rules_name_are_read_from_records_the_sensor_decodes() -> None:
    records = [decode_record(t, body) for t, body in AUDIT_LINES]
    for name, expected in AUDIT_RULE_FIELDS.items():
        spec = field_spec(Logsource.AUDITD, name)
        assert spec is not None and spec.getter is not None, name
        values = [spec.getter(r) for r in records]
        assert expected in values, (name, values)
    assert field_spec(Logsource.AUDITD, "a17") is not None  # any execve argument
    assert field_spec(Logsource.AUDITD, "Image") is None  # not a record's field: reported, absent
    assert field_spec(Logsource.AUDITD, "type").getter(EVENTS[Logsource.SUDO]) is None  # type: ignore[union-attr]


def test_the_schema_lists_supplied_fields_with_types_under_the_interface_version() -> None:
    schema = SigmaEngine.schema()
    assert schema.interface == CONTENT_INTERFACE == SigmaEngine.manifest.content_interface
    fields = {f.name: f.type for f in schema.logsources["network_connection"]}
    assert fields["DestinationPort"] == "integer" and fields["DestinationIp"] == "string"
    assert fields["DestinationHostname"] == "string"  # the DNS sensor's name cache supplies it now
    assert "QueryResults" not in {f.name for f in schema.logsources["dns_query"]}  # documented, not supplied
    assert {"type", "SYSCALL", "exe", "key", "name"} <= {f.name for f in schema.logsources["auditd"]}
    assert schema.waiting == ()
    (args,) = schema.patterns["auditd"]  # execve's arguments, any number of them
    assert re.fullmatch(args.name, "a17") and not re.fullmatch(args.name, "Image")
    assert msgspec.json.decode(msgspec.json.encode(schema), type=type(schema)) == schema


def test_a_value_of_the_wrong_type_is_reported_at_its_line(tmp_path) -> None:
    text = rule(
        "sel:\n  DestinationPort|contains: https\n  Image|gt: 5\ncondition: sel",
        category="network_connection",
    )
    rules = load_directory(str(write_rules(tmp_path, **{"t.yml": text})))
    messages = {i.message: i.line for i in rules.issues}
    lines = text.splitlines()
    port = messages["field DestinationPort is an integer, compared with the string 'https'"]
    image = messages["field Image is a string, compared as a number (gt 5)"]
    assert lines[port - 1].strip().startswith("DestinationPort|contains")
    assert lines[image - 1].strip().startswith("Image|gt")
    assert not rules.errors and rules.active == 1  # reported, still loaded: at run time it just never matches
