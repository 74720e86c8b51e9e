"""The host's side: refresh signed metadata from a trusted root, fetch the newest package of each engine,
verify it and stage it. The seam is one method, `update() -> UpdateReport`, which never raises: an
expired, unreachable or tampered repository is a problem in the report, and the active content stays.

    STATE/content-tuf/root.json            the trust anchor (the publisher's KEYS/root.json), put there
                                           once by provisioning or `ringfence content update --root FILE`
    STATE/content-tuf/metadata/            tuf's cache of verified metadata (what makes rollback and
                                           freeze detectable across runs)
    STATE/content-updates/ENGINE/VERSION/  staged packages (see _stage.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import msgspec
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater, UpdaterConfig

from ringfence._linux import write_atomic
from ringfence.content._errors import ContentError, UpdateError
from ringfence.content._fetcher import BoundedFetcher
from ringfence.content._keys import ExpiryPolicy, expiry_warnings, utc_now
from ringfence.content._package import MAX_PACKAGE_BYTES, Manifest, version_key
from ringfence.content._repository import manifest_of
from ringfence.content._stage import stage, staged_dir, staged_versions

log = logging.getLogger(__name__)
TUF_DIR = "content-tuf"


class Staged(msgspec.Struct, frozen=True):
    engine: str
    name: str
    version: str
    path: str


class UpdateReport(msgspec.Struct, frozen=True):
    """What one update did. `ok` is False when anything in `problems` happened."""

    ok: bool
    staged: list[Staged] = []
    up_to_date: list[str] = []  # "ENGINE VERSION" already staged
    problems: list[str] = []
    warnings: list[str] = []


class ContentUpdates(Protocol):
    """The seam the agent schedules: one call, never raises."""

    def update(self) -> UpdateReport: ...


@dataclass(frozen=True)
class UpdateConfig:
    url: str  # the repository's base URL: URL/metadata/ and URL/targets/
    state_dir: str
    root_max_bytes: int = 512_000
    timestamp_max_bytes: int = 16_384
    snapshot_max_bytes: int = 2_000_000
    targets_max_bytes: int = 5_000_000
    package_max_bytes: int = MAX_PACKAGE_BYTES
    socket_timeout_s: float = 10.0
    download_deadline_s: float = 120.0
    root_warn_days: float = 30.0
    targets_warn_days: float = 7.0

    @property
    def tuf_dir(self) -> str:
        return os.path.join(self.state_dir, TUF_DIR)

    @property
    def trusted_root(self) -> str:
        return os.path.join(self.tuf_dir, "root.json")


def install_trusted_root(config: UpdateConfig, root_file: str) -> None:
    """Place the publisher's signed root as the trust anchor. Refuses a file that is not a signed root."""
    try:
        with open(root_file, "rb") as f:
            data = f.read(config.root_max_bytes + 1)
        root: Metadata[Root] = Metadata.from_bytes(data)
        root.verify_delegate("root", root)
    except (OSError, DeserializationError, tuf_errors.RepositoryError, AttributeError) as e:
        raise UpdateError(f"{root_file}: not a signed TUF root: {e}") from None
    os.makedirs(config.tuf_dir, mode=0o700, exist_ok=True)
    write_atomic(config.trusted_root, data, 0o600)


