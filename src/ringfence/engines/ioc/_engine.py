"""The IOC engine: deny the exec of a file whose sha256, sha1 or md5 is listed; raise a finding on a
connection or a DNS event that names a listed address, network or domain.

Its lists are its content (`ctx.content_dir`, filled by the agent); see _watch.py for reloads. On each
AUTH_EXEC request it hashes the file through the descriptor the agent passed (never by path, so what is
checked is exactly what runs), with only the algorithms some loaded list needs, all in one read, and a
memo keyed on (dev, ino, size, mtime, ctime) so that a file is hashed once per version. Where the agent
sets `request.sha256` (the file's metadata cannot show every change), the memo is not used: the agent's
sha256 is taken, and any other digest a list needs is computed from the descriptor. Huge files are
hashed anyway, streaming; the first exec of such a file may outlast the deadline and then fails open
(the declared policy), and the memo makes the next one cheap.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar

from ringfence.engines.ioc._config import IocConfig
from ringfence.engines.ioc._indicators import Kind
from ringfence.engines.ioc._iocset import HashMatch
from ringfence.engines.ioc._memo import Digests, HashMemo, MemoStatistics, file_key
from ringfence.engines.ioc._sightings import Sighting, Sightings
from ringfence.engines.ioc._watch import Background, ContentStatistics, WatchedContent, run_in_thread
from ringfence.sdk import (
    AuthAnswer,
    AuthFile,
    AuthParticipation,
    AuthRequest,
    ContentSchema,
    Context,
    Deduplicator,
    DnsActivity,
    Event,
    EventKind,
    Extension,
    FailurePolicy,
    Manifest,
    NetworkActivity,
    Permission,
    SchemaField,
    Severity,
    allow,
    deny,
)

RULE_PREFIX = "ioc."  # a finding's rule: ioc.sha256, ioc.sha1, ioc.md5, ioc.ipv4, ioc.ipv6, ioc.domain


@dataclass(frozen=True, slots=True)
class IocStatistics:
    requests: int
    denied: int
    allowed: int
    no_descriptor: int  # allowed uncached: no file descriptor came with the request
    hash_errors: int  # allowed uncached: the descriptor could not be read
    agent_hashed: int  # the agent's sha256 used (metadata cannot show every change of that file)
    network_events: int  # network and DNS events checked
    network_matches: int
    network_findings: int
    findings_suppressed: int  # repeats inside a dedup window (summed up when it closes)
    reloads: int  # other indicators came into force after the first load
    memo: MemoStatistics
    content: ContentStatistics


CONTENT_INTERFACE = "ioc@1"
_CONTRACT = {
    "auth.exec": (
        SchemaField(
            name="sha256", type="string", source="the executable's sha256 (read from its descriptor)"
        ),
        SchemaField(name="sha1", type="string", source="the executable's sha1"),
        SchemaField(name="md5", type="string", source="the executable's md5"),
    ),
    "network": (
        SchemaField(name="ipv4", type="string", source="remote.ip (and its networks, for CIDRs)"),
        SchemaField(name="ipv6", type="string", source="remote.ip (and its networks, for CIDRs)"),
        SchemaField(name="domain", type="string", source="remote.hostname (the DNS sensor's name)"),
    ),
    "dns": (
        SchemaField(name="domain", type="string", source="query.hostname, and its parent domains"),
        SchemaField(name="ipv4", type="string", source="an A answer's data"),
        SchemaField(name="ipv6", type="string", source="an AAAA answer's data"),
    ),
}


def _manifest(ext_id: str) -> Manifest:
    return Manifest(
        id=ext_id,
        vendor="Ringfence",
        version="2.0.0",
        subscribes=frozenset({EventKind.NETWORK, EventKind.DNS}),
        auth=AuthParticipation(
            kinds=frozenset({EventKind.AUTH_EXEC}), deadline_ms=250, failure=FailurePolicy.FAIL_OPEN
        ),
        permissions=frozenset({Permission.FILE_CONTENTS}),
        content_interface=CONTENT_INTERFACE,
        description="IOCs: denies the exec of listed file hashes (sha256, sha1, md5); raises findings on "
        "connections and DNS traffic with listed addresses, networks and domains.",
    )


class IocEngine(Extension):
    manifest: ClassVar[Manifest] = _manifest("ringfence.ioc")

    @classmethod
    def content_schema(cls) -> ContentSchema:
        """Indicator kinds per event kind they are matched on (a list entry of any other kind, or a STIX
        pattern over another object, is refused by the loader with its line)."""
        return ContentSchema(
            interface=CONTENT_INTERFACE,
            kinds=("auth.exec", "dns", "network"),
            files=(".ioc", ".json", ".txt"),
            logsources=dict(_CONTRACT),
            notes="IOC lists (.ioc: one indicator a line, '# attack:' directives), STIX 2.1 bundles "
            "(.json: indicators with [file:hashes...], [ipv4-addr:value], [ipv6-addr:value], "
            "[domain-name:value] patterns), the sha256 blocklist (blocklist.txt).",
        )

    def __init__(
        self,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        background: Background = run_in_thread,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._background = background
        self._wall_clock = wall_clock
        self._requests = self._denied = self._allowed = 0
        self._no_descriptor = self._hash_errors = self._reloads = self._agent_hashed = 0

    def setup(self, ctx: Context) -> None:
        """Validate settings and load the lists of the content directory; raises `SettingsError` or
        `ContentError` (every issue at once, in one line), so that broken content stops the extension
        instead of running empty, and the agent refuses to start with that line."""
        super().setup(ctx)
        ext_id = self.manifest.id
        config = IocConfig.from_settings(ext_id, ctx.settings, ctx.content_dir)
        self._memo = HashMemo(config.memo_entries)
        self._watched = WatchedContent(config, self._clock, ctx.log, self._background, self._wall_clock)
        self._watched.load()
        self._problem: str | None = None
        dedup: Deduplicator[Sighting] = Deduplicator(
            config.dedup_window_s * 1_000_000_000, self._clock, config.max_dedup_keys
        )
        self._sightings = Sightings(
            ctx, lambda: self._watched.current, dedup, config.dedup_window_s, self._shown_source
        )
        if not self._watched.configured:
            ctx.log.warning('no IOC list: give one with --blocklist or [extensions.content."%s"]', ext_id)

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        self._requests += 1
        iocs = self._watched.current
        kinds = iocs.hash_kinds
        if not kinds:
            self._allowed += 1
            return allow(cacheable=True)
        if file is None:
            self._no_descriptor += 1
            return allow(cacheable=False)
        digests = self._digests(request, file, kinds)
        if digests is None:
            return allow(cacheable=False)
        match = iocs.match_hashes(digests)
        if match is None:
            self._allowed += 1
            return allow(cacheable=True)
        return self._deny(request, match, digests)

    def on_event(self, event: Event) -> None:
        if isinstance(event, NetworkActivity):
            self._sightings.on_network(event)
        elif isinstance(event, DnsActivity):
            self._sightings.on_dns(event)

    def on_tick(self) -> None:
        """Reloads happen here, never on the AUTH path. A new list must apply to files the kernel already
        caches as allowed (they raise no AUTH request): the verdict cache is flushed when it really
        changed. A rejected version is reported to the agent, and the last good list stays."""
        if self._watched.poll():
            self._reloads += 1
            self.ctx.invalidate_verdicts("IOC content reloaded")
        if self._watched.problem != self._problem:
            self._problem = self._watched.problem
            self.ctx.report_problem(self._problem)
        self._sightings.flush()

    def teardown(self) -> None:
        """Log the counters: the SDK has no channel for an extension's own statistics yet."""
        self._sightings.flush()
        self.ctx.log.info("IOC statistics at shutdown: %s", self.statistics())

    def statistics(self) -> IocStatistics:
        s = self._sightings
        return IocStatistics(
            requests=self._requests,
            denied=self._denied,
            allowed=self._allowed,
            no_descriptor=self._no_descriptor,
            hash_errors=self._hash_errors,
            agent_hashed=self._agent_hashed,
            network_events=s.events,
            network_matches=s.matches,
            network_findings=s.findings,
            findings_suppressed=s.suppressed,
            reloads=self._reloads,
            memo=self._memo.statistics(),
            content=self._watched.statistics(),
        )

    def _digests(self, request: AuthRequest, file: AuthFile, kinds: Sequence[Kind]) -> Digests | None:
        """The file's digests of `kinds`, from the memo or by hashing; None (counted, logged) if it cannot
        be read. Where the agent says the file's metadata cannot show every change (it hashed the file
        itself: a tmpfs keeps its times on a mapped write), the memo's key means nothing: the agent's
        sha256 is the one, taken from the same descriptor before the request was sent."""
        try:
            if request.sha256 is not None:
                self._agent_hashed += 1
                digests = hash_file(file, [k for k in kinds if k is not Kind.SHA256])
                digests[Kind.SHA256] = request.sha256.lower()
                return digests
            key = file_key(os.fstat(file.fd))
            memo = self._memo.get(key)
            if memo is not None and all(k in memo for k in kinds):
                return memo
            digests = hash_file(file, kinds)
            self._memo.put(key, digests)
        except OSError as e:
            self._hash_errors += 1
            self.ctx.log.warning(
                "cannot hash %s (pid %d), allowing uncached: %s", request.path, request.process.pid, e
            )
            return None
        return digests

    def _shown_source(self, source: str) -> str:
        """A list as a finding names it: its name in the content table (`feed.ioc`, `feed.json
        indicator--...`), not the path of the sandbox's copy, which means nothing to a reader."""
        prefix = f"{self.ctx.content_dir}/"
        return source[len(prefix) :] if self.ctx.content_dir and source.startswith(prefix) else source

    def _deny(self, request: AuthRequest, match: HashMatch, digests: Digests) -> AuthAnswer:
        self._denied += 1
        name = match.label or PurePosixPath(request.path).name or request.path
        techniques, tactics = self._watched.current.attack(match.source)
        self.ctx.emit_finding(
            f"Blocked execution of {name}",
            Severity.HIGH,
            rule=RULE_PREFIX + match.kind,
            description=f"{match.kind} {match.digest} of {request.path} is listed in "
            f"{self._shown_source(match.source)}",
            process=request.process,
            file_path=request.path,
            file_sha256=digests.get(Kind.SHA256),
            action="denied",
            related_event=request.header.id,
            techniques=techniques,
            tactics=tactics,
        )
        label = f" ({match.label})" if match.label else ""
        return deny(f"ioc: {match.kind} {match.digest} is listed{label}")


def hash_file(file: AuthFile, kinds: Sequence[Kind]) -> Digests:
    """The digests of `kinds`, all from one read of the descriptor."""
    if not kinds:
        return {}
    hashers = [(kind, hashlib.new(kind, usedforsecurity=False)) for kind in kinds]
    for chunk in file.chunks():
        for _, h in hashers:
            h.update(chunk)
    return {str(kind): h.hexdigest() for kind, h in hashers}


class ReputationEngine(IocEngine):
    """The IOC engine under the id it had as the file-reputation engine, `ringfence.reputation`: the same
    code, so that configs, content tables and status views naming that id keep working."""

    manifest: ClassVar[Manifest] = _manifest("ringfence.reputation")
