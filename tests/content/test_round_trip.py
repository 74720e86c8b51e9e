"""Publish and update over a real loopback HTTP server: what a host stages is what was published."""

from __future__ import annotations

import fcntl
import io
import os
import tarfile
from datetime import timedelta

import pytest

from ringfence.content import (
    ExpiryPolicy,
    FakeContentUpdates,
    KeyStore,
    KeyStoreError,
    PublishError,
    UpdateReport,
    UpdateSchedule,
    make_server,
    staged_versions,
)
from ringfence.content._keys import utc_now
from tests.content.conftest import Publisher


def test_published_packages_are_staged_per_engine_newest_only(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    publisher.publish("ringfence.sigma", "linux", "1.2")
    publisher.publish("ringfence.yara", "malware", "2026.12.1")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)

    report = host.updater().update()

    assert report.ok, report.problems
    assert sorted((s.engine, s.version) for s in report.staged) == [
        ("ringfence.sigma", "1.2"),
        ("ringfence.yara", "2026.12.1"),
    ]
    staged = host.state_dir / "content-updates" / "ringfence.sigma" / "1.2"
    assert (staged / "rules" / "one.yml").read_bytes() == b"rule of linux 1.2\n"
    assert b'version = "1.2"' in (staged / "manifest.toml").read_bytes()
    assert staged_versions(str(host.state_dir), "ringfence.sigma") == ["1.2"]
    assert (host.active / "rules.yml").read_bytes() == b"the active rules\n"


