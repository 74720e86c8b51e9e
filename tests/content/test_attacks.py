"""Each attack TUF defends against, made over a real loopback HTTP server: every one is refused with a
clear line, and the host's staged and active content stay exactly as they were."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from ringfence.content._keys import utc_now
from tests.content.conftest import Host, Publisher, endless

SIGMA = "ringfence.sigma"


@pytest.fixture
def updated(publisher, serve, host_factory):
    """A host that has staged sigma 1.0, then a publication of 1.1 it has not fetched yet."""
    publisher.publish(SIGMA, "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    first = host.updater().update()
    assert first.ok and [s.version for s in first.staged] == ["1.0"], first.problems
    publisher.publish(SIGMA, "linux", "1.1")
    return publisher, server, host


def refused(host: Host, *expected: str, **kw) -> str:
    before = host.tree()
    report = host.updater(**kw).update()
    assert not report.ok and not report.staged, report
    text = " | ".join(report.problems)
    for part in expected:
        assert part in text, text
    assert len(report.problems) == 1 and "\n" not in text and "Traceback" not in text
    assert host.tree() == before  # staged and active content untouched
    assert (host.active / "rules.yml").read_bytes() == b"the active rules\n"
    return text


def target_url(publisher: Publisher, version: str) -> tuple[str, Path]:
    [path] = (publisher.repo_dir / "targets" / "content" / SIGMA).glob(f"*.linux-{version}.tar")
    return f"/targets/content/{SIGMA}/{path.name}", path


def resigned(data: bytes, signer: CryptoSigner, version_bump: int = 1) -> bytes:
    md = Metadata.from_bytes(data)
    md.signed.version += version_bump
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes()


def test_rollback_to_older_timestamp_refused(updated):
    publisher, server, host = updated
    old = publisher.metadata("timestamp.json")
    publisher.publish(SIGMA, "linux", "1.2")
    assert host.updater().update().ok  # the host now trusts the newest timestamp
    publisher.publish(SIGMA, "linux", "1.3")
    server.overrides["/metadata/timestamp.json"] = old
    text = refused(host, "rollback", "timestamp")
    assert "version" in text


def test_downgrade_of_content_below_staged_refused(updated):
    _, _, host = updated
    (host.state_dir / "content-updates" / SIGMA / "9.0").mkdir()
    refused(host, f"{SIGMA}: the repository's newest version 1.1 is below the staged 9.0: refused")


def test_freeze_with_expired_timestamp_refused(publisher, serve, host_factory):
    publisher.publish(SIGMA, "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    assert host.updater().update().ok
    publisher.publish(SIGMA, "linux", "1.1", now=utc_now() - timedelta(days=3))  # a frozen mirror's view
    refused(host, "metadata expired", "timestamp")


def test_mix_and_match_snapshot_from_another_publication_refused(updated):
    publisher, server, host = updated
    server.overrides["/metadata/3.snapshot.json"] = publisher.metadata("2.snapshot.json")
    refused(host, "does not match the signed metadata", "snapshot")


def test_mix_and_match_targets_from_another_publication_refused(updated):
    publisher, server, host = updated
    server.overrides["/metadata/3.targets.json"] = publisher.metadata("2.targets.json")
    refused(host, "metadata version", "targets")


def test_tampered_target_refused(updated):
    publisher, server, host = updated
    url, path = target_url(publisher, "1.1")
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # same length, one byte changed
    server.overrides[url] = bytes(data)
    refused(host, "tampered", "linux-1.1.tar")


def test_tampered_target_on_the_server_disk_refused(updated):
    publisher, _, host = updated
    _, path = target_url(publisher, "1.1")
    path.write_bytes(path.read_bytes().replace(b"rule of linux 1.1", b"rule of evil! 1.1"))
    refused(host, "tampered")


def test_timestamp_signed_by_the_wrong_key_refused(updated):
    publisher, server, host = updated
    forged = resigned(publisher.metadata("timestamp.json"), CryptoSigner.generate_ed25519())
    server.overrides["/metadata/timestamp.json"] = forged
    refused(host, "signature check failed", "timestamp")


def test_repository_of_another_key_set_refused(publisher, tmp_path, serve, host_factory):
    publisher.publish(SIGMA, "linux", "1.0")
    impostor = Publisher(tmp_path / "impostor")
    impostor.publish(SIGMA, "linux", "6.6.6")
    server = serve(impostor.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    refused(host, "signature check failed")


def test_endless_metadata_response_refused(updated):
    _, server, host = updated
    server.overrides["/metadata/timestamp.json"] = endless()
    refused(host, "response longer than allowed", "16384")


def test_endless_root_response_refused(updated):
    _, server, host = updated
    server.overrides["/metadata/2.root.json"] = endless()
    refused(host, "response longer than allowed", "2.root.json")


def test_oversized_target_refused(updated):
    publisher, server, host = updated
    url, path = target_url(publisher, "1.1")
    server.overrides[url] = path.read_bytes() + b"\0" * (1 << 20)
    refused(host, "response longer than allowed", "linux-1.1.tar")


def test_target_over_the_host_limit_never_downloaded(updated):
    _, _, host = updated
    host.config = type(host.config)(
        url=host.config.url, state_dir=host.config.state_dir, package_max_bytes=100
    )
    refused(host, "bytes is over the limit of 100")


def test_endless_trickle_stopped_by_the_download_deadline(publisher, serve, host_factory):
    publisher.publish(SIGMA, "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(
        server.url, publisher.keys.root_path, timestamp_max_bytes=1 << 40, download_deadline_s=5.0
    )
    server.overrides["/metadata/timestamp.json"] = endless(chunk=b" " * 512)
    ticks = itertools.count()  # the fake clock: one second per look, however fast the bytes come
    refused(host, "download too slow or stalled", "not complete within 5 s", clock=lambda: float(next(ticks)))


@pytest.fixture
def release():
    """Set at teardown: lets the server's stalled handlers go (they wait on it, bounded)."""
    event = threading.Event()
    yield event
    event.set()


