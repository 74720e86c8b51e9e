"""TLS in the server itself: a real `ringfence server --tls-cert --tls-key` on loopback, a CA and a server
certificate made here; enrollment and heartbeats over https, a wrong CA refused and shown as the
fleet problem, plain http to the TLS port refused with a hint, bad certificate files one line each."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ringfence.agent._health import problems_of
from ringfence.events import AuthStatistics, BrokerStatistics, Heartbeat
from ringfence.fleet import EnrollError, FindingsSpool, TrustError, Uplink, UplinkConfig
from ringfence.fleet._client import FleetClient, credential_path, enroll, load_credential
from ringfence.fleet._tls import client_context
from tests.fleet.helpers import RINGFENCE, free_port, health, server_process


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


Key = ec.EllipticCurvePrivateKey


def _certificate(subject: str, key: Key, issuer: x509.Name, signer: Key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not
    cert: Path
    key: Path
    other_key: Path  # a key that is not the certificate's
    encrypted_key: Path


def _make_pki(d: Path) -> Pki:
    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Ringfence test CA", ca_key, _name("Ringfence test CA"), ca_key, ca=True)
    other = _certificate("Another CA", other_ca_key, _name("Another CA"), other_ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    files = {
        "ca.pem": _pem(ca),
        "other-ca.pem": _pem(other),
        "server.pem": _pem(server) + _pem(ca),
        "server.key": _key_pem(server_key),
        "other.key": _key_pem(ec.generate_private_key(ec.SECP256R1())),
        "encrypted.key": _key_pem(server_key, b"secret pass"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
        (d / name).chmod(0o600)
    return Pki(*(d / name for name in files))


@dataclass(frozen=True)
class TlsServer:
    url: str
    state: Path
    pki: Pki

    def token(self) -> str:
        r = _run("server", "token", "create", "--state-dir", str(self.state))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RINGFENCE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    top = tmp_path_factory.mktemp("tls")
    pki = _make_pki(top)
    state = top / "server"
    args = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    with server_process(state, *args, verify=client_context(str(pki.ca))) as url:
        yield TlsServer(url, state, pki)


def _beat() -> bytes:
    return msgspec.json.encode(Heartbeat(host_id="tls-1", sequence=1, sent_at_ns=1, health=health()))


def test_enroll_and_heartbeat_over_https(tls_server: TlsServer, tmp_path: Path) -> None:
    ca = str(tls_server.pki.ca)
    r = _run("enroll", tls_server.url, "--token", tls_server.token(), "--state-dir", str(tmp_path),
             "--ca-file", ca, "--hostname", "tls-1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f'ca_file = "{ca}"' in r.stdout
    credential = load_credential(credential_path(str(tmp_path)))
    client = FleetClient(tls_server.url, credential, ca_file=ca)
    try:
        answer = client.post("/heartbeat", _beat())
    finally:
        client.close()
    assert answer.status_code == 200, answer.text


def test_uplink_over_https_sends_heartbeats(tls_server: TlsServer, tmp_path: Path) -> None:
    _enroll(tls_server, tmp_path, "tls-2")
    up = _uplink(tls_server, tmp_path, str(tls_server.pki.ca))
    try:
        up.step()
        stats = up.statistics()
    finally:
        up.stop()
    assert stats.connected and stats.heartbeats_sent == 1 and not stats.problem, stats


def _enroll(server: TlsServer, state: Path, name: str) -> None:
    enroll(server.url, server.token(), str(state), hostname=name, ca_file=str(server.pki.ca))


def _uplink(server: TlsServer, state: Path, ca_file: str) -> Uplink:
    spool = FindingsSpool(str(state / "findings.jsonl"), str(state / "fleet-findings.offset"), keep_files=2)
    seq = iter(range(1, 1000))

    def beat() -> Heartbeat:
        return Heartbeat(host_id="tls", sequence=next(seq), sent_at_ns=1, health=health())

    return Uplink(server.url, credential_path(str(state)), beat, spool, UplinkConfig(ca_file=ca_file))


def _problems(up: Uplink) -> list[str]:
    broker = BrokerStatistics(kinds={}, auth=AuthStatistics(), subscribers=[])
    return problems_of(
        sensors=[], unavailable={}, broker=broker, extensions=[], drops=[], drop_window_s=60,
        fleet=up.statistics(),
    )  # fmt: skip


def test_wrong_ca_refused_at_enrollment(tls_server: TlsServer, tmp_path: Path) -> None:
    r = _run("enroll", tls_server.url, "--token", tls_server.token(), "--state-dir", str(tmp_path / "a"),
             "--ca-file", str(tls_server.pki.other_ca))  # fmt: skip
    assert r.returncode == 1 and "TLS certificate is not trusted" in r.stderr, r.stderr
    assert "ca_file" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "fleet-credential.json").exists()
    r = _run("enroll", tls_server.url, "--token", "t", "--state-dir", str(tmp_path / "b"))
    assert r.returncode == 1 and "not trusted" in r.stderr, "the system's CAs do not know the test CA"


def test_wrong_ca_is_the_fleet_problem_in_status(tls_server: TlsServer, tmp_path: Path) -> None:
    _enroll(tls_server, tmp_path, "tls-3")
    up = _uplink(tls_server, tmp_path, str(tls_server.pki.other_ca))
    try:
        wait = up.step()
        stats = up.statistics()
    finally:
        up.stop()
    assert wait > 0 and not stats.connected and stats.failures == 1
    assert "the server's TLS certificate is not trusted" in stats.problem
    assert any("not trusted" in p and "ca_file" in p for p in _problems(up))


def test_missing_or_bad_ca_file_is_the_fleet_problem(tls_server: TlsServer, tmp_path: Path) -> None:
    _enroll(tls_server, tmp_path, "tls-4")
    bad = ((tmp_path / "none.pem", "No such file"), (tls_server.pki.key, "not PEM certificates"))
    for ca_file, why in bad:
        up = _uplink(tls_server, tmp_path, str(ca_file))
        try:
            up.step()
            assert f"CA file {ca_file}: {why}" in up.statistics().problem
            assert _problems(up)
        finally:
            up.stop()
    with pytest.raises(TrustError, match="No such file"):
        client_context(str(tmp_path / "none.pem"))
    with pytest.raises(EnrollError, match=r"enroll: CA file .*none\.pem: No such file"):
        enroll(tls_server.url, "t", str(tmp_path / "x"), ca_file=str(tmp_path / "none.pem"))


def test_plain_http_to_the_tls_port_fails_clearly(tls_server: TlsServer, tmp_path: Path) -> None:
    plain = tls_server.url.replace("https://", "http://")
    r = _run("enroll", plain, "--token", tls_server.token(), "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "no answer" in r.stderr and "only https://" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "fleet-credential.json").exists()


def test_bad_tls_files_are_one_line_and_exit_1(tls_server: TlsServer, tmp_path: Path) -> None:
    pki = tls_server.pki
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello\n")
    other, encrypted = str(pki.other_key), str(pki.encrypted_key)
    cases = [
        (("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(pki.key)), "none.pem: No such file"),
        (("--tls-cert", str(tmp_path), "--tls-key", str(pki.key)), f"--tls-cert {tmp_path}: Is a directory"),
        (("--tls-cert", str(not_pem), "--tls-key", str(pki.key)), "junk.pem: not a PEM certificate"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(not_pem)), "junk.pem: not a PEM private key"),
        (("--tls-cert", str(pki.cert), "--tls-key", other), "other.key: not the key of --tls-cert"),
        (("--tls-cert", str(pki.cert), "--tls-key", encrypted), "encrypted.key: the key is encrypted"),
        (("--tls-cert", str(pki.cert)), "give both"),
        (("--tls-key", str(pki.key)), "give both"),
    ]  # fmt: skip
    for args, message in cases:
        r = _run("server", "--state-dir", str(tmp_path / "s"), "--listen", f"127.0.0.1:{free_port()}", *args)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "secret" not in r.stderr
