"""Record text to AuditRecords, user-space records to identity events, and the baseline's rules: pure,
on records as the kernel and libaudit write them (and on what they never should)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes import FakeClock
from tests.ocsf.validator import problems

from ringfence.events import (
    AccountChange,
    AccountChangeActivityId,
    Authentication,
    AuthenticationActivityId,
    HeaderStamper,
    OcsfEncoder,
    ProcessRef,
)
from ringfence.events import AuditEvent as AuditEventRecord
from ringfence.sensors.audit import DEFAULT_BASELINE, Baseline, SyscallGroup, Watch
from ringfence.sensors.audit import _baseline as bl
from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._identity import ACCOUNT, AUTHENTICATION, has_identity, to_identity
from ringfence.sensors.audit._names import RECORD_TYPES
from ringfence.sensors.audit._parse import EventAssembler
from ringfence.sensors.audit._records import decode_record

STAMP = HeaderStamper("audit", "h", FakeClock())
USER_AUTH, USER_START, USER_CMD, ADD_USER, ADD_GROUP, USER_CHAUTHTOK = 1100, 1105, 1123, 1114, 1116, 1108
SSHD_FAILED = (
    "pid=812 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='op=PAM:authentication grantors=? "
    'acct="admin" exe="/usr/sbin/sshd" hostname=192.0.2.7 addr=192.0.2.7 terminal=ssh res=failed\''
)


def identity(record_type: int, body: str) -> Authentication | AccountChange | None:
    return to_identity(decode_record(record_type, body), STAMP.stamp(), ProcessRef(pid=812))


def test_syscall_record_keeps_raw_registers_and_gains_the_enriched_name() -> None:
    r = decode_record(
        1300,
        'arch=c000003e syscall=319 success=yes exit=3 a0=7ffd1234 a1=0 items=0 ppid=1 pid=2 comm="python3" '
        "exe=2F746D702F782079 key=72662D78",
    )
    assert r.type == "SYSCALL"
    assert (r.fields["a0"], r.fields["a1"]) == ("7ffd1234", "0")  # registers, never decoded as text
    assert (r.fields["SYSCALL"], r.fields["ARCH"]) == ("memfd_create", "x86_64")
    assert (r.fields["exe"], r.fields["key"], r.fields["comm"]) == ("/tmp/x y", "rf-x", "python3")


def test_i386_syscall_numbers_are_named_from_their_own_table() -> None:
    r = decode_record(1300, "arch=40000003 syscall=11 success=yes exit=0")
    assert (r.fields["SYSCALL"], r.fields["ARCH"]) == ("execve", "i386")


def test_unknown_arch_and_syscall_number_are_left_as_written() -> None:
    assert "SYSCALL" not in decode_record(1300, "arch=deadbeef syscall=1").fields
    assert decode_record(1300, "arch=c000003e syscall=9999").fields["SYSCALL"] == "9999"


def test_execve_arguments_are_decoded_and_chunks_joined() -> None:
    r = decode_record(1309, 'argc=3 a0="sh" a1=2D63 a2_len=6 a2[0]=6563 a2[1]="ho!!"')
    assert r.type == "EXECVE"
    assert (r.fields["a0"], r.fields["a1"], r.fields["a2"]) == ("sh", "-c", "echo!!")


def test_proctitle_nuls_become_spaces_as_ausearch_shows_them() -> None:
    assert decode_record(1327, "proctitle=7375646F002D690069640000").fields["proctitle"] == "sudo -i id"


def test_numbers_that_look_like_hex_in_other_fields_stay_numbers() -> None:
    r = decode_record(1305, "op=set audit_backlog_limit=8192 old=64 auid=0 ses=12 res=1")
    assert (r.fields["old"], r.fields["ses"], r.fields["audit_backlog_limit"]) == ("64", "12", "8192")


def test_user_record_opens_msg_and_keeps_spaces_of_op() -> None:
    r = decode_record(
        ADD_USER,
        "pid=9 uid=0 auid=0 ses=3 msg='op=adding user id=1001 exe=\"/usr/sbin/useradd\" res=success'",
    )
    assert r.type == "ADD_USER"
    assert r.fields == {
        "pid": "9",
        "uid": "0",
        "auid": "0",
        "ses": "3",
        "op": "adding user",
        "id": "1001",
        "exe": "/usr/sbin/useradd",
        "res": "success",
    }


def test_unknown_record_type_is_named_as_auditd_names_it() -> None:
    assert decode_record(1999, "x=1").type == "UNKNOWN[1999]"
    assert decode_record(1423, "domain=1").type == "LANDLOCK_ACCESS"


@pytest.mark.parametrize(
    "body",
    [
        "",
        "====",
        "'",
        "msg='",
        'a="unterminated',
        "=x y= z",
        "a0=zz a1=0 a1=1",
        "key=0 key=(null)",
        "\x00\x01",
    ],
)
def test_malformed_records_decode_without_error(body: str) -> None:
    for record_type in (1300, 1309, 1327, USER_AUTH, ADD_USER, 1999):
        decode_record(record_type, body)
        identity(record_type, body)


@settings(max_examples=300, deadline=None)
@given(record_type=st.sampled_from([1300, 1302, 1309, 1327, USER_AUTH, USER_CMD, ADD_USER]), body=st.text())
def test_any_record_text_decodes_and_encodes_as_valid_ocsf(record_type: int, body: str) -> None:
    record = decode_record(record_type, body)
    event = AuditEventRecord(header=STAMP.stamp(), serial=1, time_ns=0, records=(record,))
    assert problems(json.loads(OcsfEncoder().encode(event))) == []
    if (derived := identity(record_type, body)) is not None:
        assert problems(json.loads(OcsfEncoder().encode(derived))) == []


def test_failed_sshd_login_is_a_failed_remote_logon() -> None:
    event = identity(USER_AUTH, SSHD_FAILED)
    assert isinstance(event, Authentication)
    assert (event.activity, event.success, event.user, event.service) == (
        AuthenticationActivityId.LOGON,
        False,
        "admin",
        "sshd",
    )
    assert event.source is not None and (event.source.ip, event.source.hostname) == ("192.0.2.7", None)
    assert (event.terminal, event.session, event.operation) == ("ssh", None, "PAM:authentication")


def test_named_remote_host_is_kept_as_the_source_hostname() -> None:
    body = SSHD_FAILED.replace("hostname=192.0.2.7", "hostname=bastion.example.org")
    event = identity(USER_AUTH, body)
    assert isinstance(event, Authentication) and event.source is not None
    assert (event.source.ip, event.source.hostname) == ("192.0.2.7", "bastion.example.org")


def test_su_session_start_is_an_account_switch_and_sshd_one_a_logon() -> None:
    su = 'pid=5 uid=0 auid=0 ses=2 msg=\'op=PAM:session_open acct="bob" exe="/usr/bin/su" res=success\''
    sshd = su.replace("/usr/bin/su", "/usr/sbin/sshd")
    assert identity(USER_START, su).activity is AuthenticationActivityId.ACCOUNT_SWITCH  # type: ignore[union-attr]
    assert identity(USER_START, sshd).activity is AuthenticationActivityId.LOGON  # type: ignore[union-attr]


def test_sudo_command_names_who_ran_it_and_what() -> None:
    body = "pid=7 uid=1000 auid=1000 ses=4 msg='cwd=\"/home/a\" cmd=6964202D75 terminal=pts/0 res=success'"
    event = identity(USER_CMD, body)
    assert isinstance(event, Authentication)
    assert (event.uid, event.command, event.session, event.success) == (1000, "id -u", 4, True)


def test_account_records_become_account_changes_with_user_or_group() -> None:
    user = identity(
        ADD_USER, "pid=9 uid=0 msg='op=adding user id=1001 exe=\"/usr/sbin/useradd\" res=success'"
    )
    assert isinstance(user, AccountChange)
    assert (user.activity, user.uid, user.user, user.group) == (
        AccountChangeActivityId.CREATE,
        1001,
        None,
        None,
    )
    group = identity(
        ADD_GROUP, 'pid=9 uid=0 msg=\'op=adding group acct="devs" exe="/usr/sbin/groupadd" res=success\''
    )
    assert isinstance(group, AccountChange)
    assert (group.group, group.user, group.gid) == ("devs", None, None)
    passwd = identity(
        USER_CHAUTHTOK, 'pid=9 uid=0 msg=\'op=PAM:chauthtok acct="a" exe="/usr/bin/passwd" res=failed\''
    )
    assert isinstance(passwd, AccountChange)
    assert (passwd.activity, passwd.success) == (AccountChangeActivityId.PASSWORD_CHANGE, False)


def test_records_that_are_no_login_or_account_give_no_identity_event() -> None:
    assert identity(1300, "arch=c000003e syscall=59") is None
    assert identity(1131, "pid=1 msg='unit=ufw res=success'") is None  # SERVICE_STOP: an AuditEvent only


def test_unset_values_are_absent_not_question_marks() -> None:
    event = identity(
        USER_AUTH,
        'pid=1 msg=\'op=PAM:authentication acct="?" exe="?" hostname=? addr=? terminal=? res=success\'',
    )
    assert isinstance(event, Authentication)
    assert (event.user, event.service, event.source, event.terminal) == (None, None, None, None)


def test_a_user_record_completes_at_once_and_a_record_without_header_is_counted() -> None:
    assembler = EventAssembler()
    done = assembler.feed(USER_AUTH, "audit(1700000000.123:77): pid=1 msg='op=x res=success'", 0)
    assert [(e.serial, e.complete, e.records) for e in done] == [
        (77, True, ((USER_AUTH, "pid=1 msg='op=x res=success'"),))
    ]
    assert assembler.feed(1300, "no header here", 0) == [] and assembler.stats.parse_errors == 1
    assert assembler.stats.open == 0 and assembler.stats.events == 1


def test_a_user_record_inside_an_open_syscall_event_joins_it() -> None:
    assembler = EventAssembler()
    assert assembler.feed(1300, "audit(1.000:9): arch=c000003e syscall=44 pid=1", 0) == []
    assert assembler.feed(USER_AUTH, "audit(1.000:9): pid=1 msg='op=x'", 0) == []
    (event,) = assembler.feed(1320, "audit(1.000:9): ", 0)
    assert [t for t, _ in event.records] == [1300, USER_AUTH]


def test_baseline_categories_can_be_turned_off() -> None:
    lean = DEFAULT_BASELINE.without({"xattr", "memfd", "ssh"})
    assert lean.categories == DEFAULT_BASELINE.categories - {"xattr", "memfd", "ssh"}


def test_baseline_rules_are_tagged_and_recognised_by_their_key() -> None:
    assert bl.rule_key("ringfence", "cron") == "ringfence:cron"
    assert bl.is_ours(("ringfence:cron",), "ringfence") and bl.is_ours(("ringfence",), "ringfence")
    assert not bl.is_ours(("ringfence2", "ringfence-x", "other:ringfence"), "ringfence")


def test_watch_rule_is_a_tree_for_a_directory_a_path_otherwise_none_without_parent(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    tree = nl.unpack_rule(bl.watch_rule(str(tmp_path / "d"), "wa", "k:c", None) or b"")
    path = nl.unpack_rule(bl.watch_rule(str(tmp_path / "not-yet"), "wa", "k:c", 42) or b"")
    assert [(f.field, f.text) for f in tree.fields if f.text] == [
        (nl.AUDIT_DIR, str(tmp_path / "d")),
        (nl.AUDIT_FILTERKEY, "k:c"),
    ]
    assert [f.field for f in path.fields] == [nl.AUDIT_WATCH, nl.AUDIT_PERM, nl.AUDIT_PID, nl.AUDIT_FILTERKEY]
    assert [f.value for f in path.fields if f.field == nl.AUDIT_PERM] == [bl.PERM_WRITE | bl.PERM_ATTR]
    assert bl.watch_rule(str(tmp_path / "missing" / "file"), "wa", "k:c", None) is None
    with pytest.raises(ValueError, match="'rwxa'"):
        bl.watch_rule(str(tmp_path / "d"), "wz", "k:c", None)


def test_syscall_group_rule_per_arch_with_only_the_syscalls_it_has() -> None:
    group = SyscallGroup("module", ("init_module", "finit_module", "no_such_call"))
    x64, i386 = (
        nl.unpack_rule(r)
        for r in bl.syscall_rules(group, "k:module", [nl.AUDIT_ARCH_X86_64, nl.AUDIT_ARCH_I386], None)
    )
    assert x64.syscalls == {175, 313} and i386.syscalls == {128, 350}
    assert x64.keys == i386.keys == ("k:module",)


def test_home_patterns_expand_to_what_exists(tmp_path: Path) -> None:
    for user in ("a", "b"):
        (tmp_path / user / ".ssh").mkdir(parents=True)
    assert bl.expand([f"{tmp_path}/*/.ssh", "/etc/passwd"]) == [
        f"{tmp_path}/a/.ssh",
        f"{tmp_path}/b/.ssh",
        "/etc/passwd",
    ]


def test_baseline_of_nothing_has_no_categories() -> None:
    assert Baseline().categories == frozenset()
    assert Baseline(watches=(Watch("x", ("/x",)),)).categories == {"x"}


def test_has_identity_is_true_exactly_for_the_record_types_to_identity_reads() -> None:
    """Decided on type numbers alone, before decoding; unknown numbers never count."""
    for number, name in RECORD_TYPES.items():
        assert has_identity([1300, number, 1320]) is (name in AUTHENTICATION or name in ACCOUNT), name
    assert not has_identity([99999, 1300])
    assert not has_identity([])
    assert has_identity(iter([1300, 1112]))  # USER_LOGIN, from a generator too
