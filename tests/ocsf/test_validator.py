"""The validator itself: each rule rejects what it should, on events built by hand (not by our codec)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ocsf import schema as schema_module
from tests.ocsf import validator as validator_module
from tests.ocsf.schema import Item, SchemaError, load
from tests.ocsf.validator import problems, validate


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "name": path.rsplit("/", 1)[-1], "type_id": 1}


PROCESS_LAUNCH: dict[str, Any] = {
    "class_uid": 1007,
    "category_uid": 1,
    "activity_id": 1,
    "activity_name": "Launch",
    "type_uid": 100701,
    "time": 1_700_000_000_000,
    "severity_id": 1,
    "metadata": {"version": "1.8.0", "product": {"name": "hand"}},
    "device": {"hostname": "h", "type_id": 0},
    "actor": {"process": {"pid": 1, "file": _file("/sbin/init")}},
    "process": {"pid": 2, "file": _file("/bin/sh"), "cmd_line": "sh -c true"},
}

NETWORK_CONNECT: dict[str, Any] = {
    "class_uid": 4001,
    "category_uid": 4,
    "activity_id": 1,
    "type_uid": 400101,
    "time": 1_700_000_000_000,
    "severity_id": 1,
    "metadata": {"version": "1.8.0", "product": {"name": "hand"}},
    "src_endpoint": {"ip": "127.0.0.1", "port": 40000},
    "dst_endpoint": {"ip": "127.0.0.1", "port": 80},
}


def _codes(event: dict[str, Any], severity: str = "error") -> set[tuple[str, str]]:
    return {(i.code, i.path) for i in validate(event) if i.severity == severity}


def _with(base: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    event = copy.deepcopy(base)
    change(event)
    return event


def test_hand_built_valid_events_have_no_issue() -> None:
    assert validate(PROCESS_LAUNCH) == []
    assert validate(NETWORK_CONNECT) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(event: dict[str, Any]) -> None:
        for p in parents:
            event = event[p]
        event[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(event: dict[str, Any]) -> None:
        for p in parents:
            event = event[p]
        del event[last]

    return change


HASH_VALUE = "process.file.hashes[0].value"  # inside an array of objects

ERRORS = [
    # required attributes: in the class, in an object, deep in objects, in what a class extends
    (_drop("time"), "attribute_required_missing", "time"),
    (_drop("metadata.version"), "attribute_required_missing", "metadata.version"),
    (_drop("actor.process.file.type_id"), "attribute_required_missing", "actor.process.file.type_id"),
    (_drop("device.type_id"), "attribute_required_missing", "device.type_id"),
    (_drop("actor"), "attribute_required_missing", "actor"),  # required by system, extended
    (_set("process", None), "attribute_required_missing", "process"),  # null is missing
    # unknown attributes, at the top and inside objects
    (_set("colour", "red"), "attribute_unknown", "colour"),
    (_set("process.args", ["sh"]), "attribute_unknown", "process.args"),
    (_set("actor.process.file.owner_colour", 1), "attribute_unknown", "actor.process.file.owner_colour"),
    # profiles: container attributes of process need the container profile; profiles must exist
    (_set("process.container", {"uid": "c1"}), "attribute_unknown", "process.container"),
    (_set("time_dt", "2024-01-01T00:00:00Z"), "attribute_unknown", "time_dt"),  # datetime profile
    (_set("metadata.profiles", ["host", "nope"]), "profile_unknown", "metadata.profiles[1]"),
    # types: scalars, subtypes' primitives, integer ranges, bool is not an integer, objects, arrays
    (_set("process.pid", "2"), "attribute_wrong_type", "process.pid"),
    (_set("process.pid", True), "attribute_wrong_type", "process.pid"),
    (_set("process.pid", 2**31), "attribute_wrong_type", "process.pid"),  # integer_t is 32-bit
    (_set("time", 1.5), "attribute_wrong_type", "time"),  # timestamp_t is long_t
    (_set("process.cmd_line", ["sh"]), "attribute_wrong_type", "process.cmd_line"),
    (_set("process.file", "/bin/sh"), "attribute_wrong_type", "process.file"),
    (_set("metadata.profiles", "host"), "attribute_wrong_type", "metadata.profiles"),
    (_set("metadata.profiles", ["host", 7]), "attribute_wrong_type", "metadata.profiles[1]"),
    (_set("process.file.hashes", [{"algorithm_id": 3}]), "attribute_required_missing", HASH_VALUE),
    # enum values, in the class and in objects
    (_set("process.file.type_id", 42), "attribute_enum_value_unknown", "process.file.type_id"),
    (_set("severity_id", 7), "attribute_enum_value_unknown", "severity_id"),
    (_set("category_uid", 4), "attribute_enum_value_unknown", "category_uid"),  # 1007 is System
    # constraints of objects: at least one of
    (_set("actor", {}), "constraint_failed", "actor"),
    (_set("process", {"file": _file("/bin/sh")}), "constraint_failed", "process"),
    # the class cannot be found
    (_drop("class_uid"), "attribute_required_missing", "class_uid"),
    (_set("class_uid", "1007"), "attribute_wrong_type", "class_uid"),
    (_set("class_uid", 1099), "class_uid_unknown", "class_uid"),
    # versions newer than the schema, or not versions at all
    (_set("metadata.version", "1.9.0"), "version_incompatible", "metadata.version"),
    (_set("metadata.version", "1.8"), "version_invalid_format", "metadata.version"),
]


@pytest.mark.parametrize(("change", "code", "path"), ERRORS, ids=[f"{c}@{p}" for _, c, p in ERRORS])
def test_rule_rejects_bad_process_event(change: Callable, code: str, path: str) -> None:
    assert (code, path) in _codes(_with(PROCESS_LAUNCH, change))


def test_type_uid_other_than_class_times_100_plus_activity_rejected() -> None:
    codes = _codes(_with(PROCESS_LAUNCH, _set("type_uid", 100702)))
    assert ("type_uid_incorrect", "type_uid") in codes


def test_activity_id_unknown_to_the_class_rejected() -> None:
    codes = _codes(_with(PROCESS_LAUNCH, lambda e: e.update(activity_id=7, type_uid=100707)))
    assert ("attribute_enum_value_unknown", "activity_id") in codes
    assert ("attribute_enum_value_unknown", "type_uid") in codes


def test_host_profile_attributes_on_network_activity_need_the_profile() -> None:
    event = _with(NETWORK_CONNECT, _set("device", {"hostname": "h", "type_id": 0}))
    assert ("attribute_unknown", "device") in _codes(event)
    event["metadata"]["profiles"] = ["host"]
    assert validate(event) == []


def test_network_activity_needs_an_endpoint_and_endpoints_an_identifier() -> None:
    no_endpoint = _with(NETWORK_CONNECT, _drop("src_endpoint"))
    del no_endpoint["dst_endpoint"]
    assert ("constraint_failed", "") in _codes(no_endpoint)
    only_port = _with(NETWORK_CONNECT, _set("dst_endpoint", {"port": 80}))
    assert ("constraint_failed", "dst_endpoint") in _codes(only_port)


def test_port_range_and_ip_length_of_subtypes_enforced() -> None:
    assert ("attribute_value_exceeds_range", "dst_endpoint.port") in _codes(
        _with(NETWORK_CONNECT, _set("dst_endpoint.port", 70000))
    )
    assert ("attribute_value_exceeds_max_len", "dst_endpoint.ip") in _codes(
        _with(NETWORK_CONNECT, _set("dst_endpoint.ip", "1" * 41))
    )


def test_profile_declared_makes_its_attributes_known() -> None:
    event = _with(PROCESS_LAUNCH, _set("process.container", {"uid": "c1"}))
    event["metadata"]["profiles"] = ["container"]
    assert validate(event) == []


def test_open_objects_take_any_attribute() -> None:
    event = _with(PROCESS_LAUNCH, _set("unmapped", {"anything": {"nested": [1, "x"]}}))
    assert validate(event) == []


WARNINGS = [
    (_set("activity_name", "Start"), "attribute_enum_sibling_incorrect", "activity_name"),
    (_set("process.lineage", ["/sbin/init"]), "attribute_deprecated", "process.lineage"),
    (_set("metadata.version", "1.3.0"), "version_incorrect", "metadata.version"),
    (_set("actor.process.cpid", "not-a-uuid"), "attribute_value_regex_not_matched", "actor.process.cpid"),
]


@pytest.mark.parametrize(("change", "code", "path"), WARNINGS, ids=[f"{c}@{p}" for _, c, p in WARNINGS])
def test_rule_warns_on_doubtful_process_event(change: Callable, code: str, path: str) -> None:
    event = _with(PROCESS_LAUNCH, change)
    assert (code, path) in _codes(event, "warning")
    assert _codes(event) == set()


def test_other_activity_whose_name_is_just_other_warns() -> None:
    event = _with(PROCESS_LAUNCH, lambda e: e.update(activity_id=99, type_uid=100799, activity_name="Other"))
    assert ("attribute_enum_sibling_suspicious_other", "activity_name") in _codes(event, "warning")


def test_schema_compiles_extends_includes_and_profile_resets() -> None:
    s = load()
    # process extends process_entity: its `name` is the narrower process_name_t
    assert s.objects["process"].attributes["name"]["type"] == "process_name_t"
    # file sets constraints {} and so drops _entity's at_least_one [name, uid]
    assert s.objects["file"].constraints == {}
    # base_event includes the host profile; system resets `device` to no profile, network does not
    assert s.classes[1001].attributes["device"].get("profile") is None
    assert s.classes[4001].attributes["device"]["profile"] == "host"
    assert s.classes[1007].attributes["class_uid"]["enum"].keys() == {"1007"}


def test_missing_schema_directory_fails_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=str(tmp_path)):
        schema_module._Compiler(tmp_path).compile()


@pytest.mark.parametrize(
    ("value", "codes"),
    [
        ({"a": 1}, []),
        ({}, ["constraint_failed"]),
        ({"a": 1, "b": 2}, ["constraint_failed"]),  # just one, not two
    ],
)
def test_just_one_constraint_needs_exactly_one(value: dict, codes: list[str]) -> None:
    run = validator_module._Run(load(), {})
    run.constraints(value, "x", Item("thing", "Thing", {}, {"just_one": ["a", "b"]}))
    assert [i.code for i in run.issues] == codes


def test_constraint_the_validator_does_not_know_is_an_error_not_a_pass() -> None:
    run = validator_module._Run(load(), {})
    run.constraints({"a": 1}, "x", Item("thing", "Thing", {}, {"at_most_two": ["a"]}))
    assert [i.code for i in run.issues] == ["constraint_unknown"]


def test_ocsf_lib_reading_keeps_host_profile_on_system_classes() -> None:
    """ocsf-lib ignores `"profile": null`: there, System Activity's actor and device need `host`."""
    strict = load(null_profile_resets=False)
    assert ("attribute_unknown", "actor") in {(i.code, i.path) for i in validate(PROCESS_LAUNCH, strict)}
    declared = _with(PROCESS_LAUNCH, _set("metadata.profiles", ["host"]))
    assert validate(declared, strict) == [] and problems(declared) == []
    assert any("ocsf-lib" in p for p in problems(PROCESS_LAUNCH))


BASE_EVENT: dict[str, Any] = {
    "class_uid": 0,
    "category_uid": 0,
    "activity_id": 99,
    "activity_name": "Audit",
    "type_uid": 99,
    "type_name": "Base Event: Audit",
    "time": 1_700_000_000_000,
    "severity_id": 1,
    "metadata": {"version": "1.8.0", "product": {"name": "hand"}},
    "unmapped": {"records": [{"type": "SYSCALL"}]},
}


def test_base_event_is_class_0_and_checked_like_any_class() -> None:
    assert validate(BASE_EVENT) == []
    assert ("attribute_required_missing", "severity_id") in _codes(
        _with(BASE_EVENT, lambda e: e.pop("severity_id"))
    )
    assert ("attribute_enum_value_unknown", "category_uid") in _codes(
        _with(BASE_EVENT, lambda e: e.update(category_uid=1))
    )
    assert ("attribute_unknown", "process") in _codes(
        _with(BASE_EVENT, lambda e: e.update(process={"pid": 1}))
    )
    assert ("attribute_unknown", "device") in _codes(
        _with(BASE_EVENT, lambda e: e.update(device={"hostname": "h"}))
    )
