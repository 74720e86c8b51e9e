"""The host credential: an Ed25519 key pair made on the host at enrollment, and signed requests.

Why not an mTLS client certificate: the private key never leaves the host either way, but a signature
over each request survives a TLS-terminating load balancer in front of stateless API nodes (mTLS ends
there), needs no CA private key kept on the server, and a database dump holds only public keys.

A request carries four headers; the signature covers the method, the path, the host id, the time, a
nonce and the SHA-256 of the body, so a body cannot be swapped and a captured request replayed only
within the clock window, where the nonce (kept in the database) refuses it.

Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HOST_HEADER = "Ringfence-Host"
DATE_HEADER = "Ringfence-Date"
NONCE_HEADER = "Ringfence-Nonce"
SIGNATURE_HEADER = "Ringfence-Signature"
MAX_SKEW_S = 300  # a signed request's time may be this far from the server's clock, either way
TOKEN_PREFIX = "rfe_"  # noqa: S105 - a prefix, not a secret  # enrollment tokens start with it: easy to spot in a log or a paste


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """A token has 256 bits of entropy: a plain SHA-256 is a safe digest (a KDF guards guessable secrets)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_bytes(key: Ed25519PrivateKey) -> str:
    return _b64(key.private_bytes_raw())


def load_private(text: str) -> Ed25519PrivateKey:
    """Raises ValueError for anything but 32 base64-encoded bytes."""
    return Ed25519PrivateKey.from_private_bytes(_unb64(text, 32, "private key"))


def public_text(key: Ed25519PrivateKey) -> str:
    return _b64(key.public_key().public_bytes_raw())


def load_public(text: str) -> Ed25519PublicKey:
    """Raises ValueError for anything but 32 base64-encoded bytes."""
    return Ed25519PublicKey.from_public_bytes(_unb64(text, 32, "public key"))


def signed_message(*, method: str, path: str, host_id: str, date: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(("ringfence-v1", method.upper(), path, host_id, date, nonce, digest)).encode()


def sign_headers(
    key: Ed25519PrivateKey, host_id: str, *, method: str, path: str, body: bytes, now_s: int
) -> dict[str, str]:
    date, nonce = str(now_s), secrets.token_hex(16)
    signature = key.sign(
        signed_message(method=method, path=path, host_id=host_id, date=date, nonce=nonce, body=body)
    )
    return {
        HOST_HEADER: host_id,
        DATE_HEADER: date,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _b64(signature),
    }


def verify(public: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        public.verify(_unb64(signature, 64, "signature"), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what}: not base64") from e
    if len(raw) != size:
        raise ValueError(f"{what}: {len(raw)} bytes, want {size}")
    return raw
