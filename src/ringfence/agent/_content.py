"""Extension content from the agent: the operator's files, read as root, handed over as read-only slots.

An extension never opens a path the operator typed (ARCHITECTURE.md section 2): the agent copies each
content file into the extension's own directory in the state dir, and the extension reads it there as
`ctx.content_dir`. The agent copies bytes and never parses them; whether they load is the engine's own
verdict, given from its sandbox (a failed setup, or a `Problem` frame for a rejected new version).

Layout, the seam the content pipeline (issue 8) builds on:

    STATE_DIR/content/                    0711 root: searchable, not listable
      <ext-id>/                           0755 root: the only tree the extension's sandbox may read
        active -> slots/<n>               the version in force: a symlink, replaced atomically
        slots/<n>/<name>                  one complete version (dirs 0755, files 0644), never modified
        slots/.new-<n>/                   a version being written; renamed to slots/<n> once complete
        slots/<n>/.package                the signed package in that slot, if any: {"version", "path"}
        good.json                         the last slot proven good and its package (what a start runs)
        rejected.json                     package versions given up, each with why; never activated again

`ExtensionSpec.content_dir` is `<ext-id>/active`; the engine resolves it once per load, so it reads one
version whole. The newest `KEEP_SLOTS` versions stay on disk (the previous ones are what a
last-known-good revert will swap back to).

Operator files are named in `[extensions.content."<ext-id>"]` (name -> path) or, for the reputation
engine, by `--blocklist` and its old `blocklist` setting (migrated here, with a warning). A file that
changes is staged again once it has been stable for one check (about a second), so a file caught halfway
through an in-place write is not handed over.

A signed package (staged by the TUF client in STATE_DIR/content-updates/<engine>/<version>/, chosen by
agent/_updates.py) goes into the same slots: a slot holds the active package's files (its manifest.toml
left out, the package named in `.package`) and the operator's files beside them, the operator's file
winning a name both have. A slot swap is the one way an extension is told of new content, whichever
source changed; `ContentStore` takes one lock for it, so the watcher and the update thread never race.
Every change is told to `ContentStore.on_event` (the agent keeps the history, agent/_breakers.py).

Crash-loop breaker: a content change (a new slot at run time) arms it for `CrashLoopPolicy.window_s`;
if the extension fails `crashes` times in that window (crashes, kills for cause, failed starts: the
supervisor's `failures`), or the supervisor quarantines it after failures in that window, the slot
that was good before the change is made active again, its package (if any) is rejected, and a
quarantined extension is released (`on_event` "crash-loop"). Unlike the supervisor's own quarantine,
this does not wait for the agent to be restarted.

Errors (under the agent's root, `AgentError`):
    ContentError    content that cannot be staged; one line naming the extension and every file at fault
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ringfence._linux import fsync_dir, write_all, write_atomic
from ringfence.agent._errors import AgentError

log = logging.getLogger(__name__)

KEEP_SLOTS = 3
MAX_CONTENT_BYTES = 1 << 30  # per file
CHECK_INTERVAL_S = 1.0
ACTIVE = "active"
SLOTS = "slots"
PACKAGE_MARK = ".package"  # in a slot: the signed package it holds
TRIAL_CHECKS = 10  # watcher checks (about 10 s) a running extension has to take a package without a Problem
PACKAGE_MANIFEST = "manifest.toml"  # a package's own; not handed to the engine (it would read it as content)
LEGACY_SETTINGS = {"ringfence.reputation": {"blocklist": "blocklist.txt"}}
"""Settings keys that once named content files: extension id -> {key: content file name}."""

_Signature = tuple[int, int, int, int, int]  # dev, ino, size, mtime ns, ctime ns
_SLOT = re.compile(r"^[0-9]+$")


class ContentError(AgentError):
    """Content that cannot be staged. The message names the extension and each file with its problem."""


class ExtensionView(NamedTuple):
    state: str  # "running", "backoff", ...
    restarts: int
    start_failures: int  # starts that failed before or at the handshake (its setup raised or hung)
    problem: str = ""  # what the running extension says is wrong (a Problem: new content rejected)
    failures: int = 0  # every failure (crash, kill for cause, failed start): what the crash loop counts


@dataclass(frozen=True)
class CrashLoopPolicy:
    """`crashes` failures within `window_s` of a content change revert it (`[content]` crash_loop_*)."""

    crashes: int = 3
    window_s: float = 300.0


ContentEvent = Callable[["StagedContent", str, str], None]
"""(item, what, detail): "started" (the slot a start staged), "activated" (a new slot at run time),
"promoted" (proven good), "rejected" (given up: refused by the engine or a failed start), "crash-loop"
(reverted by the crash-loop breaker), "rolled-back" (by an operator). Called under the store's lock."""


