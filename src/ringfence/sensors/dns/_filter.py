"""The classic BPF program that keeps only DNS: UDP or TCP with port 53 on either side, IPv4 or IPv6.

It runs on an AF_PACKET SOCK_DGRAM socket, where offset 0 is the network header. Everything else is
dropped in the kernel, before a copy reaches the socket, so Python never sees it (the socket's
PACKET_STATISTICS count only what passed). Limits, said here so that nobody has to guess:
- IPv4 fragments after the first are dropped (a DNS answer that large goes over TCP in practice);
- IPv6 with extension headers before the transport header is dropped;
- on loopback every packet is seen twice by a packet socket (once leaving, once arriving): the copy
  leaving loopback is dropped here, so each message reaches Python once.
`interfaces` (indexes) limits the capture to those interfaces; empty means all.
"""

from __future__ import annotations

import ctypes
import dataclasses
import socket
import struct

# opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_LD_H_IND = 0x48
_LDX_B_MSH = 0xB1
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06

_SKF_AD_OFF = 0xFFFFF000  # -0x1000 as u32: the ancillary loads below
SKF_AD_PROTOCOL = _SKF_AD_OFF + 0
SKF_AD_PKTTYPE = _SKF_AD_OFF + 4
SKF_AD_IFINDEX = _SKF_AD_OFF + 8

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
DNS_PORT = 53
SNAPLEN = 0xFFFF  # bytes kept of a packet that passes: a whole UDP datagram

_ACCEPT, _DROP = "accept", "drop"


@dataclasses.dataclass(frozen=True)
class _Insn:
    code: int
    k: int = 0
    true: str | None = None  # label jumped to when the test holds; None: the next instruction
    false: str | None = None
    label: str | None = None  # this instruction's own label


def _program(loopback: int, interfaces: tuple[int, ...]) -> list[_Insn]:
    out: list[_Insn] = []
    if interfaces:
        out.append(_Insn(_LD_W_ABS, SKF_AD_IFINDEX))
        for i, index in enumerate(interfaces):
            last = i == len(interfaces) - 1
            out.append(_Insn(_JEQ_K, index, true="iface_ok", false=_DROP if last else None))
    out += [
        _Insn(_LD_W_ABS, SKF_AD_PKTTYPE, label="iface_ok"),
        _Insn(_JEQ_K, PACKET_OUTGOING, false="family"),
        _Insn(_LD_W_ABS, SKF_AD_IFINDEX),
        _Insn(_JEQ_K, loopback, true=_DROP),
        _Insn(_LD_W_ABS, SKF_AD_PROTOCOL, label="family"),
        _Insn(_JEQ_K, ETH_P_IP, true="v4"),
        _Insn(_JEQ_K, ETH_P_IPV6, true="v6", false=_DROP),
        # IPv4: UDP or TCP, not a later fragment, ports after a header of IHL words
        _Insn(_LD_B_ABS, 9, label="v4"),
        _Insn(_JEQ_K, socket.IPPROTO_UDP, true="v4_frag"),
        _Insn(_JEQ_K, socket.IPPROTO_TCP, false=_DROP),
        _Insn(_LD_H_ABS, 6, label="v4_frag"),
        _Insn(_JSET_K, 0x1FFF, true=_DROP),
        _Insn(_LDX_B_MSH, 0),
        _Insn(_LD_H_IND, 0),
        _Insn(_JEQ_K, DNS_PORT, true=_ACCEPT),
        _Insn(_LD_H_IND, 2),
        _Insn(_JEQ_K, DNS_PORT, true=_ACCEPT, false=_DROP),
        # IPv6: next header UDP or TCP straight after the 40-byte header
        _Insn(_LD_B_ABS, 6, label="v6"),
        _Insn(_JEQ_K, socket.IPPROTO_UDP, true="v6_ports"),
        _Insn(_JEQ_K, socket.IPPROTO_TCP, false=_DROP),
        _Insn(_LD_H_ABS, 40, label="v6_ports"),
        _Insn(_JEQ_K, DNS_PORT, true=_ACCEPT),
        _Insn(_LD_H_ABS, 42),
        _Insn(_JEQ_K, DNS_PORT, true=_ACCEPT, false=_DROP),
        _Insn(_RET_K, SNAPLEN, label=_ACCEPT),
        _Insn(_RET_K, 0, label=_DROP),
    ]
    return out


def assemble(loopback: int, interfaces: tuple[int, ...] = ()) -> bytes:
    """The program as struct sock_filter[], jumps resolved from labels."""
    program = _program(loopback, interfaces)
    where = {insn.label: i for i, insn in enumerate(program) if insn.label}

    def offset(i: int, target: str | None) -> int:
        if target is None:
            return 0
        jump = where[target] - i - 1
        if not 0 <= jump <= 255:
            raise ValueError(f"BPF jump from {i} to {target} out of range")
        return jump

    return b"".join(
        struct.pack("=HBBI", insn.code, offset(i, insn.true), offset(i, insn.false), insn.k)
        for i, insn in enumerate(program)
    )


def attach(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer only lives through the call."""
    count = len(program) // 8
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", count, ctypes.addressof(insns))  # struct sock_fprog, native alignment
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
