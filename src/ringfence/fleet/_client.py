"""The host's side of the API: enrollment, the credential file, and signed requests.

    enroll(url, token, state_dir)     -> Credential, written to STATE_DIR/fleet-credential.json
    load_credential(path)             -> Credential; raises CredentialError
    FleetClient(credential).post(...) -> httpx.Response; raises Unreachable when no answer came
                                         (Untrusted: the server's certificate failed verification)

An https:// server is verified against `ca_file` (`[fleet] ca_file`, `enroll --ca-file`), or the
system's CAs when it is empty (_tls.py).

The credential file holds the host's Ed25519 private key: written root-only (0600) to a temp file in
the same directory, fsynced, then renamed over the old one, so it is never seen half-written.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable

import httpx
import msgspec

from ringfence.fleet._auth import load_private, new_key, private_bytes, public_text, sign_headers
from ringfence.fleet._errors import CredentialError, EnrollError, FleetError, TrustError
from ringfence.fleet._tls import client_context, untrusted

CREDENTIAL_FILE = "fleet-credential.json"
API = "/api/v1"


class Credential(msgspec.Struct, forbid_unknown_fields=True):
    url: str  # the server it was issued by
    host_id: str
    private_key: str  # Ed25519, base64; never leaves this host
    enrolled_at_ns: int


class Unreachable(FleetError):
    """No HTTP answer: connection refused or reset, DNS, timeout."""


class Untrusted(Unreachable):
    """The TLS handshake failed on the server's certificate: a wrong CA file, or the wrong server."""


def http_client(ca_file: str, timeout_s: float) -> httpx.Client:
    """The host's HTTP client: verifies an https:// server against `ca_file` (empty: the system's CAs).
    Raises TrustError for a CA file that is missing, unreadable or not PEM."""
    return httpx.Client(timeout=timeout_s, verify=client_context(ca_file))


def no_answer(url: str, e: httpx.HTTPError) -> str:
    """Why a request to `url` got no answer, in a line, with what to do for the two TLS mistakes."""
    bad = untrusted(e)
    if bad is not None:
        return (
            f"{url}: the server's TLS certificate is not trusted ({bad.verify_message}): "
            "check [fleet] ca_file (enroll --ca-file) and the URL's host name"
        )
    text = f"{url}: {type(e).__name__}: {e}"
    if url.startswith("http://") and isinstance(e, httpx.RemoteProtocolError | httpx.ReadError):
        text += " (a server that speaks TLS answers only https://)"
    return text


def check_url(url: str) -> str:
    """`url` without a trailing slash. Raises ValueError unless http:// or https:// with a host."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def credential_path(state_dir: str) -> str:
    return os.path.join(state_dir, CREDENTIAL_FILE)


def save_credential(path: str, credential: Credential) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o711, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fleet-credential-", dir=directory)  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(credential) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_credential(path: str) -> Credential:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(64 << 10)
    except FileNotFoundError as e:
        raise CredentialError(f"{path}: not enrolled (ringfence enroll URL --token TOKEN)") from e
    except OSError as e:
        raise CredentialError(f"{path}: {e.strerror}") from e
    if st.st_mode & 0o077:
        raise CredentialError(f"{path}: readable by others (mode {st.st_mode & 0o777:o}); must be 0600")
    try:
        credential = msgspec.json.decode(data, type=Credential)
        load_private(credential.private_key)
    except (msgspec.DecodeError, ValueError) as e:
        raise CredentialError(f"{path}: not a fleet credential: {e}") from e
    return credential


def enroll(
    url: str,
    token: str,
    state_dir: str,
    *,
    hostname: str | None = None,
    http: httpx.Client | None = None,
    timeout_s: float = 30.0,
    ca_file: str = "",
) -> Credential:
    """Make a key pair, trade `token` for a host id, store the credential. Raises EnrollError."""
    try:
        base = check_url(url)
    except ValueError as e:
        raise EnrollError(f"enroll: URL: {e}") from e
    key = new_key()
    body = {"token": token, "hostname": hostname or socket.gethostname(), "public_key": public_text(key)}
    try:
        client = http or http_client(ca_file, timeout_s)
    except TrustError as e:
        raise EnrollError(f"enroll: {e}") from e
    try:
        r = client.post(f"{base}{API}/enroll", json=body)
    except httpx.HTTPError as e:
        raise EnrollError(f"enroll: no answer: {no_answer(base, e)}") from e
    finally:
        if http is None:
            client.close()
    if r.status_code != 201:
        raise EnrollError(f"enroll: {base} refused: HTTP {r.status_code}: {_detail(r)}")
    try:
        host_id = msgspec.json.decode(r.content, type=dict[str, str])["host_id"]
    except (msgspec.DecodeError, KeyError) as e:
        raise EnrollError(f"enroll: {base}: an answer that is not an enrollment: {r.text[:200]!r}") from e
    credential = Credential(
        url=base, host_id=host_id, private_key=private_bytes(key), enrolled_at_ns=time.time_ns()
    )
    path = credential_path(state_dir)
    try:
        save_credential(path, credential)
    except OSError as e:
        raise EnrollError(f"enroll: {path}: {e.strerror}: the host was enrolled but its key is lost") from e
    return credential


def _detail(r: httpx.Response) -> str:
    try:
        return str(msgspec.json.decode(r.content, type=dict[str, object])["detail"])
    except (msgspec.DecodeError, KeyError):
        return r.text[:200]


class FleetClient:
    """Signed requests to `url` for the enrolled host. `http` is injectable (tests hand a TestClient);
    without it the client verifies https:// against `ca_file` (raises TrustError for a bad one)."""

    def __init__(
        self,
        url: str,
        credential: Credential,
        *,
        http: httpx.Client | None = None,
        timeout_s: float = 10.0,
        wall_ns: Callable[[], int] = time.time_ns,
        ca_file: str = "",
    ) -> None:
        self.url = check_url(url)
        self.credential = credential
        self._key = load_private(credential.private_key)
        self._http = http or http_client(ca_file, timeout_s)
        self._own = http is None
        self._wall_ns = wall_ns

    def post(self, path: str, body: bytes) -> httpx.Response:
        """POST `body` (JSON) to API path `path` ("/heartbeat"), signed. Raises Unreachable."""
        api_path = f"{API}{path}"
        headers = sign_headers(
            self._key,
            self.credential.host_id,
            method="POST",
            path=api_path,
            body=body,
            now_s=self._wall_ns() // 1_000_000_000,
        )
        headers["Content-Type"] = "application/json"
        try:
            return self._http.post(f"{self.url}{api_path}", content=body, headers=headers)
        except httpx.HTTPError as e:
            why = no_answer(self.url, e)
            raise (Untrusted(why) if untrusted(e) else Unreachable(why)) from e

    def close(self) -> None:
        if self._own:
            self._http.close()


detail_of = _detail
