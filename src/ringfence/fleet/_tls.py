"""TLS for the fleet: the server's certificate and key checked before it serves, the host's trust.

    check_server_files(cert, key)   raises ServerError naming the file: missing, unreadable, not PEM,
                                    an encrypted key, or a key that is not the certificate's
    client_context(ca_file)         the SSLContext the host's HTTP client verifies the server with:
                                    `ca_file`'s CAs, or the system's for ""; raises TrustError
    untrusted(exc)                  the certificate-verification error somewhere under an httpx error

Pure checks and constructors: the only I/O is reading the files named.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ringfence.fleet._errors import ServerError, TrustError


def check_server_files(cert: str, key: str) -> None:
    """What uvicorn would load, loaded here first so that each failure is one line naming its file."""
    if bool(cert) != bool(key):
        raise ServerError("--tls-cert and --tls-key: give both (or neither, for plain HTTP)")
    cert_pem, key_pem = _read("--tls-cert", cert), _read("--tls-key", key)
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise ServerError(f"--tls-cert {cert}: not a PEM certificate") from e
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as e:
        raise ServerError(f"--tls-key {key}: the key is encrypted; give an unencrypted one (0600)") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ServerError(f"--tls-key {key}: not a PEM private key") from e
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ServerError(f"--tls-key {key}: not the key of --tls-cert {cert} ({e.reason})") from e


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ServerError(f"{option} {path}: {e.strerror}") from e


def client_context(ca_file: str) -> ssl.SSLContext:
    """Verifies the server's certificate and name against `ca_file`, or the system's CAs when it is empty."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except ssl.SSLError as e:  # an OSError too: first
        raise TrustError(f"CA file {ca_file}: not PEM certificates ({e.reason})") from e
    except OSError as e:
        raise TrustError(f"CA file {ca_file}: {e.strerror}") from e


def untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The verification failure that caused `exc` (httpx keeps it as the cause or context), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
