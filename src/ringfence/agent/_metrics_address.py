"""`[agent] metrics_listen`, parsed: apart from the listener (agent/_metrics.py), so that the config
check and an agent without metrics never load prometheus_client."""

from __future__ import annotations

import ipaddress


class MetricsAddressError(ValueError):
    """`metrics_listen` is not HOST:PORT, or names a non-loopback host without the explicit grant."""


def parse_listen(text: str, *, allow_remote: bool) -> tuple[str, int]:
    """`127.0.0.1:9477`, `[::1]:9477` or `localhost:9477` -> (address, port). Raises MetricsAddressError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MetricsAddressError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9477)")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise MetricsAddressError(f"{text!r}: the host must be an IP address or localhost") from e
    if not address.is_loopback and not allow_remote:
        raise MetricsAddressError(
            f"{text!r} is not a loopback address; set agent.metrics_allow_remote = true to serve it there"
        )
    return str(address), int(port_text)
