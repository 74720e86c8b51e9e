"""The field table is the schema contract (issue 8): every field it says is supplied really is read from
a record with its declared type, so the table cannot drift from the event model; a rule comparing a
value of the wrong type is reported at its line."""

from __future__ import annotations

import msgspec
from tests.engines.sigma.build import header, rule, write_rules

from ringfence.engines.sigma import CONTENT_INTERFACE, LOGSOURCES, Logsource, SigmaEngine, load_directory
from ringfence.sdk import (
    Endpoint,
    FileActivity,
    FileActivityId,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

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
        remote=Endpoint(family="inet", ip="1.2.3.4", port=443),
        process=FULL,
    ),
}


def test_every_supplied_field_is_read_from_a_real_record_with_its_declared_type() -> None:
    assert set(EVENTS) == set(LOGSOURCES)
    for source, fields in LOGSOURCES.items():
        for name, spec in fields.items():
            if spec.getter is None:
                continue
            value = spec.getter(EVENTS[source])
            assert value is not None, (source, name)
            assert isinstance(value, int if spec.numeric else str), (source, name, value)


def test_the_schema_lists_supplied_fields_with_types_under_the_interface_version() -> None:
    schema = SigmaEngine.schema()
    assert schema.interface == CONTENT_INTERFACE == SigmaEngine.manifest.content_interface
    fields = {f.name: f.type for f in schema.logsources["network_connection"]}
    assert fields["DestinationPort"] == "integer" and fields["DestinationIp"] == "string"
    assert "DestinationHostname" not in fields  # documented, not supplied: not in the contract
    assert "auditd" in schema.waiting
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
