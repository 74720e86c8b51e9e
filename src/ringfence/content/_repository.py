"""The publisher's side: a TUF repository of static files that any web server or CDN can serve.

    REPO/metadata/N.root.json, root.json      every root version (clients walk them in order)
    REPO/metadata/N.targets.json, N.snapshot.json, timestamp.json
    REPO/targets/content/ENGINE/SHA256.NAME-VERSION.tar

Consistent snapshots are on: a publication adds new files and replaces only timestamp.json, last, so a
client or a CDN never sees half of one. Each target carries its package's manifest in the signed
`custom` field ({"ringfence": {"name", "engine", "version"}}), which is what clients read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from ringfence._linux import write_atomic
from ringfence.content._errors import KeyStoreError, PublishError
from ringfence.content._keys import ExpiryPolicy, KeyStore, expiry_warnings
from ringfence.content._package import Manifest, Package, version_key

_JSON = JSONSerializer(compact=False)


@dataclass(frozen=True)
class Published:
    target: str  # the TUF target path
    targets_version: int
    warnings: list[str]


def manifest_of(target: TargetFile) -> Manifest | None:
    custom = target.custom
    info = custom.get("ringfence") if isinstance(custom, dict) else None
    if not isinstance(info, dict):
        return None
    try:
        return Manifest(name=str(info["name"]), engine=str(info["engine"]), version=str(info["version"]))
    except KeyError:
        return None


class Repository:
    """One repository directory, signed with one key directory. Methods raise PublishError/KeyStoreError."""

    def __init__(self, path: str, keys: KeyStore, policy: ExpiryPolicy, now: datetime) -> None:
        self.path, self.keys, self.policy, self.now = path, keys, policy, now
        self.meta_dir = os.path.join(path, "metadata")
        self.targets_dir = os.path.join(path, "targets")
        with self._locked():
            if not os.path.exists(os.path.join(self.meta_dir, "timestamp.json")):
                self._create()
            self.root, self.targets, self.snapshot, self.timestamp = self._load()

    # -- what callers use: each holds the repository's lock and starts from what is on disk -----------

    def publish(self, package: Package) -> Published:
        """Add `package` as a target; its version must be above every published one of its engine."""
        with self._locked():
            self.root, self.targets, self.snapshot, self.timestamp = self._load()
            return self._publish(package)

    def sign(self, role: str) -> None:
        """Bump `role` (targets, snapshot or timestamp) and every role below it, and write them."""
        with self._locked():
            self.root, self.targets, self.snapshot, self.timestamp = self._load()
            self._sign(role)

    def rotate(self, role: str) -> int:
        """Replace `role`'s key through a new root signed by the old root key and the new one.
        Returns the new root version. The roles signed by the new key are re-signed with it."""
        with self._locked():
            self.root, self.targets, self.snapshot, self.timestamp = self._load()
            return self._rotate(role)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One publisher at a time (a cron `sign` beside a `publish` would otherwise drop one of them)."""
        os.makedirs(self.path, exist_ok=True)
        path = os.path.join(self.path, ".publish.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PublishError(f"another publication holds {path}; try again when it is done") from None
            yield
        finally:
            os.close(fd)

    # -- the steps, under the lock -------------------------------------------------------------------

    def _publish(self, package: Package) -> Published:
        self._check_goes_up(package.manifest)
        for role in ("targets", "snapshot", "timestamp"):  # every key needed, before anything is written
            self.keys.signer(role, self.root.signed)
        target = TargetFile.from_data(package.target_path, package.tar, ["sha256"])
        m = package.manifest
        target.unrecognized_fields["custom"] = {
            "ringfence": {"name": m.name, "engine": m.engine, "version": m.version}
        }
        directory, _, base = package.target_path.rpartition("/")
        path = os.path.join(self.targets_dir, directory, f"{target.hashes['sha256']}.{base}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, package.tar, 0o644)
        self.targets.signed.targets[target.path] = target
        self._sign("targets")
        return Published(target.path, self.targets.signed.version, self.warnings())

    def _sign(self, role: str) -> None:
        if role == "targets":
            self._bump(self.targets, "targets")
            self._write_versioned(self.targets)
        if role in {"targets", "snapshot"}:
            self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
            self._bump(self.snapshot, "snapshot")
            self._write_versioned(self.snapshot)
        snapshot_bytes = self.snapshot.to_bytes(_JSON)
        self.timestamp.signed.snapshot_meta = MetaFile.from_data(
            self.snapshot.signed.version, snapshot_bytes, ["sha256"]
        )
        self._bump(self.timestamp, "timestamp")
        write_atomic(os.path.join(self.meta_dir, "timestamp.json"), self.timestamp.to_bytes(_JSON), 0o644)

    def _rotate(self, role: str) -> int:
        old_signer = self.keys.signer("root", self.root.signed)
        new_signer = self.keys.replace(role)
        root = self.root.signed
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(new_signer.public_key, role)
        root.version += 1
        root.expires = self.policy.expires("root", self.now)
        self.root.signatures.clear()
        self.root.sign(old_signer, append=True)
        if role == "root":
            self.root.sign(new_signer, append=True)
        data = self.root.to_bytes(_JSON)
        write_atomic(os.path.join(self.meta_dir, f"{root.version}.root.json"), data, 0o644)
        write_atomic(os.path.join(self.meta_dir, "root.json"), data, 0o644)
        if role != "root":
            self._sign(role)
        return root.version

    def warnings(self) -> list[str]:
        roles = {
            "root": self.root.signed.expires,
            "targets": self.targets.signed.expires,
            "snapshot": self.snapshot.signed.expires,
            "timestamp": self.timestamp.signed.expires,
        }
        return expiry_warnings(roles, self.policy, self.now)

    def published(self) -> list[Manifest]:
        found = (manifest_of(t) for t in self.targets.signed.targets.values())
        return [m for m in found if m is not None]

    # -- internals ---------------------------------------------------------------------------------

    def _check_goes_up(self, new: Manifest) -> None:
        for old in self.published():
            if old.engine == new.engine and version_key(new.version) <= version_key(old.version):
                raise PublishError(
                    f"{new.engine} {new.name} {new.version}: not above the published {old.name} "
                    f"{old.version}; versions only go up (publish {new.engine} with a higher version)"
                )

    def _bump(self, md: Metadata[Any], role: str) -> None:
        signer = self.keys.signer(role, self.root.signed)
        md.signed.version += 1
        md.signed.expires = self.policy.expires(role, self.now)
        md.signatures.clear()
        md.sign(signer)

    def _write_versioned(self, md: Metadata[Any]) -> None:
        name = f"{md.signed.version}.{md.signed.type}.json"
        write_atomic(os.path.join(self.meta_dir, name), md.to_bytes(_JSON), 0o644)

    def _create(self) -> None:
        try:
            with open(self.keys.root_path, "rb") as f:
                root_bytes = f.read()
            root: Metadata[Root] = Metadata.from_bytes(root_bytes)
        except (OSError, DeserializationError) as e:
            raise KeyStoreError(
                f"{self.keys.root_path}: no signed root to start the repository from: {e}"
            ) from None
        os.makedirs(self.meta_dir, exist_ok=True)
        write_atomic(os.path.join(self.meta_dir, "1.root.json"), root_bytes, 0o644)
        write_atomic(os.path.join(self.meta_dir, "root.json"), root_bytes, 0o644)
        self.root = root
        self.targets = Metadata(Targets())
        self.snapshot = Metadata(Snapshot())
        self.timestamp = Metadata(Timestamp())
        for md in (self.targets, self.snapshot, self.timestamp):
            md.signed.version = 0  # the first _sign() makes them version 1
        self._sign("targets")

    def _load(self) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        """The current metadata, each role checked against the root's keys (a repository tampered on
        disk, or one from another key set, is refused before anything is signed on top of it)."""
        try:
            root: Metadata[Root] = self._read("root.json")
            timestamp: Metadata[Timestamp] = self._read("timestamp.json")
            snapshot: Metadata[Snapshot] = self._read(
                f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
            )
            version = snapshot.signed.meta["targets.json"].version
            targets: Metadata[Targets] = self._read(f"{version}.targets.json")
            for md in (root, targets, snapshot, timestamp):
                root.verify_delegate(md.signed.type, md)
        except (RepositoryError, KeyError) as e:
            raise PublishError(f"{self.meta_dir}: the repository's metadata does not verify: {e}") from None
        return root, targets, snapshot, timestamp

    def _read(self, name: str) -> Any:
        path = os.path.join(self.meta_dir, name)
        try:
            return Metadata.from_file(path)
        except (OSError, DeserializationError) as e:
            raise PublishError(f"{path}: cannot read: {e}") from None