def test_second_update_stages_only_the_new_version(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    assert host.updater().update().ok

    again = host.updater().update()
    assert again.ok and not again.staged and again.up_to_date == ["ringfence.sigma 1.0"]

    publisher.publish("ringfence.sigma", "linux", "1.1")
    newer = host.updater().update()
    assert newer.ok, newer.problems
    assert [s.version for s in newer.staged] == ["1.1"]
    assert staged_versions(str(host.state_dir), "ringfence.sigma") == ["1.0", "1.1"]


def test_package_tar_is_the_same_whoever_packs_it(publisher):
    one = publisher.package("ringfence.ioc", "lists", "3")
    tar = tarfile.open(fileobj=io.BytesIO(one.tar))
    assert all(m.mtime == 0 and m.uid == 0 and m.isreg() for m in tar.getmembers())
    assert one.target_path == "content/ringfence.ioc/lists-3.tar"


def test_publish_of_lower_or_equal_version_refused(publisher):
    publisher.publish("ringfence.sigma", "linux", "1.10")
    for version in ("1.10", "1.10.0", "1.9", "0.99"):
        with pytest.raises(PublishError, match=r"not above the published linux 1\.10; versions only go up"):
            publisher.publish("ringfence.sigma", "linux", version)
    with pytest.raises(PublishError, match="versions only go up"):  # another name, same engine
        publisher.publish("ringfence.sigma", "other", "1.2")
    publisher.publish("ringfence.yara", "linux", "1.0")  # another engine has its own versions
    assert {(m.engine, m.version) for m in publisher.repository().published()} == {
        ("ringfence.sigma", "1.10"),
        ("ringfence.yara", "1.0"),
    }


def test_keys_init_twice_refuses_to_overwrite(publisher):
    before = {p: p.read_bytes() for p in (publisher.base / "keys").rglob("*") if p.is_file()}
    with pytest.raises(KeyStoreError, match="not empty; refusing to overwrite keys"):
        publisher.keys.init(ExpiryPolicy(), utc_now())
    after = {p: p.read_bytes() for p in (publisher.base / "keys").rglob("*") if p.is_file()}
    assert after == before


def test_offline_keys_are_private_and_apart(publisher):
    keys = publisher.base / "keys"
    assert sorted(p.name for p in (keys / "offline").iterdir()) == ["root.pem", "targets.pem"]
    assert sorted(p.name for p in (keys / "online").iterdir()) == ["snapshot.pem", "timestamp.pem"]
    for d in (keys, keys / "offline", keys / "online"):
        assert d.stat().st_mode & 0o777 == 0o700
    for f in [*(keys / "offline").iterdir(), *(keys / "online").iterdir()]:
        assert f.stat().st_mode & 0o777 == 0o600


def test_publish_without_the_offline_directory_refused(publisher):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    (publisher.base / "keys" / "offline").rename(publisher.base / "vault")
    with pytest.raises(KeyStoreError, match="no targets key that the repository's root trusts"):
        publisher.publish("ringfence.sigma", "linux", "1.1")
    publisher.repository().sign("timestamp")  # the online keys alone still re-sign the timestamp


def test_publish_with_another_key_set_refused(publisher, tmp_path):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    other = Publisher(tmp_path / "other")
    other.repo_dir = publisher.repo_dir
    with pytest.raises(KeyStoreError, match="no targets key that the repository's root trusts"):
        other.publish("ringfence.sigma", "linux", "1.1")


def test_expiry_warnings_before_each_role_runs_out(tmp_path, serve, host_factory):
    policy = ExpiryPolicy().with_days({"root": 10, "targets": 5})
    publisher = Publisher(tmp_path / "publisher", policy)
    repo = publisher.repository()
    published = repo.publish(publisher.package("ringfence.sigma", "linux", "1.0"))
    assert any(
        w.startswith("root metadata expires in 10 days") and "keys rotate root" in w
        for w in published.warnings
    )
    assert any(w.startswith("targets metadata expires in 5 days") for w in published.warnings)
    assert not any(w.startswith(("snapshot", "timestamp")) for w in published.warnings)

    later = publisher.repository(now=utc_now() + timedelta(hours=20))
    assert any(w.startswith("timestamp metadata expires in 4.0 hours") for w in later.warnings())

    server = serve(publisher.repo_dir)
    report = host_factory(server.url, publisher.keys.root_path).updater().update()
    assert report.ok
    assert any(w.startswith("root metadata expires in") for w in report.warnings)


def test_default_policy_warns_of_nothing_fresh(publisher):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    assert publisher.repository().warnings() == []


def test_bad_expiry_setting_refused():
    with pytest.raises(KeyStoreError, match="expiry bogus=3"):
        ExpiryPolicy().with_days({"bogus": 3})
    with pytest.raises(KeyStoreError, match="timestamp=0"):
        ExpiryPolicy().with_days({"timestamp": 0})


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotation_of_each_role_is_followed_by_hosts(publisher, serve, host_factory, role):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    assert host.updater().update().ok

    assert publisher.repository().rotate(role) == 2
    publisher.publish("ringfence.sigma", "linux", "1.1")
    report = host.updater().update()
    assert report.ok, report.problems
    assert [s.version for s in report.staged] == ["1.1"]
    assert (host.state_dir / "content-tuf" / "metadata" / "root_history" / "2.root.json").exists()

    late = host_factory(server.url, publisher.keys.root_path)  # a host that starts from root 1 today
    assert late.updater().update().ok


def test_fake_updates_replays_reports():
    bad = UpdateReport(ok=False, problems=["x: unreachable"])
    fake = FakeContentUpdates(bad, UpdateReport(ok=True))
    assert [fake.update().ok for _ in range(3)] == [False, True, True]
    assert fake.calls == 3


def test_expired_root_reported_on_publish_and_host_without_raising(tmp_path, serve, host_factory):
    publisher = Publisher.__new__(Publisher)
    publisher.base, publisher.policy = tmp_path / "publisher", ExpiryPolicy()
    publisher.keys = KeyStore(str(publisher.base / "keys"))
    publisher.repo_dir = publisher.base / "repo"
    publisher.keys.init(publisher.policy, utc_now() - timedelta(days=400))  # a root left to run out
    published = publisher.repository().publish(publisher.package("ringfence.sigma", "linux", "1.0"))
    assert any(w.startswith("root metadata EXPIRED") for w in published.warnings)

    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    report = host.updater().update()
    assert not report.ok and not report.staged
    assert (
        report.problems[0].startswith(f"{server.url}/metadata/") and "metadata expired" in report.problems[0]
    )
    assert "root" in report.problems[0]


def test_second_update_at_the_same_time_is_skipped(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    lock = host.state_dir / "content-tuf" / "update.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = host.updater().update()
    finally:
        os.close(fd)
    assert not report.ok and "another content update holds" in report.problems[0]
    assert not (host.state_dir / "content-updates").exists()
    assert host.updater().update().ok  # once the lock is free


def test_leftover_of_a_killed_stage_is_removed_and_never_a_version(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    leftover = host.state_dir / "content-updates" / "ringfence.sigma" / ".1.0.tmp-99999"
    leftover.mkdir(parents=True)
    (leftover / "half.yml").write_bytes(b"half")
    assert staged_versions(str(host.state_dir), "ringfence.sigma") == []
    assert host.updater().update().ok
    assert os.listdir(leftover.parent) == ["1.0"]


def test_serve_listens_on_ipv6_loopback(publisher):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = make_server(str(publisher.repo_dir), "[::1]:0")
    try:
        assert server.server_address[0] == "::1"
    finally:
        server.server_close()


def test_exported_names_are_pinned():
    import ringfence.content as content

    assert sorted(content.__all__) == [
        "ContentError",
        "ContentUpdates",
        "ExpiryPolicy",
        "FakeContentUpdates",
        "KeyStore",
        "KeyStoreError",
        "Manifest",
        "Package",
        "PackageError",
        "PublishError",
        "Published",
        "Repository",
        "Staged",
        "TufContentUpdater",
        "UpdateConfig",
        "UpdateError",
        "UpdateReport",
        "UpdateSchedule",
        "install_trusted_root",
        "load_package",
        "make_server",
        "staged_dir",
        "staged_versions",
        "version_key",
    ]
    assert all(hasattr(content, name) for name in content.__all__)


def test_schedule_updates_at_the_interval_and_backs_off_after_failures():
    bad, good = UpdateReport(ok=False, problems=["down"]), UpdateReport(ok=True)
    fake = FakeContentUpdates(bad, bad, bad, good, good)
    schedule = UpdateSchedule(interval_s=3600, retry_min_s=60, retry_max_s=200)
    assert schedule.run_if_due(fake, 0.0) is bad and schedule.next_due_s == 60
    assert schedule.run_if_due(fake, 59.0) is None and fake.calls == 1
    assert schedule.run_if_due(fake, 60.0) is bad and schedule.next_due_s == 180
    assert schedule.run_if_due(fake, 180.0) is bad and schedule.next_due_s == 380  # capped at 200
    assert schedule.failures == 3
    assert schedule.run_if_due(fake, 380.0) is good and schedule.next_due_s == 3980
    assert schedule.failures == 0 and schedule.last is good


def test_schedule_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="retry_min_s <= retry_max_s"):
        UpdateSchedule(retry_min_s=100, retry_max_s=10)
    with pytest.raises(ValueError, match="interval_s > 0"):
        UpdateSchedule(interval_s=0)


def test_second_publisher_at_the_same_time_refused(publisher):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    fd = os.open(publisher.repo_dir / ".publish.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(PublishError, match="another publication holds"):
            publisher.publish("ringfence.sigma", "linux", "1.1")
        with pytest.raises(PublishError, match="another publication holds"):
            publisher.repository().sign("timestamp")
    finally:
        os.close(fd)
    publisher.publish("ringfence.sigma", "linux", "1.1")


def test_each_publisher_step_starts_from_the_repository_on_disk(publisher):
    stale = publisher.repository()
    publisher.publish("ringfence.sigma", "linux", "1.0")  # through another Repository object
    stale.sign("timestamp")  # must not put back the timestamp from before the publication
    assert [m.version for m in publisher.repository().published()] == ["1.0"]
    assert stale.timestamp.signed.version == 3 and stale.timestamp.signed.snapshot_meta.version == 2


def test_update_into_an_unusable_state_dir_is_reported_not_raised():
    from ringfence.content import TufContentUpdater, UpdateConfig

    report = TufContentUpdater(UpdateConfig(url="http://127.0.0.1:1", state_dir="/dev/null/state")).update()
    assert not report.ok and "cannot open the update lock" in report.problems[0]


def test_unexpected_failure_in_an_update_is_reported_not_raised(publisher, serve, host_factory, monkeypatch):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    host = host_factory(serve(publisher.repo_dir).url, publisher.keys.root_path)
    updater = host.updater()

    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(updater, "_update", broken)
    report = updater.update()
    assert not report.ok and report.problems == ["unexpected RuntimeError: a bug"]
