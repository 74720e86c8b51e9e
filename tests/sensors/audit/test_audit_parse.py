"""Record assembly and decoding, on records captured from this kernel and on hand-made kernel-format ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringfence._linux import NLMSG_HEADER
from ringfence.events import Endpoint
from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._parse import (
    EOE,
    EXECVE,
    PATH,
    PROCTITLE,
    SOCKADDR,
    SYSCALL,
    EventAssembler,
    decode_sockaddr,
    decode_text,
)

CAPTURED = json.loads((Path(__file__).parent / "captured_records.json").read_text())

SYSCALL_CONNECT = (
    "audit(1700000000.123:456): arch=c000003e syscall=42 success=yes exit=0 a0=3 a1=7ffd2a1c a2=10 a3=0 "
    "items=0 ppid=100 pid=101 auid=1000 uid=1000 gid=1000 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
    'tty=pts0 ses=3 comm="curl" exe="/usr/bin/curl" key="ringfence"'
)


def feed_all(records: list[list[object]], assembler: EventAssembler | None = None) -> list:
    assembler = assembler or EventAssembler()
    done = []
    for record_type, text in records:
        done.extend(assembler.feed(int(str(record_type)), str(text), now_ns=0))
    return done


def test_chunked_long_argument_is_rejoined_in_full() -> None:
    (event,) = feed_all(CAPTURED["exec_chunked_arg"])
    assert event.complete
    assert event.syscall.name == "execve"
    assert event.argv[:2] == ("sh", "-c")
    assert event.argv[2] == "true 'hello world' é CAPTUREMARK " + "x" * 9000
    assert event.cwd == "/work/main"
    assert event.paths == ("/usr/bin/sh", "/lib64/ld-linux-x86-64.so.2")
    assert event.syscall.exe == "/usr/bin/dash"
    assert event.syscall.keys == ("rf-capture",)
    assert event.errors == 0


def test_refused_ipv6_connect_keeps_errno_and_address() -> None:
    (event,) = feed_all(CAPTURED["connect_ipv6_refused"])
    assert event.syscall.name == "connect"
    assert not event.syscall.success
    assert event.syscall.exit == -111
    assert event.sockaddr == Endpoint(family="inet6", ip="::1", port=9)


def test_unix_connect_to_missing_path_decodes_the_path() -> None:
    (event,) = feed_all(CAPTURED["connect_unix_missing"])
    assert event.syscall.exit == -2
    assert event.sockaddr == Endpoint(family="unix", path="/tmp/nonexist.sock")


def test_abstract_unix_bind_is_marked_with_at() -> None:
    (event,) = feed_all(CAPTURED["bind_unix_abstract"])
    assert event.syscall.name == "bind"
    assert event.sockaddr == Endpoint(family="unix", path="@abstract-CAPTURE")


def test_hex_encoded_args_and_proctitle_decode() -> None:
    records = [
        (SYSCALL, SYSCALL_CONNECT.replace("syscall=42", "syscall=59")),
        (EXECVE, 'audit(1700000000.123:456): argc=3 a0="echo" a1=68656C6C6F20776F726C64 a2=22717522'),
        (1327, "audit(1700000000.123:456): proctitle=6563686F0068656C6C6F20776F726C64"),
        (EOE, "audit(1700000000.123:456): "),
    ]
    (event,) = feed_all([list(r) for r in records])
    assert event.argv == ("echo", "hello world", '"qu"')
    assert event.proctitle == ("echo", "hello world")
    assert event.time_ns == 1_700_000_000_123_000_000
    assert event.serial == 456
    assert event.syscall.auid == 1000
    assert event.syscall.comm == "curl"


def test_ipv4_sockaddr_port_is_network_order() -> None:
    assert decode_sockaddr(bytes.fromhex("02001F907F000001" + "00" * 8)) == Endpoint(
        family="inet", ip="127.0.0.1", port=8080
    )


def test_unset_auid_reads_as_none_and_null_key_as_no_key() -> None:
    text = SYSCALL_CONNECT.replace("auid=1000", "auid=4294967295").replace('key="ringfence"', "key=(null)")
    (event,) = feed_all([[SYSCALL, text], [EOE, "audit(1700000000.123:456): "]])
    assert event.syscall.auid is None
    assert event.syscall.keys == ()


def test_several_keys_joined_by_the_kernel_split_apart() -> None:
    hex_keys = b"ringfence\x01other".hex()
    (event,) = feed_all(
        [
            [SYSCALL, SYSCALL_CONNECT.replace('key="ringfence"', f"key={hex_keys}")],
            [EOE, "audit(1700000000.123:456): "],
        ]
    )
    assert event.syscall.keys == ("ringfence", "other")


def test_event_without_eoe_completes_after_timeout_as_incomplete() -> None:
    assembler = EventAssembler(max_age_ns=1000)
    assert assembler.feed(SYSCALL, SYSCALL_CONNECT, now_ns=0) == []
    assert assembler.expire(now_ns=999) == []
    (event,) = assembler.expire(now_ns=1000)
    assert not event.complete
    assert event.syscall.name == "connect"
    assert assembler.stats.timeouts == 1


def test_too_many_open_events_evict_the_oldest_and_count_it() -> None:
    assembler = EventAssembler(max_open=2)
    for serial in (1, 2):
        assembler.feed(SYSCALL, SYSCALL_CONNECT.replace(":456)", f":{serial})"), now_ns=0)
    (evicted,) = assembler.feed(SYSCALL, SYSCALL_CONNECT.replace(":456)", ":3)"), now_ns=0)
    assert evicted.serial == 1
    assert not evicted.complete
    assert assembler.stats.evictions == 1


def test_interleaved_events_are_kept_apart_by_serial() -> None:
    a, b = SYSCALL_CONNECT.replace(":456)", ":1)"), SYSCALL_CONNECT.replace(":456)", ":2)")
    assembler = EventAssembler()
    assembler.feed(SYSCALL, a, now_ns=0)
    assembler.feed(SYSCALL, b, now_ns=0)
    assembler.feed(
        SOCKADDR, "audit(1700000000.123:2): saddr=0A000009000000000000000000000000000000000000000100000000", 0
    )
    (second,) = assembler.feed(EOE, "audit(1700000000.123:2): ", now_ns=0)
    (first,) = assembler.feed(EOE, "audit(1700000000.123:1): ", now_ns=0)
    assert (first.serial, first.sockaddr) == (1, None)
    assert second.sockaddr == Endpoint(family="inet6", ip="::1", port=9)


def test_undecodable_records_are_counted_not_raised() -> None:
    assembler = EventAssembler()
    assembler.feed(SYSCALL, "not an audit record", now_ns=0)
    assembler.feed(SOCKADDR, "audit(1700000000.123:7): saddr=zz", now_ns=0)
    (event,) = assembler.feed(EOE, "audit(1700000000.123:7): ", now_ns=0)
    assert event.sockaddr is None
    assert assembler.stats.parse_errors == 2


def test_missing_execve_argument_is_counted() -> None:
    records = [[EXECVE, 'audit(1.000:9): argc=3 a0="a" a2="c"'], [EOE, "audit(1.000:9): "]]
    (event,) = feed_all(records)
    assert event.argv == ("a", "c")
    assert event.errors == 1


@pytest.mark.parametrize(("raw", "text"), [('"plain"', "plain"), ("(null)", None), ("6869", "hi")])
def test_untrusted_strings_decode_quoted_hex_and_null(raw: str, text: str | None) -> None:
    assert decode_text(raw) == text


def test_short_nlmsg_len_does_not_truncate_a_record() -> None:
    body = b"audit(1.000:1): saddr=0100"
    datagram = NLMSG_HEADER.pack(NLMSG_HEADER.size + 4, SOCKADDR, 0, 0, 0) + body
    (msg,) = nl.split_datagram(datagram)
    assert msg.payload == body


def test_rule_roundtrips_with_its_key() -> None:
    fields = [
        nl.RuleField(nl.AUDIT_ARCH, nl.AUDIT_EQUAL, nl.AUDIT_ARCH_X86_64),
        nl.RuleField(nl.AUDIT_FILTERKEY, nl.AUDIT_EQUAL, text="rf"),
    ]
    rule = nl.unpack_rule(nl.pack_rule(nl.AUDIT_FILTER_EXIT, nl.AUDIT_ALWAYS, [42, 59, 322], fields))
    assert rule.syscalls == frozenset({42, 59, 322})
    assert rule.keys == ("rf",)
    assert rule.fields[0].value == nl.AUDIT_ARCH_X86_64


def _exec_with(*extra: tuple[int, str]) -> list[list[object]]:
    syscall = SYSCALL_CONNECT.replace("syscall=42", "syscall=59")
    return [[SYSCALL, syscall], *[[t, f"audit(1700000000.123:456): {body}"] for t, body in extra],
            [EOE, "audit(1700000000.123:456): "]]  # fmt: skip


def test_undecodable_path_name_reads_empty_and_does_not_cost_the_event() -> None:
    (event,) = feed_all(_exec_with((PATH, "item=0 name=zz inode=1"), (PATH, 'item=1 name="/bin/true"')))
    assert event.paths == ("", "/bin/true")
    assert event.syscall.name == "execve"
    assert event.errors == 0  # PATH is decoded when read, not when the event completes


def test_path_without_name_or_null_name_reads_empty() -> None:
    (event,) = feed_all(_exec_with((PATH, "item=0 inode=1"), (PATH, "item=1 name=(null)")))
    assert event.paths == ("", "")


def test_undecodable_or_missing_proctitle_reads_as_no_command_line() -> None:
    (bad,) = feed_all(_exec_with((PROCTITLE, "proctitle=6g6f")))
    assert bad.proctitle == ()
    (odd,) = feed_all(_exec_with((PROCTITLE, "proctitle=616")))
    assert odd.proctitle == ()
    (none,) = feed_all(_exec_with())
    assert none.proctitle == ()
    assert none.paths == ()


def test_quoted_proctitle_is_the_command_line_as_written() -> None:
    (event,) = feed_all(_exec_with((PROCTITLE, 'proctitle="bash"')))
    assert event.proctitle == ("bash",)


def test_records_beyond_the_eager_ones_are_kept_verbatim_for_the_feed() -> None:
    fcaps = "fver=0 fp=0 fi=0 fe=0 old_pp=000001fffeffffff"
    (event,) = feed_all(_exec_with((1321, fcaps), (PATH, 'item=0 name="/bin/true"')))
    assert event.types == (SYSCALL, 1321, PATH)
    assert event.records[1] == (1321, fcaps)
