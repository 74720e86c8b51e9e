"""The shape of the OCSF JSON that `to_ocsf` writes, as msgspec Structs: what `_decode` reads back.

Only the attributes the event records are built from are declared; everything derived (captions,
`type_uid`, `category_uid`, the actor of a launch, profiles, directions) is ignored, as are attributes
we do not write. msgspec checks every declared type (an int is never a string, a bool never an int), so
a wrong type is an error naming its JSON path, before any record is built. One Struct per class, told
apart by `class_uid` (an int tag).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# What fits the records on the wire (msgpack: 64-bit); a time in ms whose ns fit, from the epoch on.
Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Ms = Annotated[int, msgspec.Meta(ge=0, le=(2**63 - 1) // 1_000_000)]


class _Doc(msgspec.Struct, kw_only=True, frozen=True):
    pass


class User(_Doc, frozen=True):
    uid: str | None = None
    name: str | None = None
    groups: list[Group] | None = None


class Group(_Doc, frozen=True):
    uid: str | None = None
    name: str | None = None


class File(_Doc, frozen=True):
    path: str
    type_id: Int = 1
    hashes: list[Hash] | None = None


class Hash(_Doc, frozen=True):
    algorithm_id: Int
    value: str


class Container(_Doc, frozen=True):
    uid: str


class XAttributes(_Doc, frozen=True):
    cgroup: str | None = None


class Process(_Doc, frozen=True):
    pid: Int
    file: File | None = None
    cmd_line: str | None = None
    working_directory: str | None = None
    user: User | None = None
    created_time: Ms | None = None
    container: Container | None = None
    xattributes: XAttributes | None = None
    parent_process: Process | None = None


class Actor(_Doc, frozen=True):
    process: Process | None = None


class Endpoint(_Doc, frozen=True):
    ip: str | None = None
    port: Int | None = None
    hostname: str | None = None
    name: str | None = None


class Metadata(_Doc, frozen=True):
    uid: str
    log_name: str = ""
    sequence: Int | None = None
    labels: list[str] | None = None


class Device(_Doc, frozen=True):
    hostname: str = ""


class AuditRecord(_Doc, frozen=True):
    type: str
    fields: dict[str, str] = {}


class AuditUnmapped(_Doc, frozen=True):
    serial: Int | None = None
    records: list[AuditRecord] | None = None
    complete: bool = True
    type: str | None = None  # Authentication, Account Change: the record type and its op
    op: str | None = None


class LogUnmapped(_Doc, frozen=True):
    source: str
    host: str | None = None
    program: str | None = None
    pid: Int | None = None
    facility: Int | None = None
    severity: Int | None = None


class Unmapped(_Doc, frozen=True):
    sequence: Int | None = None
    new_uid: Int | None = None
    new_gid: Int | None = None
    auth: str | None = None
    syscall: str | None = None
    family: str | None = None
    command: str | None = None
    audit: AuditUnmapped | None = None
    log: LogUnmapped | None = None
    answer_names: list[str] | None = None


class Base(_Doc, tag_field="class_uid", kw_only=True, frozen=True):
    activity_id: Int
    time: Ms
    metadata: Metadata
    device: Device = Device()
    unmapped: Unmapped | None = None
    actor: Actor | None = None


class ProcessDoc(Base, tag=1007, kw_only=True, frozen=True):
    process: Process
    launch_type_id: Int | None = None
    exit_code: Int | None = None


class FileDoc(Base, tag=1001, kw_only=True, frozen=True):
    file: File
    file_result: File | None = None


class NetworkDoc(Base, tag=4001, kw_only=True, frozen=True):
    status_id: Int = 1
    status_code: str | None = None
    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None


class Product(_Doc, frozen=True):
    name: str


class Analytic(_Doc, frozen=True):
    name: str


class Related(_Doc, frozen=True):
    uid: str


class AttackPart(_Doc, frozen=True):
    uid: str | None = None
    name: str | None = None


class Attack(_Doc, frozen=True):
    technique: AttackPart | None = None
    sub_technique: AttackPart | None = None
    tactic: AttackPart | None = None


class FindingInfo(_Doc, frozen=True):
    title: str
    product: Product
    desc: str | None = None
    analytic: Analytic | None = None
    related_events: list[Related] | None = None
    attacks: list[Attack] | None = None


class Evidence(_Doc, frozen=True):
    process: Process | None = None
    file: File | None = None


class FindingDoc(Base, tag=2004, kw_only=True, frozen=True):
    severity_id: Int
    finding_info: FindingInfo
    evidences: list[Evidence] | None = None
    action_id: Int | None = None
    action: str | None = None
    disposition_id: Int | None = None


class BaseEventDoc(Base, tag=0, kw_only=True, frozen=True):
    message: str = ""
    raw_data: str | None = None


class Service(_Doc, frozen=True):
    name: str


class Session(_Doc, frozen=True):
    uid: str | None = None
    terminal: str | None = None


class AuthenticationDoc(Base, tag=3002, kw_only=True, frozen=True):
    status_id: Int = 1
    user: User | None = None
    service: Service | None = None
    src_endpoint: Endpoint | None = None
    session: Session | None = None


class AccountDoc(Base, tag=3001, kw_only=True, frozen=True):
    status_id: Int = 1
    user: User | None = None


class Query(_Doc, frozen=True):
    hostname: str
    type: str | None = None
    # `class` is a keyword: renamed below
    dns_class: str | None = msgspec.field(default=None, name="class")
    packet_uid: Int | None = None


class Answer(_Doc, frozen=True):
    rdata: str
    type: str
    ttl: Int | None = None
    dns_class: str | None = msgspec.field(default=None, name="class")


class DnsDoc(Base, tag=4003, kw_only=True, frozen=True):
    query: Query | None = None
    rcode_id: Int | None = None
    rcode: str | None = None
    answers: list[Answer] | None = None
    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None


AnyDoc = (
    ProcessDoc | FileDoc | NetworkDoc | FindingDoc | BaseEventDoc | AuthenticationDoc | AccountDoc | DnsDoc
)
CLASS_UIDS = (0, 1001, 1007, 2004, 3001, 3002, 4001, 4003)
