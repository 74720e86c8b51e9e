"""The publisher's key directory and the expiry policy of each role.

    KEYS/offline/root.pem, targets.pem     take this directory offline after use (0700, files 0600)
    KEYS/online/snapshot.pem, timestamp.pem   kept where `content publish` and `content sign` run
    KEYS/root.json                         the first signed root: the trust anchor every host starts from
    KEYS/*/retired/ROLE-KEYID.pem          keys replaced by `content keys rotate`, kept to sign the hand-over

Keys are ed25519 in PEM (PKCS#8, unencrypted: protect them with the directory and its medium). A key is
found by its key id in the root, so a wrong or stale directory is refused by name, never used to sign.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from ringfence._linux import write_atomic
from ringfence.content._errors import KeyStoreError
from ringfence.content._package import ROLES

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
ROOT_FILE = "root.json"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata is valid once signed, and how early to warn before it runs out."""

    valid_days: dict[str, float] = field(
        default_factory=lambda: {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
    )
    warn_days: dict[str, float] = field(
        default_factory=lambda: {"root": 30, "targets": 14, "snapshot": 2, "timestamp": 0.25}
    )

    def expires(self, role: str, now: datetime) -> datetime:
        return (now + timedelta(days=self.valid_days[role])).replace(microsecond=0)

    def with_days(self, overrides: dict[str, float]) -> ExpiryPolicy:
        for role, days in overrides.items():
            if role not in ROLES or not days > 0:
                raise KeyStoreError(
                    f"expiry {role}={days}: the role must be one of {', '.join(ROLES)}, days > 0"
                )
        return ExpiryPolicy({**self.valid_days, **overrides}, self.warn_days)


def expiry_warnings(roles: dict[str, datetime], policy: ExpiryPolicy, now: datetime) -> list[str]:
    """One line for each role whose metadata runs out within its warning time (or already has)."""
    out = []
    for role, expires in roles.items():
        left = expires - now
        if left <= timedelta(days=policy.warn_days.get(role, 0)):
            when = expires.strftime("%Y-%m-%d %H:%M UTC")
            state = "EXPIRED" if left.total_seconds() <= 0 else f"expires in {_human(left)}"
            out.append(f"{role} metadata {state} ({when}): {_remedy(role)}")
    return out


def _human(left: timedelta) -> str:
    hours = left.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.0f} days"


def _remedy(role: str) -> str:
    if role == "root":
        return "sign a new root with `ringfence content keys rotate root` (needs the offline keys)"
    if role == "targets":
        return "publish again (needs the offline targets key)"
    return "re-sign with `ringfence content sign` (online keys; run it from cron)"


class KeyStore:
    """The key directory. `init` creates it; the other methods read it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def key_path(self, role: str) -> str:
        return os.path.join(self.path, "offline" if role in OFFLINE_ROLES else "online", f"{role}.pem")

    @property
    def root_path(self) -> str:
        return os.path.join(self.path, ROOT_FILE)

    def init(self, policy: ExpiryPolicy, now: datetime) -> Metadata[Root]:
        """Make the four keys and a signed root (version 1). Refuses to touch an existing key directory."""
        if os.path.exists(self.path) and os.listdir(self.path):
            raise KeyStoreError(f"{self.path}: not empty; refusing to overwrite keys (use another directory)")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        root = Metadata(Root(expires=policy.expires("root", now), consistent_snapshot=True))
        for role, signer in signers.items():
            root.signed.add_key(signer.public_key, role)
        root.sign(signers["root"])
        for role, signer in signers.items():
            self._write_key(self.key_path(role), signer)
        write_atomic(self.root_path, root.to_bytes(JSONSerializer(compact=False)), 0o644)
        return root

    def signer(self, role: str, root: Root) -> CryptoSigner:
        """The key that `root` trusts for `role`, from this directory (current or retired)."""
        wanted = set(root.roles[role].keyids)
        for path in self._candidates(role):
            signer = self._load(path)
            if signer.public_key.keyid in wanted:
                return signer
        where = os.path.dirname(self.key_path(role))
        hint = " (bring the offline directory back)" if role in OFFLINE_ROLES else ""
        raise KeyStoreError(f"{where}: no {role} key that the repository's root trusts{hint}")

    def replace(self, role: str) -> CryptoSigner:
        """A new key for `role`; the current one moves to retired/ first (so it can sign the hand-over)."""
        current = self.key_path(role)
        retired = os.path.join(os.path.dirname(current), "retired")
        os.makedirs(retired, mode=0o700, exist_ok=True)
        if os.path.exists(current):
            old = self._load(current)
            os.replace(current, os.path.join(retired, f"{role}-{old.public_key.keyid[:16]}.pem"))
        signer = CryptoSigner.generate_ed25519()
        self._write_key(current, signer)
        return signer

    def _candidates(self, role: str) -> Iterator[str]:
        current = self.key_path(role)
        if os.path.exists(current):
            yield current
        retired = os.path.join(os.path.dirname(current), "retired")
        if os.path.isdir(retired):
            yield from (
                os.path.join(retired, n) for n in sorted(os.listdir(retired)) if n.startswith(f"{role}-")
            )

    @staticmethod
    def _load(path: str) -> CryptoSigner:
        try:
            with open(path, "rb") as f:
                return CryptoSigner(load_pem_private_key(f.read(), password=None))
        except (OSError, ValueError, TypeError) as e:
            raise KeyStoreError(f"{path}: cannot load the key: {e}") from None

    @staticmethod
    def _write_key(path: str, signer: CryptoSigner) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o700)
        write_atomic(path, signer.private_bytes, 0o600)
