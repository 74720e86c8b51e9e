"""The RFC 5424 formatter and the syslog address parser: logic only, every message checked by the strict
parser of `rfc5424_strict.py`."""

from __future__ import annotations

import json

import pytest

from ringfence.events import (
    Authentication,
    AuthenticationActivityId,
    DetectionFinding,
    Header,
    OcsfEncoder,
    ProcessRef,
    Severity,
)
from ringfence.outputs import (
    FACILITIES,
    SD_ID,
    Rfc5424Formatter,
    SyslogAddress,
    SyslogAddressError,
    parse_address,
    parse_facility,
)
from tests.outputs.rfc5424_strict import Rfc5424Error, parse

T_NS = 1_764_688_191_123_456_789  # 2025-12-02T15:09:51.123456789Z


def _header(host: str = "h1", time_ns: int = T_NS) -> Header:
    return Header(id="u-ext:e2e.findings-7", time_ns=time_ns, mono_ns=1, host=host, sensor="ext", seq=7)


def _finding(**kw: object) -> DetectionFinding:
    fields: dict = {
        "header": _header(),
        "title": "Blocked execution of evil",
        "severity": Severity.HIGH,
        "source": "ringfence.ioc",
        "rule": "ioc.sha256",
        "techniques": ("T1059", "T1059.004"),
        "tactics": ("execution",),
    } | kw
    return DetectionFinding(**fields)


def _formatter(**kw: object) -> Rfc5424Formatter:
    args: dict = {"facility": FACILITIES["authpriv"], "hostname": "host-1.example", "procid": 4242} | kw
    return Rfc5424Formatter(**args)


def test_finding_is_a_strict_rfc5424_message_with_the_ocsf_json_as_msg() -> None:
    finding = _finding()
    data, truncated = _formatter().format(finding, 5)
    m = parse(data)
    assert not truncated
    assert (m.facility, m.severity, m.version) == (10, 3, 1)  # authpriv; High -> error
    assert m.timestamp == "2025-12-02T15:09:51.123Z"
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("host-1.example", "ringfence", "4242", "finding")
    assert dict(m.sd[SD_ID]) == {
        "uid": "u-ext:e2e.findings-7",
        "rule": "ioc.sha256",
        "severity": "High",
        "extension": "ringfence.ioc",
        "techniques": "T1059,T1059.004",
        "tactics": "execution",
    }
    assert m.sd["meta"] == [("sequenceId", "5")]
    assert json.loads(m.text) == json.loads(OcsfEncoder().encode(finding))


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (Severity.UNKNOWN, 5),
        (Severity.INFORMATIONAL, 6),
        (Severity.LOW, 5),
        (Severity.MEDIUM, 4),
        (Severity.HIGH, 3),
        (Severity.CRITICAL, 2),
        (Severity.FATAL, 1),
    ],
)
def test_ocsf_severity_maps_to_syslog_severity_and_never_to_emergency(
    severity: Severity, expected: int
) -> None:
    m = parse(_formatter(facility=FACILITIES["local4"]).format(_finding(severity=severity))[0])
    assert (m.facility, m.severity) == (20, expected)


def test_quote_backslash_and_bracket_in_sd_values_are_escaped_and_round_trip() -> None:
    rule = 'a"b\\c]d [x="y"] \\]'
    m = parse(_formatter().format(_finding(rule=rule))[0])
    assert m.param(SD_ID, "rule") == rule
    assert json.loads(m.text)["finding_info"]["analytic"]["name"] == rule


def test_control_characters_never_reach_the_header_or_sd_but_stay_in_the_json() -> None:
    rule = "r\n1\x00\x1b[31m\x7f\x85"
    title = 'title ]\n\r\x00 [fake@1 x="y"]'
    data, _ = _formatter().format(_finding(rule=rule, title=title))
    m = parse(data)
    assert m.param(SD_ID, "rule") == "r\ufffd1\ufffd\ufffd[31m\ufffd\ufffd"
    assert set(m.sd) == {SD_ID, "meta"}
    assert b"\n" not in data and b"\x00" not in data and b"\r" not in data
    assert json.loads(m.text)["finding_info"]["title"] == title


