"""DNS wire messages to typed records, with dnspython (`dns.message.from_wire`). Pure: bytes in.

Only what the sensor reports is kept: id, query or response, opcode, rcode, the first question (name
and type: a query with several questions does not occur in practice and no resolver answers one) and
the answer section, each record with owner name, type, TTL and its data as text (an address for A and
AAAA, the target for CNAME, ...). Names are given without the trailing dot, as users write them.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import msgspec


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str  # "A", "AAAA", "CNAME", ...
    ttl: int  # seconds
    data: str


class DnsMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    response: bool
    opcode: str  # "QUERY", ...
    rcode: str  # "NOERROR", "NXDOMAIN", ...; a query's is NOERROR
    rcode_id: int
    query: str | None  # the first question's name
    query_type: str | None
    query_class: str | None
    answers: tuple[Answer, ...] = ()


class MessageError(ValueError):
    """Bytes that dnspython cannot read as a DNS message; the text is dnspython's reason."""


def parse(wire: bytes) -> DnsMessage:
    """One DNS message. Raises MessageError."""
    # A query's answer sections are not reported, so they are not read; one rrset per record skips
    # dnspython's duplicate check (a hash of every record), which cost a fifth of the parse.
    query_only = len(wire) > 2 and not wire[2] & 0x80
    try:
        message = dns.message.from_wire(
            wire, ignore_trailing=True, one_rr_per_rrset=True, question_only=query_only
        )
    except (dns.exception.DNSException, ValueError, UnicodeError) as e:  # its parser raises these
        raise MessageError(f"{type(e).__name__}: {e}") from e
    question = message.question[0] if message.question else None
    rcode = message.rcode()
    return DnsMessage(
        id=message.id,
        response=bool(message.flags & dns.flags.QR),
        opcode=dns.opcode.to_text(message.opcode()),
        rcode=dns.rcode.to_text(rcode),
        rcode_id=int(rcode),
        query=_name(question.name) if question is not None else None,
        query_type=dns.rdatatype.to_text(question.rdtype) if question is not None else None,
        query_class=dns.rdataclass.to_text(question.rdclass) if question is not None else None,
        answers=tuple(
            Answer(
                name=_name(rrset.name),
                type=dns.rdatatype.to_text(rrset.rdtype),
                ttl=rrset.ttl,
                data=_data(rd),
            )
            for rrset in message.answer
            for rd in rrset
        ),
    )


def _name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) or "."


def _data(rdata: dns.rdata.Rdata) -> str:
    target = getattr(rdata, "target", None)  # CNAME, DNAME, NS, PTR, SRV: the name without its dot
    if isinstance(target, dns.name.Name):
        return _name(target)
    return str(rdata.to_text())