def stall(release, headers_first):
    def answer(handler):
        if headers_first:
            handler.send_response(200)
            handler.end_headers()
            handler.wfile.write(b"{")
            handler.wfile.flush()
        release.wait(60)

    return answer


@pytest.mark.parametrize(
    ("headers_first", "why"), [(True, "stalled for 0.3 s"), (False, "no answer within 0.3 s")]
)
def test_stalled_server_refused_at_the_socket_timeout(
    publisher, serve, host_factory, release, headers_first, why
):
    publisher.publish(SIGMA, "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path, socket_timeout_s=0.3)
    server.overrides["/metadata/timestamp.json"] = stall(release, headers_first)
    refused(host, "download too slow or stalled", why)


def test_compromised_online_key_after_rotation_refused(updated, host_factory):
    publisher, server, host = updated
    repo = publisher.repository()
    stolen = publisher.keys.signer("timestamp", repo.root.signed)
    assert repo.rotate("timestamp") == 2
    assert host.updater().update().ok  # the host moves to root 2 and the new timestamp key

    forged = resigned(publisher.metadata("timestamp.json"), stolen, version_bump=5)
    server.overrides["/metadata/timestamp.json"] = forged
    publisher.publish(SIGMA, "linux", "1.2")
    refused(host, "signature check failed", "timestamp")

    fresh = host_factory(server.url, publisher.keys.root_path)  # starts from root 1, which trusted it
    refused(fresh, "signature check failed", "timestamp")
    history = fresh.state_dir / "content-tuf" / "metadata" / "root_history"
    assert sorted(p.name for p in history.iterdir()) == ["1.root.json", "2.root.json"]


def test_rotated_root_signed_by_the_old_root_only_refused(updated):
    """A new root must be signed by its own keys too: the old root alone cannot hand trust to a key
    nobody holds (or an attacker's)."""
    publisher, server, host = updated
    repo = publisher.repository()
    old_root = publisher.keys.signer("root", repo.root.signed)
    md = Metadata.from_bytes(publisher.metadata("root.json"))
    attacker = CryptoSigner.generate_ed25519()
    for keyid in list(md.signed.roles["root"].keyids):
        md.signed.revoke_key(keyid, "root")
    md.signed.add_key(attacker.public_key, "root")
    md.signed.version = 2
    md.signatures.clear()
    md.sign(old_root)
    server.overrides["/metadata/2.root.json"] = md.to_bytes()
    refused(host, "signature check failed", "root")


def test_unreachable_repository_reported_not_raised(updated):
    _, server, host = updated
    server.shutdown()
    server.server_close()
    refused(host, "cannot connect")


def test_http_errors_reported_one_line(updated):
    publisher, server, host = updated
    url, _ = target_url(publisher, "1.1")

    def forbidden(handler):
        handler.send_error(500)

    server.overrides[url] = forbidden
    refused(host, "HTTP error", "HTTP 500")


def test_garbage_metadata_refused(updated):
    _, server, host = updated
    server.overrides["/metadata/timestamp.json"] = json.dumps({"signed": "junk"}).encode()
    refused(host, "timestamp")
