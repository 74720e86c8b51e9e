"""Network isolation: one nftables table of our own, applied and removed in single nft transactions.

While the table exists the host keeps loopback, the management addresses (both directions, any state:
established and related traffic from any other peer is dropped), IPv6 neighbour and router discovery
on the link (hop limit 255, so that a v6 management address stays reachable), and nothing else; the
forward hook drops everything, so containers and VMs on the host are isolated with it. The addresses
come from `ipaddress`, never as raw text, so the script cannot be injected into.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Sequence

from ringfence.response._config import IpNetwork
from ringfence.response._errors import NftError

logger = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "ringfence_isolate"
PRIORITY = -150  # mangle: after conntrack (-200) so `ct` matches work, before the usual filter (0)
NFT_TIMEOUT_S = 30.0

_ND_IN = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255"
_ND_OUT = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } ip6 hoplimit 255"


def _elements(networks: Sequence[IpNetwork], version: int) -> str:
    chosen = [n for n in networks if n.version == version]
    merged = ipaddress.collapse_addresses(chosen)  # type: ignore[type-var]
    return ", ".join(str(n) for n in merged)


def _set(name: str, kind: str, elements: str) -> str:
    body = f"type {kind}; flags interval; auto-merge;"
    if elements:
        body += f" elements = {{ {elements} }}"
    return f"  set {name} {{ {body} }}"


def isolation_script(networks: Sequence[IpNetwork]) -> str:
    """The whole table, as one nft script (one transaction)."""
    chain = f"type filter hook {{hook}} priority {PRIORITY}; policy drop;"
    return "\n".join(
        [
            f"table {FAMILY} {TABLE} {{",
            _set("mgmt4", "ipv4_addr", _elements(networks, 4)),
            _set("mgmt6", "ipv6_addr", _elements(networks, 6)),
            "  chain input { " + chain.format(hook="input"),
            "    iif lo accept",
            "    ip saddr @mgmt4 accept",
            "    ip6 saddr @mgmt6 accept",
            "    ct state related ct original ip daddr @mgmt4 accept",
            "    ct state related ct original ip saddr @mgmt4 accept",
            "    ct state related ct original ip6 daddr @mgmt6 accept",
            "    ct state related ct original ip6 saddr @mgmt6 accept",
            f"    {_ND_IN} accept",
            "  }",
            "  chain forward { " + chain.format(hook="forward") + " }",
            "  chain output { " + chain.format(hook="output"),
            "    oif lo accept",
            "    ip daddr @mgmt4 accept",
            "    ip6 daddr @mgmt6 accept",
            f"    {_ND_OUT} accept",
            "  }",
            "}",
            "",
        ]
    )


def management_update_script(networks: Sequence[IpNetwork]) -> str:
    """Replaces the management sets' elements in one transaction."""
    lines = []
    for name, version in (("mgmt4", 4), ("mgmt6", 6)):
        lines.append(f"flush set {FAMILY} {TABLE} {name}")
        elements = _elements(networks, version)
        if elements:
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ {elements} }}")
    return "\n".join(lines) + "\n"


class Nft:
    """Runs the nft command (with a prefix, e.g. `ip netns exec <ns> nft`, for tests)."""

    def __init__(self, command: tuple[str, ...]) -> None:
        self.command = command

    def apply(self, script: str) -> None:
        """Applies a script as one atomic transaction (`nft -f -`). Raises NftError."""
        self._run(("-f", "-"), script)

    def table_exists(self) -> bool:
        out = self._run(("-j", "list", "tables"), None)
        try:
            items = json.loads(out)["nftables"]
        except (ValueError, KeyError, TypeError) as e:
            raise NftError(self.command, f"unreadable `list tables` output: {e}") from e
        return any(
            item.get("table", {}).get("family") == FAMILY and item["table"].get("name") == TABLE
            for item in items
        )

    def ruleset(self) -> str:
        return self._run(("list", "table", FAMILY, TABLE), None)

    def _run(self, args: tuple[str, ...], stdin: str | None) -> str:
        argv = (*self.command, *args)
        logger.debug("running %s", argv)
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NftError(argv, str(e)) from e
        if done.returncode != 0:
            raise NftError(argv, f"exit status {done.returncode}: {done.stderr.strip()}")
        return done.stdout