@dataclass
class StagedContent:
    """One extension's content: where its operator files are, and the slot in force."""

    ext_id: str
    root: str  # STATE_DIR/content/<ext-id>
    origins: dict[str, str]  # content file name -> the operator's path
    signatures: dict[str, _Signature] = field(default_factory=dict)  # of the origins, as staged
    slot: int = 0  # the active slot
    good_slot: int = 0  # the last slot the extension was seen to start with (last-known-good)
    seen_at_stage: ExtensionView | None = None  # the extension when `slot` was staged
    stages: int = 0
    errors: int = 0
    reverts: int = 0
    last_error: str = ""
    package_version: str = ""  # the signed package in the active slot; "" for none
    package_dir: str | None = None  # where that package is staged
    rejected: set[str] = field(default_factory=set)  # package versions given up (see ContentWatcher)
    rejected_why: dict[str, str] = field(default_factory=dict)  # version -> why, for those that say
    package_on_trial: bool = False  # a package went active and the extension has not yet proven it
    trial_checks: int = 0  # watcher checks the extension has run with it, with no new problem
    changed_at: float | None = None  # monotonic s of the last change at run time: the crash loop's window
    prior_good_slot: int = 0  # the good slot when that change was made: what the crash-loop breaker restores
    recorded_good_slot: int = 0  # the slot good.json named at the start (kept on disk; the safe start's)
    crash_loop_reverts: int = 0
    last_revert: str = ""
    candidate_slot: int = 0  # a slot written for a shadow instance, not active; 0 for none
    candidate_signatures: dict[str, _Signature] = field(default_factory=dict)  # its operator files

    def kept_slots(self) -> set[int]:
        """Slots pruning must leave: every one a revert may swap back to, and a shadow's."""
        return {
            self.good_slot,
            self.prior_good_slot,
            self.recorded_good_slot,
            self.slot,
            self.candidate_slot,
        } - {0}

    @property
    def content_dir(self) -> str:
        return os.path.join(self.root, ACTIVE)

    def staged_paths(self) -> dict[str, str]:
        """The path the extension sees for each file -> the operator's path (to name the operator's file
        in the extension's error messages)."""
        return {os.path.join(self.content_dir, name): path for name, path in self.origins.items()}