def test_hostile_hostname_becomes_printable_ascii_of_at_most_255_octets() -> None:
    f = _formatter(hostname="evil host\n]\x00é" + "x" * 400)
    m = parse(f.format(_finding())[0])
    assert m.hostname is not None and len(m.hostname) == 255
    assert m.hostname.startswith("evil_host_]__")
    assert all(33 <= ord(c) <= 126 for c in m.hostname)
    assert parse(_formatter(hostname="").format(_finding())[0]).hostname is None  # NILVALUE


def test_non_utf8_names_from_paths_arrive_as_valid_utf8() -> None:
    odd = b"/tmp/\xff\xfe-evil".decode("utf-8", "surrogateescape")
    finding = _finding(
        rule=odd, file_path=odd, process=ProcessRef(pid=5, exe=odd, cmdline=(odd, "\udcff")), title=odd
    )
    m = parse(_formatter().format(finding)[0])
    assert m.param(SD_ID, "rule") == "/tmp/\\xff\\xfe-evil"
    doc = json.loads(m.text)
    assert doc["evidences"][0]["file"]["path"] == "/tmp/\\xff\\xfe-evil"


def test_too_long_msg_is_cut_on_a_character_boundary_and_marked_header_and_sd_whole() -> None:
    finding = _finding(description="é" * 6000 + "END")  # 2-octet characters: a cut can fall inside one
    full = OcsfEncoder().encode(finding)[:-1]
    for max_bytes in (2048, 2049, 4097, 8192):
        data, truncated = _formatter(max_bytes=max_bytes).format(finding)
        assert truncated and max_bytes - 1 <= len(data) <= max_bytes
        m = parse(data)
        assert m.param(SD_ID, "truncated") == str(len(full))
        assert m.param(SD_ID, "rule") == "ioc.sha256" and m.sd["meta"]
        body = m.text.encode()  # strict UTF-8 decode: no half character at the end
        assert full.startswith(body) and len(body) > 1000


def test_message_at_the_limit_is_not_truncated() -> None:
    f = _formatter()
    data, truncated = f.format(_finding(description="x" * 5000))
    assert not truncated and parse(data).param(SD_ID, "truncated") is None
    exact = _formatter(max_bytes=len(data))
    assert exact.format(_finding(description="x" * 5000), 1) == (data, False)


def test_long_sd_values_are_capped_so_the_header_always_fits() -> None:
    finding = _finding(rule="]" * 512, techniques=tuple(f"T{1000 + i}.{i:03d}" for i in range(32)))
    data, _ = _formatter(max_bytes=2048).format(finding)
    m = parse(data)
    rule = m.param(SD_ID, "rule")
    assert rule is not None and rule == "]" * len(rule) and 0 < len(rule) <= 128
    techniques = m.param(SD_ID, "techniques")
    assert techniques is not None and techniques.startswith("T1000.000,") and len(techniques) <= 256
    assert all(t.startswith("T") for t in techniques.split(","))  # whole items only


def test_sequence_ids_count_from_one_and_wrap_below_2_to_the_31() -> None:
    f = _formatter()
    assert [f.next_sequence() for _ in range(3)] == [1, 2, 3]
    assert parse(f.format(_finding())[0]).sd["meta"] == [("sequenceId", "4")]
    assert parse(f.format(_finding(), 2147483647)[0]).sd["meta"] == [("sequenceId", "2147483647")]


def test_time_that_is_not_one_becomes_the_nilvalue() -> None:
    m = parse(_formatter().format(_finding(header=_header(time_ns=10**30)))[0])
    assert m.timestamp is None


