"""Address and domain sets: the most specific listed network wins, and a lookup agrees with a brute-force
scan over every listed network, on random lists and addresses of both families."""

from __future__ import annotations

import ipaddress
import random

from ringfence.engines.ioc import AddressSet, IocBuilder, infer


def address_set(words: list[str]) -> AddressSet:
    builder = IocBuilder()
    for n, word in enumerate(words):
        builder.add(infer(word), f"e{n}", "t.ioc", n + 1)
    return builder.build([]).addresses


def test_nested_networks_the_longest_prefix_wins() -> None:
    s = address_set(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "0.0.0.0/0"])
    found = [s.match(ip) for ip in ("10.1.2.3", "10.1.9.9", "10.9.9.9", "11.0.0.1")]
    assert [m.indicator if m else None for m in found] == [
        "10.1.2.3",
        "10.1.0.0/16",
        "10.0.0.0/8",
        "0.0.0.0/0",
    ]
    assert s.match("::1") is None  # another family
    assert s.match("not an address") is None and s.match("") is None


def test_ipv6_zone_and_mapped_forms_resolved() -> None:
    s = address_set(["fe80::/10", "192.0.2.0/24"])
    m1, m2 = s.match("fe80::1%eth0"), s.match("::ffff:192.0.2.5")
    assert m1 is not None and m1.indicator == "fe80::/10"
    assert m2 is not None and m2.indicator == "192.0.2.0/24"


def test_lookup_agrees_with_a_brute_force_scan() -> None:
    rng = random.Random(7)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for _ in range(2000):
        if rng.random() < 0.5:
            prefix = rng.randint(8, 32)
            net = ipaddress.ip_network((rng.getrandbits(32) >> (32 - prefix) << (32 - prefix), prefix))
        else:
            prefix = rng.randint(16, 128)
            value = (0x2001_0DB8 << 96 | rng.getrandbits(96)) >> (128 - prefix) << (128 - prefix)
            net = ipaddress.ip_network((value, prefix))
        networks.append(net)
    s = address_set([str(n) for n in networks])
    probes = [str(ipaddress.ip_address(rng.getrandbits(32))) for _ in range(3000)]
    probes += [
        str(n.network_address + rng.randint(0, n.num_addresses - 1)) for n in rng.sample(networks, 500)
    ]
    for ip in probes:
        address = ipaddress.ip_address(ip)
        holding = [n for n in networks if address.version == n.version and address in n]
        found = s.match(ip)
        if not holding:
            assert found is None, ip
        else:
            best = max(n.prefixlen for n in holding)
            assert found is not None and ipaddress.ip_network(found.indicator).prefixlen == best, ip


def test_ipv4_mapped_entry_matches_the_ipv4_address_in_either_form() -> None:
    s = address_set(["::ffff:192.0.2.7", "::ffff:198.51.100.0/120"])
    for ip in ("192.0.2.7", "::ffff:192.0.2.7", "198.51.100.9"):
        assert s.match(ip) is not None, ip
    assert s.match("192.0.2.8") is None
