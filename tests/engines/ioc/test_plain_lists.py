"""Plain `.ioc` lists: every kind inferred per line, labels and comments, every bad line at file:line."""

from __future__ import annotations

import hashlib
import io

import pytest

from ringfence.engines.ioc import IndicatorProblem, IocBuilder, IocSet, IssueSeverity, Kind, infer
from ringfence.engines.ioc._plain import parse_ioc_lines

DATA = b"eicar"
MD5 = hashlib.md5(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()


def parse(text: str, source: str = "/etc/rf/x.ioc") -> tuple[IocSet, list]:
    builder = IocBuilder()
    issues: list = []
    lines = (raw.rstrip(b"\r\n") for raw in io.BytesIO(text.encode("utf-8", "surrogateescape")))
    parse_ioc_lines(builder, lines, source, issues)
    return builder.build(issues), issues


@pytest.mark.parametrize(
    ("word", "kind", "shown"),
    [
        (SHA256.upper(), Kind.SHA256, SHA256),
        (SHA1, Kind.SHA1, SHA1),
        (MD5, Kind.MD5, MD5),
        ("203.0.113.7", Kind.IPV4, "203.0.113.7"),
        ("198.51.100.0/24", Kind.IPV4, "198.51.100.0/24"),
        ("2001:DB8::1", Kind.IPV6, "2001:db8::1"),
        ("2001:db8:dead::/48", Kind.IPV6, "2001:db8:dead::/48"),
        ("Evil.Example.", Kind.DOMAIN, "evil.example"),
        ("*.evil.example", Kind.DOMAIN, "*.evil.example"),
        ("bücher.example", Kind.DOMAIN, "xn--bcher-kva.example"),
        ("deadbeef.example", Kind.DOMAIN, "deadbeef.example"),  # hex-looking labels are still a name
    ],
)
def test_each_kind_inferred_and_normalised(word: str, kind: Kind, shown: str) -> None:
    indicator = infer(word)
    assert (indicator.kind, str(indicator)) == (kind, shown)


@pytest.mark.parametrize(
    ("word", "why"),
    [
        ("a" * 63, "63 hex digits (a sha256 has 64, a sha1 40, an md5 32)"),
        ("10.0.0.1/8", "has host bits set"),
        ("300.1.2.3", "is not an IP address"),
        ("10.0.0", "is not an IP address"),
        ("2001:db8::zz", "cannot infer the kind"),
        ("2001:db8::/129", "is not an IP address"),
        ("localhost", "cannot infer the kind of 'localhost'"),
        ("http://evil.example/x", "a URL (not supported; list its domain instead)"),
        ("-bad-.example", "cannot infer the kind"),
        ("a..example", "cannot infer the kind"),
        ("evil.123", "cannot infer the kind"),
        ("*.com", "cannot infer the kind"),
        ("x" * 64 + ".example", "cannot infer the kind"),  # a label over 63 characters
    ],
)
def test_word_of_no_kind_or_a_bad_one_refused_saying_why(word: str, why: str) -> None:
    with pytest.raises(IndicatorProblem) as raised:
        infer(word)
    assert why in str(raised.value)


def test_list_with_every_kind_labels_and_comments_loads() -> None:
    iocs, issues = parse(
        f"# a feed\n\n{MD5}  eicar md5\n{SHA1}\n{SHA256} eicar # trailing\n"
        "127.0.0.7  test c2\n10.9.0.0/16\n2001:db8::/32\nevil.example\n*.bad.example  wildcard\n"
    )
    assert issues == []
    assert iocs.counts() == {"sha256": 1, "sha1": 1, "md5": 1, "address": 3, "domain": 2}
    assert iocs.hash_kinds == (Kind.SHA256, Kind.SHA1, Kind.MD5)
    md5 = iocs.match_hashes({"md5": MD5})
    assert md5 is not None and (md5.kind, md5.label, md5.source) == (Kind.MD5, "eicar md5", "/etc/rf/x.ioc")
    address = iocs.match_address("127.0.0.7")
    assert address is not None and (address.indicator, address.label) == ("127.0.0.7", "test c2")
    domain = iocs.match_domain("a.b.BAD.example.")
    assert domain is not None and (domain.indicator, domain.label) == ("*.bad.example", "wildcard")


def test_every_bad_line_reported_at_file_and_line_and_the_list_is_unusable() -> None:
    _, issues = parse(f"{MD5}\nnot_a_thing\n10.0.0.1/8\n{SHA256}\n{'a' * 50}\n\udcff\n")
    errors = [i for i in issues if i.severity is IssueSeverity.ERROR]
    assert [i.line for i in errors] == [2, 3, 5, 6]
    assert str(errors[0]).startswith("/etc/rf/x.ioc:2: error: cannot infer the kind of 'not_a_thing'")
    assert "host bits set" in str(errors[1])
    assert "not UTF-8" in str(errors[3])


def test_duplicates_warn_with_their_line_and_keep_the_first_label() -> None:
    iocs, issues = parse(f"{MD5} first\n{MD5.upper()} second\nevil.example a\nEVIL.example b\n")
    assert [(i.severity, i.line) for i in issues] == [(IssueSeverity.WARNING, 2), (IssueSeverity.WARNING, 4)]
    match = iocs.match_hashes({"md5": MD5})
    assert match is not None and match.label == "first"
    domain = iocs.match_domain("evil.example")
    assert domain is not None and domain.label == "a"


def test_sets_with_same_entries_compare_equal_and_a_new_label_does_not() -> None:
    one, _ = parse(f"evil.example x\n10.0.0.0/8\n{MD5}\n", "a.ioc")
    same, _ = parse(f"{MD5}\n10.0.0.0/8\nevil.example x\n", "b.ioc")
    other, _ = parse(f"{MD5}\n10.0.0.0/8\nevil.example y\n", "c.ioc")
    assert one == same
    assert one != other


def test_label_with_control_characters_becomes_one_printable_line() -> None:
    iocs, _ = parse(f"{MD5}  evil\x1b[2J\x07 tool\n")
    match = iocs.match_hashes({"md5": MD5})
    assert match is not None and match.label == "evil [2J tool"