def test_other_kinds_carry_their_kind_as_msgid_and_their_class() -> None:
    event = Authentication(
        header=_header(), activity=AuthenticationActivityId.LOGON, success=False, record_type="USER_AUTH"
    )
    m = parse(_formatter().format(event)[0])
    assert m.msgid == "authentication" and m.param(SD_ID, "class_uid") == "3002"
    assert json.loads(m.text)["class_uid"] == 3002


def test_strict_parser_refuses_what_the_rfc_forbids() -> None:
    good = b'<86>1 2025-12-02T15:09:51.123Z h ringfence 1 finding [x@32473 a="1"] \xef\xbb\xbf{}'
    assert parse(good).text == "{}"
    for bad in (
        b'<86>1 2025-12-02T15:09:51.123Z h ringfence 1 finding [x@32473 a="]"]',  # unescaped ]
        b'<86>1 2025-12-02T15:09:51.123Z h ringfence 1 finding [x@32473 a="\\n"]',  # escapes nothing
        b"<192>1 - h a 1 m -",  # PRIVAL > 191
        b"<86>1 2025-13-02T15:09:51Z h a 1 m -",  # month 13
        b"<86>1 - h\x01 a 1 m -",  # not PRINTUSASCII
        b'<86>1 - h a 1 m [x@32473 a="1"][x@32473 a="2"]',  # SD-ID twice
        b"<86>1 - h a 1 m [x@abc]",  # not a PEN
    ):
        with pytest.raises(Rfc5424Error):
            parse(bad)


@pytest.mark.parametrize(
    ("name", "code"),
    [("kern", 0), ("auth", 4), ("authpriv", 10), ("audit", 13), ("local4", 20), ("local7", 23)],
)
def test_named_facilities(name: str, code: int) -> None:
    assert parse_facility(name) == code


@pytest.mark.parametrize(
    ("name", "message"), [("security", "ambiguous"), ("local8", "unknown"), ("", "unknown")]
)
def test_unknown_or_ambiguous_facility_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_facility(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp://192.0.2.1:514", SyslogAddress("udp", "192.0.2.1", 514)),
        ("tcp://[2001:db8::1]:6514", SyslogAddress("tcp", "2001:db8::1", 6514)),
        ("tcp://[::1]:601", SyslogAddress("tcp", "::1", 601)),
        ("tcp://siem.example.com:601", SyslogAddress("tcp", "siem.example.com", 601)),
        ("udp://localhost:65535", SyslogAddress("udp", "localhost", 65535)),
        ("unix:/dev/log", SyslogAddress("unix", path="/dev/log")),
        ("unix:///run/systemd/journal/syslog", SyslogAddress("unix", path="/run/systemd/journal/syslog")),
    ],
)
def test_good_syslog_addresses(text: str, expected: SyslogAddress) -> None:
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("udp://192.0.2.1", "port is missing"),
        ("udp://192.0.2.1:0", "1..65535"),
        ("udp://192.0.2.1:65536", "1..65535"),
        ("udp://192.0.2.1:\uff15\uff11\uff14", "1..65535"),  # fullwidth digits: isdigit, not ASCII
        ("tcp://2001:db8::1:514", "IPv6 address goes in brackets"),
        ("tcp://[2001:db8::zz]:514", "not an IPv6 address"),
        ("tcp://[::1]514", r"\[ADDRESS\]:PORT"),
        ("tcp://bad_host!:514", "neither an IP address nor a host name"),
        ("tcp://300.1.1.1:514", "neither an IP address nor a host name"),
        ("tcp://:514", "neither an IP address nor a host name"),
        ("tls://siem:6514", "TLS, RFC 5425, is not supported"),
        ("http://siem:514", "unknown scheme 'http'"),
        ("siem:514", "unknown scheme 'siem'"),
        ("udp:192.0.2.1:514", "udp://HOST:PORT"),
        ("unix:dev/log", "absolute path"),
        ("unix:/" + "x" * 200, "at most 107 bytes"),
    ],
)
def test_bad_syslog_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SyslogAddressError, match=message):
        parse_address(text)