class TufContentUpdater:
    """ContentUpdates over a TUF repository (python-tuf's ngclient does every signature check)."""

    def __init__(
        self,
        config: UpdateConfig,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        assigned: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._now = now
        self._assigned = assigned  # a fleet's choice per engine: fetch that version, and only that

    def update(self) -> UpdateReport:
        try:
            with self._locked():
                return self._update()
        except UpdateError as e:
            return UpdateReport(ok=False, problems=[str(e)])
        except Exception as e:  # the supervision boundary of the scheduled path: report, keep running
            log.exception("content update failed unexpectedly")
            return UpdateReport(ok=False, problems=[f"unexpected {type(e).__name__}: {e}"])

    def _update(self) -> UpdateReport:
        problems: list[str] = []
        staged: list[Staged] = []
        current: list[str] = []
        try:
            updater = self._refresh()
        except ContentError as e:
            return UpdateReport(ok=False, problems=[str(e)])
        wanted, refused = self._wanted()
        problems.extend(refused)
        for engine, signed in sorted(wanted.items()):
            try:
                done = self._fetch_one(updater, signed, assigned=self._assigned is not None)
            except ContentError as e:
                problems.append(f"{engine}: {e}")
                continue
            if done is None:
                current.append(f"{engine} {signed.version}")
            else:
                staged.append(done)
        report = UpdateReport(not problems, staged, current, problems, self._warnings())
        for line in report.problems:
            log.warning("content update: %s (the active content stays)", line)
        return report

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One update at a time per state dir (the scheduled one and `ringfence content update`): tuf's
        cache and the staging area are not safe to share between two running updates."""
        path = os.path.join(self.config.tuf_dir, "update.lock")
        try:
            os.makedirs(self.config.tuf_dir, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UpdateError(f"{path}: cannot open the update lock: {e.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UpdateError(f"another content update holds {path}; this one is skipped") from None
            yield
        finally:
            os.close(fd)

    # -- steps --------------------------------------------------------------------------------------

    def _refresh(self) -> Updater:
        c = self.config
        try:
            with open(c.trusted_root, "rb") as f:
                bootstrap = f.read(c.root_max_bytes + 1)
        except OSError as e:
            raise UpdateError(
                f"no trusted root at {c.trusted_root} ({e.strerror}): install the publisher's root.json "
                "with `ringfence content update --root FILE`"
            ) from None
        metadata_dir = os.path.join(c.tuf_dir, "metadata")
        os.makedirs(metadata_dir, mode=0o700, exist_ok=True)
        url = c.url.rstrip("/")
        fetcher = BoundedFetcher(c.socket_timeout_s, c.download_deadline_s, self._clock)
        try:
            updater = Updater(
                metadata_dir,
                f"{url}/metadata/",
                target_base_url=f"{url}/targets/",
                fetcher=fetcher,
                config=UpdaterConfig(
                    root_max_length=c.root_max_bytes,
                    timestamp_max_length=c.timestamp_max_bytes,
                    snapshot_max_length=c.snapshot_max_bytes,
                    targets_max_length=c.targets_max_bytes,
                    app_user_agent="ringfence",
                ),
                bootstrap=bootstrap,
            )
            updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError, ValueError) as e:
            where, why = fetcher.last_url or url, explain(e)
            raise UpdateError(why if where in why else f"{where}: {why}") from None
        return updater

    def _wanted(self) -> tuple[dict[str, Manifest], list[str]]:
        """Per engine, the signed version to fetch: the newest, or with a fleet the one it assigned (an
        engine it assigned nothing gets nothing); and the assignments the repository does not sign."""
        listed = self._listed()
        if self._assigned is None:
            newest: dict[str, Manifest] = {}
            for m in listed:
                best = newest.get(m.engine)
                if best is None or version_key(m.version) > version_key(best.version):
                    newest[m.engine] = m
            return newest, []
        chosen: dict[str, Manifest] = {}
        refused: list[str] = []
        by_version = {(m.engine, m.version): m for m in listed}
        for engine, version in sorted(self._assigned().items()):
            found = by_version.get((engine, version))
            if found is None:
                refused.append(
                    f"{engine}: the fleet assigned {version}, which the signed repository does not list: "
                    "refused (a control plane chooses among signed versions only)"
                )
            else:
                chosen[engine] = found
        return chosen, refused

    def _listed(self) -> list[Manifest]:
        """Every signed package. The names come from the verified targets.json that refresh() just wrote;
        each is looked up again through the updater before it is trusted."""
        try:
            path = os.path.join(self.config.tuf_dir, "metadata", "targets.json")
            targets: Metadata[Targets] = Metadata.from_file(path)
        except (OSError, DeserializationError) as e:
            log.warning("content update: cannot list targets: %s", e)
            return []
        return [m for target in targets.signed.targets.values() if (m := manifest_of(target)) is not None]

    def _fetch_one(self, updater: Updater, signed: Manifest, *, assigned: bool = False) -> Staged | None:
        """Stage `signed` (None when it is already). A version below the staged newest is refused unless
        a fleet assigned it (a rollback to last-known-good is the control plane's call; still signed)."""
        c = self.config
        path = f"content/{signed.engine}/{signed.name}-{signed.version}.tar"
        staged = staged_versions(c.state_dir, signed.engine)
        if os.path.isdir(staged_dir(c.state_dir, signed.engine, signed.version)):
            return None
        if not assigned and staged and version_key(staged[-1]) > version_key(signed.version):
            raise UpdateError(
                f"the repository's newest version {signed.version} is below the staged {staged[-1]}: "
                "refused (a version never goes down)"
            )
        try:
            info = updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as e:
            raise UpdateError(f"{path}: {explain(e)}") from None
        if info is None or manifest_of(info) != signed:
            raise UpdateError(f"{path}: not in the verified targets metadata as listed")
        if info.length > c.package_max_bytes:
            raise UpdateError(f"{path}: {info.length} bytes is over the limit of {c.package_max_bytes}")
        data = self._download(updater, info)
        where = os.path.join(c.state_dir, "content-updates", signed.engine)
        try:
            final = stage(c.state_dir, signed, data, where)
        except OSError as e:
            raise UpdateError(f"{where}: cannot stage: {e}") from None
        return Staged(signed.engine, signed.name, signed.version, final)

    def _download(self, updater: Updater, info: TargetFile) -> bytes:
        tmp = tempfile.mkdtemp(prefix=".download-", dir=self.config.tuf_dir)
        try:
            path = updater.download_target(info, filepath=os.path.join(tmp, "package.tar"))
            with open(path, "rb") as f:
                return f.read()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as e:
            raise UpdateError(f"{info.path}: {explain(e)}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _warnings(self) -> list[str]:
        """Expiry of the roles that need the offline keys, from the metadata refresh() verified."""
        c = self.config
        policy = ExpiryPolicy(warn_days={"root": c.root_warn_days, "targets": c.targets_warn_days})
        roles = {}
        for role in ("root", "targets"):
            try:
                md = Metadata.from_file(os.path.join(c.tuf_dir, "metadata", f"{role}.json"))
            except (OSError, DeserializationError):
                continue
            roles[role] = md.signed.expires
        return expiry_warnings(roles, policy, self._now())


_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (tuf_errors.ExpiredMetadataError, "metadata expired (a freeze, or a repository nobody re-signed)"),
    (tuf_errors.EqualVersionNumberError, "metadata version did not go up (replay or mix-and-match)"),
    (
        tuf_errors.BadVersionNumberError,
        "metadata version is not the one expected (rollback or mix-and-match)",
    ),
    (tuf_errors.UnsignedMetadataError, "signature check failed (not signed by the trusted keys)"),
    (
        tuf_errors.LengthOrHashMismatchError,
        "length or hash does not match the signed metadata (tampered or mixed)",
    ),
    (tuf_errors.DownloadLengthMismatchError, "response longer than allowed (oversized or endless)"),
    (tuf_errors.SlowRetrievalError, "download too slow or stalled"),
    (tuf_errors.DownloadHTTPError, "HTTP error"),
    (tuf_errors.DownloadError, "download failed"),
    (tuf_errors.RepositoryError, "metadata refused"),
    (OSError, "local file error"),
)


def explain(e: BaseException) -> str:
    """One line: what kind of refusal, then what tuf said (or the cause it wraps, when it said nothing)."""
    kind = next((label for cls, label in _KINDS if isinstance(e, cls)), type(e).__name__)
    detail = " ".join(str(e).split())
    if not detail and e.__cause__ is not None:
        detail = " ".join(str(e.__cause__).split())[:300]
    return f"{kind}: {detail or type(e).__name__}"


class FakeContentUpdates:
    """ContentUpdates for tests of whatever schedules updates: returns the given reports in turn (the last
    one for ever) and counts the calls."""

    def __init__(self, *reports: UpdateReport) -> None:
        self._reports = list(reports) or [UpdateReport(ok=True)]
        self.calls = 0

    def update(self) -> UpdateReport:
        self.calls += 1
        return self._reports[min(self.calls, len(self._reports)) - 1]
