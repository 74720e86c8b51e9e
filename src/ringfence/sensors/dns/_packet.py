"""IP packets (as an AF_PACKET SOCK_DGRAM socket hands them over) to DNS payloads. Pure: bytes in.

UDP: the datagram's payload is one DNS message. TCP: DNS messages are each prefixed by a two-byte
length (RFC 1035 4.2.2); a segment whose messages are all whole is decoded, one that carries only part
of a message is reported as `partial` (reassembly across segments is not done). Segments without
payload (handshake, ACKs) are `empty`.
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import struct

_V4 = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")
_V6_FIXED = 40


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"


class Outcome(enum.StrEnum):
    MESSAGES = "messages"
    EMPTY = "empty"  # TCP segment without payload
    PARTIAL = "partial"  # TCP segment with part of a message
    MALFORMED = "malformed"  # not a whole IP/UDP/TCP packet


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    family: str  # "inet" or "inet6", as Endpoint says it
    src: str
    dst: str
    sport: int
    dport: int
    transport: Transport
    outcome: Outcome
    messages: tuple[bytes, ...] = ()


class PacketError(ValueError):
    """A packet that is not a whole IPv4/IPv6 + UDP/TCP packet."""


def decode(packet: bytes) -> Segment:
    """The DNS payloads of one IP packet. Raises PacketError on a truncated or foreign packet."""
    if not packet:
        raise PacketError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        return _ipv4(packet)
    if version == 6:
        return _ipv6(packet)
    raise PacketError(f"IP version {version}")


def _ipv4(packet: bytes) -> Segment:
    if len(packet) < _V4.size:
        raise PacketError("short IPv4 header")
    first, _, total, _, _, _, proto, _, src, dst = _V4.unpack_from(packet)
    header = (first & 0x0F) * 4
    if header < _V4.size or total < header or len(packet) < total:
        raise PacketError("bad IPv4 lengths")
    return _transport("inet", src, dst, proto, packet[header:total])


def _ipv6(packet: bytes) -> Segment:
    if len(packet) < _V6_FIXED:
        raise PacketError("short IPv6 header")
    (length,) = struct.unpack_from("!H", packet, 4)
    proto = packet[6]
    if len(packet) < _V6_FIXED + length:
        raise PacketError("bad IPv6 payload length")
    return _transport("inet6", packet[8:24], packet[24:40], proto, packet[_V6_FIXED : _V6_FIXED + length])


def _transport(family: str, src: bytes, dst: bytes, proto: int, body: bytes) -> Segment:
    if len(body) < _PORTS.size:
        raise PacketError("short transport header")
    sport, dport = _PORTS.unpack_from(body)
    family_id = socket.AF_INET if len(src) == 4 else socket.AF_INET6
    ips = (socket.inet_ntop(family_id, src), socket.inet_ntop(family_id, dst))
    if proto == 17:
        if len(body) < 8:
            raise PacketError("short UDP header")
        (length,) = struct.unpack_from("!H", body, 4)
        if not 8 <= length <= len(body):
            raise PacketError("bad UDP length")
        return Segment(family, *ips, sport, dport, Transport.UDP, Outcome.MESSAGES, (body[8:length],))
    if proto == 6:
        if len(body) < 20:
            raise PacketError("short TCP header")
        offset = (body[12] >> 4) * 4
        if not 20 <= offset <= len(body):
            raise PacketError("bad TCP data offset")
        outcome, messages = split_tcp(body[offset:])
        return Segment(family, *ips, sport, dport, Transport.TCP, outcome, messages)
    raise PacketError(f"IP protocol {proto}")


def split_tcp(data: bytes) -> tuple[Outcome, tuple[bytes, ...]]:
    """The length-prefixed messages of one TCP segment, if they are all whole."""
    if not data:
        return Outcome.EMPTY, ()
    messages: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            return Outcome.PARTIAL, ()
        (length,) = struct.unpack_from("!H", data, at)
        if at + 2 + length > len(data):
            return Outcome.PARTIAL, ()
        messages.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    return Outcome.MESSAGES, tuple(messages)
