"""A fleet's assignment through the real TUF client: the assigned version is fetched, and only it; a
version the signed repository does not list is refused however the control plane asks; a rollback to an
older signed version is allowed only as an assignment."""

from __future__ import annotations

from ringfence.content import TufContentUpdater, staged_versions


def test_the_assigned_version_is_fetched_not_the_newest(publisher, serve, host_factory):
    for version in ("1.0", "1.1", "1.2"):
        publisher.publish("ringfence.sigma", "linux", version)
    publisher.publish("ringfence.yara", "malware", "3.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    assigned = {"ringfence.sigma": "1.1"}
    updater = TufContentUpdater(host.config, assigned=lambda: assigned)

    report = updater.update()

    assert report.ok, report.problems
    assert [(s.engine, s.version) for s in report.staged] == [("ringfence.sigma", "1.1")]
    assert staged_versions(str(host.state_dir), "ringfence.sigma") == ["1.1"]
    assert staged_versions(str(host.state_dir), "ringfence.yara") == [], "not assigned: not fetched"


def test_an_unsigned_assignment_is_refused_and_nothing_changes(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    before = host.tree()
    assigned = {"ringfence.sigma": "9.9"}  # a compromised control plane names a version nobody signed

    report = TufContentUpdater(host.config, assigned=lambda: assigned).update()

    assert not report.ok and not report.staged
    assert "the fleet assigned 9.9, which the signed repository does not list: refused" in report.problems[0]
    assert host.tree() == before


def test_a_rollback_to_an_older_signed_version_is_fetched_only_when_assigned(publisher, serve, host_factory):
    publisher.publish("ringfence.sigma", "linux", "1.0")
    publisher.publish("ringfence.sigma", "linux", "2.0")
    server = serve(publisher.repo_dir)
    host = host_factory(server.url, publisher.keys.root_path)
    assert TufContentUpdater(host.config).update().ok  # the newest: 2.0
    assigned = {"ringfence.sigma": "1.0"}

    report = TufContentUpdater(host.config, assigned=lambda: assigned).update()

    assert report.ok, report.problems
    assert staged_versions(str(host.state_dir), "ringfence.sigma") == ["1.0", "2.0"]
