"""The response layer's configuration: passed in by the agent, never global."""

from __future__ import annotations

import ipaddress

import msgspec

from ringfence.response._errors import ResponseConfigError
from ringfence.response._scope import ActionScope

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ResponseConfig(msgspec.Struct, frozen=True, kw_only=True):
    state_dir: str  # vault at <state_dir>/quarantine (0700, root), action log at <state_dir>/actions.jsonl
    management_addresses: tuple[str, ...] = ()  # IPs or CIDRs, v4 and v6, still reachable while isolated
    protected_pids: frozenset[int] = frozenset()  # never killed; pid 1, kernel threads, the agent always are
    protected_paths: tuple[str, ...] = ()  # never quarantined, nor anything under them; added to the defaults
    scopes: dict[str, ActionScope] = msgspec.field(default_factory=dict)  # extension id (or "*") -> scope
    kill_wait_ms: int = 5_000  # how long a kill waits for the process to be gone before it reports failure
    start_time_tolerance_ticks: int = 2  # clock ticks (SC_CLK_TCK) a kill's start time may be off by
    nft_command: tuple[str, ...] = ("nft",)  # tests prefix it: ("ip", "netns", "exec", ns, "nft")

    def __post_init__(self) -> None:
        parse_networks(self.management_addresses)
        if self.kill_wait_ms <= 0:
            raise ResponseConfigError(f"kill_wait_ms must be positive, not {self.kill_wait_ms}")
        if self.start_time_tolerance_ticks < 0:
            raise ResponseConfigError("start_time_tolerance_ticks must not be negative")
        if not self.nft_command:
            raise ResponseConfigError("nft_command must name a program")


def parse_networks(addresses: tuple[str, ...]) -> list[IpNetwork]:
    """Parses IPs and CIDRs (host bits allowed); raises ResponseConfigError naming the bad one."""
    networks: list[IpNetwork] = []
    for address in addresses:
        try:
            networks.append(ipaddress.ip_network(address.strip(), strict=False))
        except ValueError as e:
            raise ResponseConfigError(f"management address {address!r}: {e}") from e
    return networks
