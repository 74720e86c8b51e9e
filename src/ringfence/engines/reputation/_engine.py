"""The file reputation engine: deny the exec of a file whose sha256 is on the blocklist.

Its blocklists are its content (`ctx.content_dir`, filled by the agent); see _watch.py for reloads. On
each AUTH_EXEC request it hashes the file through the descriptor the agent passed (never by path, so
what is checked is exactly what runs), with a memo keyed on (dev, ino, size, mtime, ctime) so that a file
is hashed once per version. Huge files are hashed anyway, streaming; the first exec of such a file may
outlast the deadline and then fails open (the declared policy), and the memo makes the next one cheap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ringfence.engines.reputation._blocklist import BlocklistMatch
from ringfence.engines.reputation._config import ReputationConfig
from ringfence.engines.reputation._memo import HashMemo, MemoStatistics, file_key
from ringfence.engines.reputation._watch import (
    Background,
    BlocklistStatistics,
    WatchedBlocklist,
    run_in_thread,
)
from ringfence.sdk import (
    AuthAnswer,
    AuthFile,
    AuthParticipation,
    AuthRequest,
    Context,
    EventKind,
    Extension,
    FailurePolicy,
    Manifest,
    Permission,
    Severity,
    allow,
    deny,
)

RULE = "reputation.blocklist"


@dataclass(frozen=True, slots=True)
class ReputationStatistics:
    requests: int
    denied: int
    allowed: int
    no_descriptor: int  # allowed uncached: the request came without a file descriptor
    hash_errors: int  # allowed uncached: reading the file failed
    agent_hashed: int  # the agent's digest used (metadata cannot show every change of that file)
    blocklist_reloads: int  # new blocklists activated after the first
    memo: MemoStatistics
    blocklist: BlocklistStatistics


class ReputationEngine(Extension):
    manifest = Manifest(
        id="ringfence.reputation",
        vendor="Ringfence",
        version="1.0.0",
        auth=AuthParticipation(
            kinds=frozenset({EventKind.AUTH_EXEC}), deadline_ms=250, failure=FailurePolicy.FAIL_OPEN
        ),
        permissions=frozenset({Permission.FILE_CONTENTS}),
        description="Denies the execution of files whose sha256 is on a blocklist.",
    )

    def __init__(
        self, *, clock: Callable[[], int] = time.monotonic_ns, background: Background = run_in_thread
    ) -> None:
        self._clock = clock
        self._background = background
        self._requests = self._denied = self._allowed = 0
        self._no_descriptor = self._hash_errors = self._reloads = self._agent_hashed = 0

    def setup(self, ctx: Context) -> None:
        """Validate settings and load the blocklists of the content directory; raises `SettingsError` or
        `BlocklistError` (every issue at once, in one line), so that broken content stops the extension
        instead of running empty, and the agent refuses to start with that line."""
        super().setup(ctx)
        config = ReputationConfig.from_settings(ctx.settings, ctx.content_dir)
        self._memo = HashMemo(config.memo_entries)
        self._watched = WatchedBlocklist(config, self._clock, ctx.log, self._background)
        self._watched.load()
        self._problem: str | None = None
        if not self._watched.configured:
            ctx.log.warning(
                'no blocklist: give one with --blocklist or [extensions.content."ringfence.reputation"]'
            )

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        self._requests += 1
        if file is None:
            self._no_descriptor += 1
            return allow(cacheable=False)
        digest = self._sha256(request, file)
        if digest is None:
            return allow(cacheable=False)
        match = self._watched.current.match(digest)
        if match is None:
            self._allowed += 1
            return allow(cacheable=True)
        return self._deny(request, match)

    def teardown(self) -> None:
        """Log the counters: the SDK has no channel for an extension's own statistics yet."""
        self.ctx.log.info("reputation statistics at shutdown: %s", self.statistics())

    def on_tick(self) -> None:
        """Reloads happen here, never on the AUTH path. A new list must apply to files the kernel already
        caches as allowed (they raise no AUTH request): the verdict cache is flushed when it really
        changed. A rejected version is reported to the agent, and the last good list stays."""
        if self._watched.poll():
            self._reloads += 1
            self.ctx.invalidate_verdicts("blocklist reloaded")
        if self._watched.problem != self._problem:
            self._problem = self._watched.problem
            self.ctx.report_problem(self._problem)

    def statistics(self) -> ReputationStatistics:
        return ReputationStatistics(
            requests=self._requests,
            denied=self._denied,
            allowed=self._allowed,
            no_descriptor=self._no_descriptor,
            hash_errors=self._hash_errors,
            agent_hashed=self._agent_hashed,
            blocklist_reloads=self._reloads,
            memo=self._memo.statistics(),
            blocklist=self._watched.statistics(),
        )

    def _sha256(self, request: AuthRequest, file: AuthFile) -> str | None:
        """The file's digest, from the memo or by hashing; None (counted, logged) if it cannot be read.
        Where the agent says the file's metadata cannot show every change (it hashed the file itself: a
        tmpfs keeps its times on a mapped write), the memo's key means nothing: the agent's digest is
        the one, taken from the same descriptor before the request was sent."""
        if request.sha256 is not None:
            self._agent_hashed += 1
            return request.sha256
        try:
            key = file_key(os.fstat(file.fd))
            digest = self._memo.get(key)
            if digest is None:
                digest = file.sha256()
                self._memo.put(key, digest)
        except OSError as e:
            self._hash_errors += 1
            self.ctx.log.warning(
                "cannot hash %s (pid %d), allowing uncached: %s", request.path, request.process.pid, e
            )
            return None
        return digest

    def _deny(self, request: AuthRequest, match: BlocklistMatch) -> AuthAnswer:
        self._denied += 1
        name = match.label or PurePosixPath(request.path).name or request.path
        self.ctx.emit_finding(
            f"Blocked execution of {name}",
            Severity.HIGH,
            rule=RULE,
            description=f"sha256 {match.sha256} of {request.path} is on the blocklist",
            process=request.process,
            file_path=request.path,
            file_sha256=match.sha256,
            action="denied",
            related_event=request.header.id,
        )
        label = f" ({match.label})" if match.label else ""
        return deny(f"reputation: sha256 {match.sha256} is blocklisted{label}")
