"""Network and DNS events against the address and domain indicators: findings, deduplicated per window.

A connection is checked by both of its addresses (the remote one is the destination of a connect and
the source of an accept); a DNS event by its query name, every answer's owner name, the address of every
A/AAAA answer and the target of every CNAME. Each listed indicator raises one finding per event; the
same (indicator, process) pair again within the window is counted and summed up when the window closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ringfence.engines.ioc._iocset import IocSet
from ringfence.engines.ioc._network import NetworkMatch
from ringfence.sdk import Context, Deduplicator, DnsActivity, Endpoint, NetworkActivity, ProcessRef, Severity

_ADDRESS_ANSWERS = frozenset({"A", "AAAA"})
_NAME_ANSWERS = frozenset({"CNAME", "DNAME", "PTR", "NS", "MX", "SRV"})
_VERBS = {"connect": "Connection to", "accept": "Connection from", "accept4": "Connection from"}


@dataclass(frozen=True, slots=True)
class Sighting:
    match: NetworkMatch
    title: str
    evidence: str  # the event, in a phrase
    process: ProcessRef | None
    event_id: str


class Sightings:
    def __init__(
        self,
        ctx: Context,
        current: Callable[[], IocSet],
        dedup: Deduplicator[Sighting],
        window_s: int,
        shown: Callable[[str], str] = str,
    ) -> None:
        self._ctx = ctx
        self._shown = shown  # how a list is named in a finding
        self._current = current
        self._dedup = dedup
        self._window_s = window_s
        self.events = self.matches = self.findings = 0

    @property
    def suppressed(self) -> int:
        return self._dedup.suppressed

    def on_network(self, event: NetworkActivity) -> None:
        self.events += 1
        iocs = self._current()
        if not len(iocs.addresses):
            return
        evidence = f"{event.syscall} {_where(event.local)} -> {_where(event.remote)}"
        for endpoint in (event.remote, event.local):
            if endpoint is None or endpoint.ip is None:
                continue
            match = iocs.match_address(endpoint.ip)
            if match is not None:
                what = (
                    _VERBS.get(event.syscall, f"{event.syscall} on") if endpoint is event.remote else "Local"
                )
                self._sighted(
                    match, f"{what} listed address {match.indicator}", evidence, event.process, event
                )

    def on_dns(self, event: DnsActivity) -> None:
        self.events += 1
        iocs = self._current()
        if not len(iocs.domains) and not len(iocs.addresses):
            return
        for match, title, evidence in _dns_matches(iocs, event):
            self._sighted(match, title, evidence, event.process, event)

    def flush(self) -> None:
        """Sum up the windows that closed with repeats."""
        for sighting, repeats in self._dedup.closed():
            self._emit(sighting, f"{sighting.title} ({repeats} more within {self._window_s} s)")

    def _sighted(
        self,
        match: NetworkMatch,
        title: str,
        evidence: str,
        process: ProcessRef | None,
        event: NetworkActivity | DnsActivity,
    ) -> None:
        self.matches += 1
        if match.label:
            title = f"{title} ({match.label})"
        sighting = Sighting(match, title, evidence, process, event.header.id)
        key = (match.kind, match.indicator, title, None if process is None else (process.exe, process.pid))
        if self._dedup.admit(key, sighting):
            self._emit(sighting, title)

    def _emit(self, s: Sighting, title: str) -> None:
        self.findings += 1
        techniques, tactics = self._current().attack(s.match.source)
        self._ctx.emit_finding(
            title,
            Severity.HIGH,
            rule=f"ioc.{s.match.kind}",
            description=f"{s.match.kind} indicator {s.match.indicator} from {self._shown(s.match.source)}: "
            f"{s.evidence}",
            process=s.process,
            related_event=s.event_id,
            techniques=techniques,
            tactics=tactics,
        )


def _dns_matches(iocs: IocSet, event: DnsActivity) -> Iterator[tuple[NetworkMatch, str, str]]:
    seen: set[str] = set()
    if event.query is not None:
        match = iocs.match_domain(event.query.hostname)
        if match is not None:
            seen.add(match.indicator)
            kind = event.query.type or "?"
            yield (
                match,
                f"DNS query for listed domain {event.query.hostname}",
                f"query {kind} {event.query.hostname}",
            )
    for answer in event.answers:
        evidence = f"answer {answer.name} {answer.type} {answer.data}"
        candidates: list[tuple[NetworkMatch | None, str]] = [(iocs.match_domain(answer.name), answer.name)]
        if answer.type in _ADDRESS_ANSWERS:
            candidates.append((iocs.match_address(answer.data), answer.data))
        elif answer.type in _NAME_ANSWERS:
            candidates.append((iocs.match_domain(answer.data.rsplit(" ", 1)[-1]), answer.data))
        for match, value in candidates:
            if match is not None and match.indicator not in seen:
                seen.add(match.indicator)
                yield match, f"DNS answer with listed {_noun(match)} {value}", evidence


def _noun(match: NetworkMatch) -> str:
    return "domain" if match.kind == "domain" else "address"


def _where(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return "?"
    if endpoint.ip is None:
        return endpoint.path or endpoint.family
    host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
    return host if endpoint.port is None else f"{host}:{endpoint.port}"