def migrate_settings(
    content: Mapping[str, Mapping[str, str]], settings: Mapping[str, Mapping[str, Any]], *, warn: bool = True
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    """Content tables with the old path-naming settings keys moved in, and the settings without them
    (each move logged as deprecated when `warn`). Raises ContentError when a key and the content table
    name the same file."""
    content_out = {ext_id: dict(files) for ext_id, files in content.items()}
    settings_out = {ext_id: dict(table) for ext_id, table in settings.items()}
    for ext_id, keys in LEGACY_SETTINGS.items():
        table = settings_out.get(ext_id, {})
        for key, name in keys.items():
            if key not in table:
                continue
            path = table.pop(key)
            files = content_out.setdefault(ext_id, {})
            if name in files:
                raise ContentError(
                    f'extensions.config."{ext_id}".{key} and extensions.content."{ext_id}"."{name}" both '
                    f"name the file {name}: keep the content entry only"
                )
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ContentError(
                    f'extensions.config."{ext_id}".{key}: must be an absolute path, got {path!r}'
                )
            if warn:
                log.warning(
                    'extensions.config."%s".%s is deprecated: use [extensions.content."%s"] "%s" = "%s"',
                    ext_id,
                    key,
                    ext_id,
                    name,
                    path,
                )
            files[name] = path
    return content_out, settings_out


class ContentStore:
    """STATE_DIR/content: stages operator files as slots and swaps them in. Runs as root."""

    def __init__(self, state_dir: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = os.path.join(state_dir, "content")
        # One slot swap, and one last-known-good decision, at a time: the watcher's and the update
        # thread's. Reentrant: the watcher decides under it and reverts within the decision.
        self.lock = threading.RLock()
        self.clock = clock
        self.on_event: ContentEvent | None = None

    def emit(self, item: StagedContent, what: str, detail: str = "") -> None:
        hook = self.on_event
        if hook is None:
            return
        try:
            hook(item, what, detail)
        except Exception:  # supervision boundary: the swap is done; only its record is lost
            log.exception("recording content event %s of %s failed", what, item.ext_id)

    def stage_all(
        self,
        content: Mapping[str, Mapping[str, str]],
        packages: Mapping[str, tuple[str, str]] | None = None,
        *,
        safe: bool = False,
    ) -> dict[str, StagedContent]:
        """Stage every extension's files (at start), with the signed package chosen for it (ext id ->
        (version, staged dir)). `safe` (the start-loop breaker): an extension whose last-known-good slot
        is still on disk starts on that slot as it is, its operator files not read again until they
        change. Raises ContentError naming every file at fault."""
        if content:
            _mkdir(self.root, 0o711)
        packages = packages or {}
        staged: dict[str, StagedContent] = {}
        problems: list[str] = []
        for ext_id, files in sorted(content.items()):
            item = StagedContent(ext_id, os.path.join(self.root, ext_id), dict(files))
            item.package_version, item.package_dir = packages.get(ext_id, ("", None))
            item.rejected_why = _read_rejected(item.root)
            item.rejected = set(item.rejected_why)
            item.recorded_good_slot = _read_good(item.root)[2] or 0
            try:
                if not (safe and self._start_on_good_slot(item)):
                    self.stage(item)
            except ContentError as e:
                problems.append(str(e))
                continue
            staged[ext_id] = item
            self.emit(item, "started", "safe start: last-known-good" if safe else "")
        if problems:
            raise ContentError("; ".join(problems))
        return staged

    def _start_on_good_slot(self, item: StagedContent) -> bool:
        number = item.recorded_good_slot
        slot_dir = os.path.join(item.root, SLOTS, str(number))
        if not number or not os.path.isdir(slot_dir):
            log.warning(
                "safe start: no last-known-good slot of %s on disk; its content is staged", item.ext_id
            )
            return False
        with self.lock:
            _swap_active(item.root, number)
            item.slot = number
            item.package_version, item.package_dir = _package_in(slot_dir)
            item.signatures = {
                name: sig
                for name, path in item.origins.items()
                if (sig := origin_signature(path)) is not None
            }
        log.warning("safe start: %s runs its last-known-good slot %d", item.ext_id, number)
        return True

    def previous_packages(self, ext_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Ext id -> (version, staged dir) of the last package proven good (`good.json`), for those that
        have one still staged and not rejected: what a start runs again (newer ones wait for the update
        thread and their trial). A start never loads an unproven package."""
        out = {}
        for ext_id in ext_ids:
            root = os.path.join(self.root, ext_id)
            version, path, _ = _read_good(root)
            if path is not None and os.path.isdir(path) and version not in _read_rejected(root):
                out[ext_id] = (version, path)
        return out

    def stage(self, item: StagedContent) -> None:
        """Copy every file of `item` (its package's and the operator's) into a new slot and make it
        active. Raises ContentError (nothing changes then: the slot in force stays)."""
        with self.lock:
            self._stage(item)

    def activate_package(
        self, item: StagedContent, version: str, path: str, seen: ExtensionView | None = None
    ) -> None:
        """A new slot with the staged package at `path` (and the operator's files), made active and on
        trial; `seen` is the extension now. Raises ContentError or OSError; the slot in force and
        `item`'s package stay then."""
        with self.lock:
            self._stage(item, (version, path))
            item.package_on_trial, item.trial_checks = True, 0
            self.changed(item, seen)
            self.emit(item, "activated", f"package {version}")

    def stage_candidate(self, item: StagedContent, version: str, path: str) -> str:
        """A new slot with the staged package at `path` and the operator's files, NOT made active: a
        shadow instance's content. Returns its directory; `item.candidate_slot` names it (kept from
        pruning) until `activate_candidate` or `drop_candidate`. Raises ContentError or OSError."""
        with self.lock:
            number, signatures = self._write_slot(item, (version, path))
            item.candidate_slot, item.candidate_signatures = number, signatures
            return self._slot_dir(item, number)

    def activate_candidate(
        self, item: StagedContent, version: str, path: str, seen: ExtensionView | None = None
    ) -> None:
        """The shadow's slot (the very bytes that baked) made active, on trial like any new package.
        Raises OSError (nothing changes) when it is not on disk."""
        with self.lock:
            number = item.candidate_slot
            self._swap_to(item, number)
            item.slot, item.signatures = number, item.candidate_signatures
            item.package_version, item.package_dir = version, path
            item.candidate_slot, item.candidate_signatures = 0, {}
            item.stages += 1
            item.package_on_trial, item.trial_checks = True, 0
            self.changed(item, seen)
            self.emit(item, "activated", f"package {version} (after its shadow run)")

    def drop_candidate(self, item: StagedContent) -> None:
        """The shadow's slot is no longer wanted: left to pruning (it is never made active)."""
        with self.lock:
            item.candidate_slot, item.candidate_signatures = 0, {}

    def changed(self, item: StagedContent, seen: ExtensionView | None) -> None:
        """A new slot went active at run time: arm the crash-loop breaker. Caller holds the lock."""
        item.seen_at_stage = seen
        item.prior_good_slot = item.good_slot  # a change on an unproven change: the good one before both
        item.changed_at = self.clock()

    def _stage(self, item: StagedContent, package: tuple[str, str | None] | None = None) -> None:
        """A new slot made active; with `package` (version, directory), that package in it, which `item`
        then names. The item changes only once the slot is in force: status, read without the lock,
        never names a package that is not (or not yet) active."""
        package = package or (item.package_version, item.package_dir)
        number, signatures = self._write_slot(item, package)
        _swap_active(item.root, number)
        item.slot, item.signatures = number, signatures
        item.package_version, item.package_dir = package
        item.stages += 1
        _prune(os.path.join(item.root, SLOTS), keep=KEEP_SLOTS, also=item.kept_slots())

    def _write_slot(
        self, item: StagedContent, package: tuple[str, str | None]
    ) -> tuple[int, dict[str, _Signature]]:
        """A complete new slot (written under a temp name, then renamed), not active yet: the operator's
        files of `item` and the package (version, directory; directory None for none)."""
        _mkdir(item.root, 0o755)
        slots = os.path.join(item.root, SLOTS)
        _mkdir(slots, 0o755)
        number = max(_slot_numbers(slots), default=0) + 1
        tmp = os.path.join(slots, f".new-{number}")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
        _mkdir(tmp, 0o755)
        try:
            signatures = self._copy_all(item, tmp)
            version, package_dir = package
            if package_dir is not None:
                _copy_package(item.ext_id, version, package_dir, tmp)
            fsync_dir(tmp)
            os.rename(tmp, os.path.join(slots, str(number)))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return number, signatures

    def revert(self, item: StagedContent, why: str = "") -> None:
        """Make the last-known-good slot active again (and its package the one in force: a package that
        was active in the slot given up is remembered as rejected, with `why`, and not activated again).
        Raises OSError (nothing changes) when that slot is not on disk."""
        with self.lock:
            good = _package_in(self._slot_dir(item, item.good_slot))
            self._swap_to(item, item.good_slot)
            if item.package_version and item.package_version != good[0]:
                self.reject(item, [item.package_version], why)
            item.package_version, item.package_dir = good
            item.slot = item.good_slot
            item.reverts += 1

    @staticmethod
    def record_good(item: StagedContent) -> None:
        """good.json for `item`'s good slot (and the package in it)."""
        _write_good(item)

    def reject(self, item: StagedContent, versions: Iterable[str], why: str) -> None:
        with self.lock:
            for version in versions:
                item.rejected.add(version)
                item.rejected_why[version] = why
            _write_rejected(item.root, {v: item.rejected_why.get(v, "") for v in item.rejected})

    def _slot_dir(self, item: StagedContent, number: int | None = None) -> str:
        return os.path.join(item.root, SLOTS, str(item.slot if number is None else number))

    def _swap_to(self, item: StagedContent, number: int) -> None:
        if not number or not os.path.isdir(self._slot_dir(item, number)):
            raise FileNotFoundError(f"slot {number} of {item.ext_id} is not on disk")
        _swap_active(item.root, number)

    def kept(self, item: StagedContent) -> list[tuple[int, str]]:
        """The slots on disk, lowest first, with the package each holds ("" for none)."""
        slots = os.path.join(item.root, SLOTS)
        try:
            numbers = sorted(_slot_numbers(slots))
        except FileNotFoundError:
            return []
        return [(n, _package_in(os.path.join(slots, str(n)))[0]) for n in numbers]

    def rollback(
        self,
        item: StagedContent,
        to_version: str | None,
        *,
        newer_than: Callable[[str], Iterable[str]] = lambda _version: (),
    ) -> str:
        """An operator's revert: to the last-known-good slot (or, when the active one is it, the kept
        slot before it), or to the newest kept slot holding package `to_version`. The package left, and
        every staged version `newer_than` the target's (so that following the newest does not bring them
        back), are rejected; the target becomes last-known-good. Returns what was done in one line;
        raises ContentError saying why it cannot."""
        with self.lock:
            kept = self.kept(item)
            target = self._rollback_target(item, to_version, kept)
            left, left_slot = item.package_version, item.slot
            self._swap_to(item, target)
            item.package_version, item.package_dir = _package_in(self._slot_dir(item, target))
            item.slot = item.good_slot = target
            item.package_on_trial, item.changed_at, item.reverts = False, None, item.reverts + 1
            why = "rolled back by the operator"
            gone = {v for v in [left, *newer_than(item.package_version)] if v and v != item.package_version}
            if gone:
                self.reject(item, sorted(gone), why)
            _write_good(item)
            what = f"slot {target}" + (f" (package {item.package_version})" if item.package_version else "")
            left_what = f"slot {left_slot}" + (f" (package {left})" if left else "")
            item.last_revert = f"{left_what} rolled back by the operator: {what} is active"
            log.warning("content of %s: %s", item.ext_id, item.last_revert)
            self.emit(item, "rolled-back", item.last_revert)
            return item.last_revert

    @staticmethod
    def _rollback_target(item: StagedContent, to_version: str | None, kept: list[tuple[int, str]]) -> int:
        shown = ", ".join(f"{n}" + (f" {v}" if v else "") for n, v in kept) or "none"
        if to_version is not None:
            holding = [n for n, v in kept if v == to_version]
            if not holding:
                raise ContentError(
                    f"{item.ext_id}: no kept slot holds version {to_version} (kept slots: {shown})"
                )
            target = holding[-1]
        elif item.slot != item.good_slot and any(n == item.good_slot for n, _ in kept):
            target = item.good_slot
        else:
            older = [n for n, _ in kept if n < item.slot]
            if not older:
                raise ContentError(
                    f"{item.ext_id}: nothing to roll back to: slot {item.slot} is the oldest kept "
                    f"(kept slots: {shown})"
                )
            target = older[-1]
        if target == item.slot:
            raise ContentError(f"{item.ext_id}: slot {target} ({to_version}) is the active one already")
        return target

    def _copy_all(self, item: StagedContent, slot_dir: str) -> dict[str, _Signature]:
        signatures: dict[str, _Signature] = {}
        problems: list[str] = []
        for name, origin in sorted(item.origins.items()):
            try:
                signatures[name] = _copy(origin, os.path.join(slot_dir, name))
            except ContentError as e:
                problems.append(str(e))
        if problems:
            raise ContentError(f"content of extension {item.ext_id}: " + "; ".join(problems))
        return signatures


def _copy_package(ext_id: str, version: str, root: str, slot_dir: str) -> None:
    """The package's files (not its manifest) into the slot, beside the operator's; then `.package`."""
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            origin = os.path.join(dirpath, name)
            rel = os.path.relpath(origin, root)
            if rel == PACKAGE_MANIFEST or rel.startswith("."):
                continue
            dest = os.path.join(slot_dir, rel)
            if os.path.lexists(dest):
                log.warning("content of %s: %s of the operator's is kept over the package's", ext_id, rel)
                continue
            _readable_dirs(slot_dir, os.path.dirname(rel))
            try:
                _copy(origin, dest)
            except ContentError as e:
                problems.append(str(e))
    if problems:
        raise ContentError(f"package {version} of extension {ext_id}: " + "; ".join(problems))
    mark = json.dumps({"version": version, "path": root}).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(os.path.join(slot_dir, PACKAGE_MARK), flags, 0o644)
    try:
        write_all(fd, mark)
        os.fchmod(fd, 0o644)
        os.fsync(fd)
    finally:
        os.close(fd)


REJECTED = "rejected.json"  # in <ext-id>/: package versions reverted after a failed start, kept across runs


def _read_rejected(root: str) -> dict[str, str]:
    """Version -> why. The file is {"VERSION": "why", ...}; a list of versions (the first format) is read
    as versions without a reason."""
    try:
        with open(os.path.join(root, REJECTED), "rb") as f:
            versions = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        why = str(e)
    else:
        if isinstance(versions, list) and all(isinstance(v, str) for v in versions):
            return dict.fromkeys(versions, "")
        if isinstance(versions, dict) and all(isinstance(v, str) for v in [*versions, *versions.values()]):
            return dict(versions)
        why = "not a list of versions"
    log.error(
        "%s: unreadable (%s): no package version is taken as rejected", os.path.join(root, REJECTED), why
    )
    return {}


def _write_rejected(root: str, versions: Mapping[str, str]) -> None:
    path = os.path.join(root, REJECTED)
    try:
        write_atomic(path, json.dumps(dict(sorted(versions.items()))).encode(), 0o644)
    except OSError as e:
        why = e.strerror
    else:
        return
    log.error("%s: cannot record the rejected versions (they are kept for this run only): %s", path, why)


GOOD = "good.json"  # in <ext-id>/: the last slot proven good and its package, kept across runs


def _write_good(item: StagedContent) -> None:
    """{"slot": N, "version": V, "path": P} (version and path only when the slot holds a package)."""
    path = os.path.join(item.root, GOOD)
    try:
        mark: dict[str, object] = {"slot": item.good_slot}
        if item.package_version:
            mark |= {"version": item.package_version, "path": item.package_dir}
        write_atomic(path, json.dumps(mark).encode(), 0o644)
    except OSError as e:
        why = e.strerror
    else:
        return
    log.error("%s: cannot record the good package (a restart runs without it): %s", path, why)


def _read_good(root: str) -> tuple[str, str | None, int | None]:
    """good.json: (package version, staged dir, slot); ("", None, None) for none or an unreadable one."""
    path = os.path.join(root, GOOD)
    try:
        with open(path, "rb") as f:
            mark = json.loads(f.read(65536))
        slot = mark.get("slot")
        if "version" not in mark:
            return "", None, slot if isinstance(slot, int) else None
        return str(mark["version"]), str(mark["path"]), slot if isinstance(slot, int) else None
    except FileNotFoundError:
        return "", None, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = str(e)
    log.error("%s: unreadable package mark (%s): taken as no package", path, why)
    return "", None, None


def _package_in(slot_dir: str) -> tuple[str, str | None]:
    """The package a slot holds: (version, staged dir), or ("", None) for none or an unreadable mark."""
    return _read_mark(os.path.join(slot_dir, PACKAGE_MARK))


def _read_mark(path: str) -> tuple[str, str | None]:
    try:
        with open(path, "rb") as f:
            mark = json.loads(f.read(65536))
        return str(mark["version"]), str(mark["path"])
    except FileNotFoundError:
        return "", None
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = str(e)
    log.error("%s: unreadable package mark (%s): taken as no package", path, why)
    return "", None


def _copy(origin: str, dest: str) -> _Signature:
    """Copy one operator file (root reads it) to `dest` (0644), fsync'd. Raises ContentError."""
    untrusted = untrusted_path(origin)
    if untrusted is not None:
        raise ContentError(f"{origin}: {untrusted}")
    try:
        fd = os.open(origin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ContentError(f"{origin}: cannot open: {e.strerror}") from e
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise ContentError(f"{origin}: not a regular file")
        if before.st_uid not in (0, os.geteuid()) or before.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ContentError(
                f"{origin}: {_NOT_ROOTS} (it is uid {before.st_uid}, mode {before.st_mode & 0o7777:o})"
            )
        if before.st_size > MAX_CONTENT_BYTES:
            raise ContentError(f"{origin}: larger than the limit of {MAX_CONTENT_BYTES} bytes")
        _copy_fd(fd, dest, before.st_size)
        after = os.fstat(fd)
    except OSError as e:
        raise ContentError(f"{origin}: cannot read: {e.strerror}") from e
    finally:
        os.close(fd)
    if _sig(before) != _sig(after):
        raise ContentError(f"{origin}: changed while it was being copied")
    return _sig(after)


_MAX_LINKS = 40
_NOT_ROOTS = (
    "only root may be able to change content the agent hands over: it must be owned by root and not "
    "writable by group or others"
)


def untrusted_path(path: str, _links: int = 0) -> str | None:
    """Why someone other than root could change what `path` names, or None. Root reads content for the
    extensions, so a user who could swap the file, or plant a symlink on the way to it (to /etc/shadow,
    say), could make the agent copy anything into a slot the sandbox and other users can read. Every
    directory on the way must not be writable by others (a sticky one such as /tmp only if the entry in it
    is root's), and every symlink on the way must be root's (as the kernel's protected_symlinks)."""
    if not os.path.isabs(path) or _links > _MAX_LINKS:
        return "must be an absolute path" if _links <= _MAX_LINKS else "too many symlinks on the way"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = "/"
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current)
            continue
        entry_path = os.path.join(current, part)
        try:
            parent, entry = os.lstat(current), os.lstat(entry_path)
        except FileNotFoundError:
            return None  # missing: reported as such when it is opened
        problem = _entry_problem(current, parent, entry_path, entry)
        if problem is None and stat.S_ISLNK(entry.st_mode):
            return untrusted_path(os.path.join(current, os.readlink(entry_path), *parts[i + 1 :]), _links + 1)
        if problem is not None:
            return problem
        current = entry_path
    return None


def _entry_problem(directory: str, parent: os.stat_result, path: str, entry: os.stat_result) -> str | None:
    writable = parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (parent.st_mode & stat.S_ISVTX and entry.st_uid == 0):
        return f"{directory} is writable by others, so {path} could be replaced: {_NOT_ROOTS}"
    if stat.S_ISLNK(entry.st_mode) and entry.st_uid != 0:
        return f"{path} is a symlink owned by uid {entry.st_uid}: {_NOT_ROOTS}"
    return None


def _copy_fd(fd: int, dest: str, size: int) -> None:
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        copied = 0
        while copied <= size:  # one read past the size: a file that grew is caught by the fstat after
            n = os.sendfile(out, fd, copied, 1 << 20)
            if n == 0:
                break
            copied += n
        os.fchmod(out, 0o644)
        os.fsync(out)
    finally:
        os.close(out)


def origin_signature(path: str) -> _Signature | None:
    try:
        return _sig(os.stat(path))
    except OSError:
        return None


def _sig(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _swap_active(root: str, number: int) -> None:
    link = os.path.join(root, f".{ACTIVE}-new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(os.path.join(SLOTS, str(number)), link)
    os.replace(link, os.path.join(root, ACTIVE))
    fsync_dir(root)


def _readable_dirs(slot_dir: str, rel: str) -> None:
    """`slot_dir/rel` and each directory between, 0755 whatever the umask (makedirs would give the
    intermediate ones the umask's mode)."""
    path = slot_dir
    for part in rel.split(os.sep) if rel else ():
        path = os.path.join(path, part)
        _mkdir(path, 0o755)


def _slot_numbers(slots: str) -> list[int]:
    return [int(name) for name in os.listdir(slots) if _SLOT.match(name)]


def _prune(slots: str, *, keep: int, also: set[int]) -> None:
    for number in sorted(_slot_numbers(slots))[:-keep]:
        if number not in also:
            shutil.rmtree(os.path.join(slots, str(number)), ignore_errors=True)


def _mkdir(path: str, mode: int) -> None:
    """A root-owned directory of exactly `mode`: chmod'ed, never left to the umask, which is the whole
    process's (another thread's, or the operator's 077, would hide content from the sandbox)."""
    os.makedirs(path, mode=mode, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or (st.st_uid != 0 and os.geteuid() == 0):
        raise ContentError(f"{path}: not a root-owned directory; remove it and start again")
    os.chmod(path, mode)


ExtensionState = Callable[[str], "ExtensionView | None"]
"""Extension id -> what the watcher needs to know of it, None if unknown."""


class ContentWatcher:
    """Re-stages an extension's content when an operator file changes: checked every `interval_s` on a
    thread of its own (off every hot path); a change is staged once the file has been stable for one
    check. A file that cannot be staged any more (gone, unreadable) keeps the slot in force, and is
    logged and counted (`StagedContent.errors`, `last_error`).

    Last-known-good: the slot active when the agent started (its setup loaded it) is good, and so is a
    newer one once the extension is seen running after a restart with it. If the extension fails to
    start (its setup raised or hung) while an unproven slot is active, the good slot is made active
    again before the next restart, so that content the engine rejected cannot crash-loop it into
    quarantine; the rejected file is not staged again until it changes. A crash while running changes
    nothing: the restart tells whether the content loads. A signed package is given up sooner: when the
    running extension reports a new problem (a Problem frame: it rejected the reload) while the package
    is on trial, the good slot comes back at once (the engine reloads it) and the version is recorded
    as rejected, so that a later start never loads it."""

    def __init__(
        self,
        store: ContentStore,
        contents: Mapping[str, StagedContent],
        *,
        interval_s: float = CHECK_INTERVAL_S,
        on_staged: Callable[[StagedContent], None] | None = None,
        extension_state: ExtensionState | None = None,
        crash_loop: CrashLoopPolicy | None = None,
    ) -> None:
        self._store = store
        self._crash_loop = crash_loop or CrashLoopPolicy()
        self._contents = dict(contents)
        self._interval_s = interval_s
        self._on_staged = on_staged
        self._extension_state = extension_state
        for item in self._contents.values():
            item.good_slot = item.slot
        self._seen: dict[str, dict[str, _Signature | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringfence-content", daemon=True)

    def start(self) -> None:
        if self._contents:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def check(self) -> None:
        """One round over every extension's files (the thread calls it; tests may too)."""
        for item in self._contents.values():
            self._check_one(item)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # supervision boundary: one bad round must not end the watching
                log.exception("checking extension content failed; going on")

    def _check_one(self, item: StagedContent) -> None:
        self._check_good(item)
        self._check_origins(item)

    def _check_good(self, item: StagedContent) -> None:
        view = self._extension_state(item.ext_id) if self._extension_state is not None else None
        with self._store.lock:  # the update thread may be activating a package for the same item
            self._decide(item, view)

    def _decide(self, item: StagedContent, view: ExtensionView | None) -> None:
        staged = item.seen_at_stage
        if view is None or staged is None or self._crash_looped(item, view, staged):
            return
        if item.slot == item.good_slot:
            return
        if view.state == "running" and view.restarts > staged.restarts:
            self._proven(item)  # it started again with this slot active, and runs
            return
        if item.package_on_trial and view.state == "running":
            if view.problem not in ("", staged.problem):
                self._give_up(item, view, f"was rejected by the running extension ({view.problem})")
                return
            item.trial_checks += 1
            if item.trial_checks >= TRIAL_CHECKS:
                self._proven(item)  # it has run with the package for the whole trial and said nothing
            return
        if view.state != "backoff" or view.start_failures <= staged.start_failures:
            return  # a crash while running says nothing about content: the restart will tell
        self._give_up(item, view, "failed the extension's start")

    def _crash_looped(self, item: StagedContent, view: ExtensionView, staged: ExtensionView) -> bool:
        """The crash-loop breaker: True when it reverted the change."""
        if item.changed_at is None:
            return False
        policy = self._crash_loop
        if self._store.clock() - item.changed_at > policy.window_s or item.slot == item.prior_good_slot:
            item.changed_at = None  # the window passed, or the change is gone already: disarmed
            return False
        crashes = view.failures - staged.failures
        quarantined = view.state == "quarantined" and crashes > 0  # the supervisor gave up first
        if crashes < policy.crashes and not quarantined:
            return False
        item.good_slot = item.prior_good_slot
        why = f"failed {crashes} times within {policy.window_s:g} s of the change (crash-loop breaker)"
        if not self._give_up(item, view, why, event="crash-loop"):
            return False
        item.crash_loop_reverts += 1
        _write_good(item)
        return True

    def _proven(self, item: StagedContent) -> None:
        item.good_slot = item.slot
        item.package_on_trial = False
        _write_good(item)
        log.info("content of %s: slot %d proven good", item.ext_id, item.slot)
        self._store.emit(item, "promoted", f"slot {item.slot}")

    def _give_up(self, item: StagedContent, view: ExtensionView, why: str, event: str = "rejected") -> bool:
        bad, package = item.slot, item.package_version
        try:
            self._store.revert(item, why)
        except OSError:
            log.exception("content of %s: restoring slot %d failed", item.ext_id, item.good_slot)
            return False
        item.seen_at_stage = view
        item.package_on_trial = False
        item.changed_at = None
        what = ", ".join([*item.origins.values(), *([f"package {package}"] if package else [])])
        item.last_error = item.last_revert = (
            f"content of {item.ext_id}: slot {bad} ({what}) {why}; slot {item.good_slot}, the last known "
            "good, is active again"
        )
        log.error("%s", item.last_error)
        self._store.emit(item, event, item.last_error)
        return True

    def _check_origins(self, item: StagedContent) -> None:
        now = {name: origin_signature(path) for name, path in item.origins.items()}
        previous, self._seen[item.ext_id] = self._seen.get(item.ext_id), now
        if all(now[name] == item.signatures.get(name) for name in item.origins):
            return  # what is staged is what is there
        if now != previous:
            return  # changed since the last check: wait until it has been stable for one
        try:
            self._store.stage(item)
        except (ContentError, OSError) as e:
            failure = str(e)
        else:
            failure = ""
        item.last_error = failure
        if failure:
            item.errors += 1
            item.signatures = {name: sig for name, sig in now.items() if sig is not None}  # not retried
            log.error("content of %s not updated, slot %d stays active: %s", item.ext_id, item.slot, failure)
            return
        seen = self._extension_state(item.ext_id) if self._extension_state is not None else None
        with self._store.lock:
            self._store.changed(item, seen)
            self._store.emit(item, "activated", "operator files")
        log.info("content of %s staged as slot %d", item.ext_id, item.slot)
        if self._on_staged is not None:
            self._on_staged(item)
