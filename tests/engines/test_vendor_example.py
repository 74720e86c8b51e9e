"""The Acme vendor example (examples/vendor-extension), imported from its source tree, with a fake Context."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ringfence.events import FileActivityId, Header, ProcessActivityId
from ringfence.sdk import EventKind, FileActivity, ProcessActivity, ProcessRef, Severity

SRC = Path(__file__).resolve().parents[2] / "examples" / "vendor-extension" / "src"


@pytest.fixture
def acme() -> Iterator[ModuleType]:
    """`acme_ringfence` from the source tree, even when an installed copy exists."""
    saved = {name: mod for name, mod in sys.modules.items() if name.partition(".")[0] == "acme_ringfence"}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(SRC))
    try:
        module = importlib.import_module("acme_ringfence")
        assert Path(module.__file__ or "").is_relative_to(SRC)
        yield module
    finally:
        sys.path.remove(str(SRC))
        for name in [n for n in sys.modules if n.partition(".")[0] == "acme_ringfence"]:
            del sys.modules[name]
        sys.modules.update(saved)


def launch(
    header: Header, exe: str | None, activity: ProcessActivityId = ProcessActivityId.LAUNCH
) -> ProcessActivity:
    return ProcessActivity(header=header, activity=activity, process=ProcessRef(pid=77, exe=exe))


@pytest.fixture
def started(acme: ModuleType, make_ctx: Callable[..., Any]) -> tuple[Any, Any]:
    ext = acme.SuspiciousTmpExec()
    ctx = make_ctx()
    ext.setup(ctx)
    return ext, ctx


def test_manifest_declares_vendor_and_process_subscription(acme: ModuleType) -> None:
    manifest = acme.SuspiciousTmpExec.manifest
    assert manifest.id == "acme.suspicious-tmp-exec"
    assert manifest.vendor == "Acme Security"
    assert manifest.subscribes == frozenset({EventKind.PROCESS})
    assert manifest.auth is None


@pytest.mark.parametrize("exe", ["/tmp/x", "/var/tmp/a/b/payload", "/dev/shm/.hidden", "/tmp/gone (deleted)"])
def test_launch_from_temp_directory_raises_medium_finding(started: tuple[Any, Any], exe: str) -> None:
    ext, ctx = started
    event = launch(_header(), exe)
    ext.on_event(event)
    [finding] = ctx.findings
    assert finding.severity is Severity.MEDIUM
    assert finding.fields["rule"] == "acme.suspicious-tmp-exec"
    assert finding.fields["process"] == event.process
    assert finding.fields["file_path"] == exe
    assert finding.fields["related_event"] == event.header.id
    assert finding.title.startswith("Program launched from /")


@pytest.mark.parametrize("exe", ["/usr/bin/true", "/tmpfoo/x", "/home/u/tmp/x", "/tmp", None])
def test_launch_elsewhere_not_flagged(started: tuple[Any, Any], exe: str | None) -> None:
    ext, ctx = started
    ext.on_event(launch(_header(), exe))
    assert ctx.findings == []


def test_fork_and_file_events_not_flagged(started: tuple[Any, Any]) -> None:
    ext, ctx = started
    ext.on_event(launch(_header(), "/tmp/x", ProcessActivityId.FORK))
    ext.on_event(FileActivity(header=_header(), activity=FileActivityId.CREATE, path="/tmp/x"))
    assert ctx.findings == []


def test_directories_setting_replaces_defaults(acme: ModuleType, make_ctx: Callable[..., Any]) -> None:
    ext = acme.SuspiciousTmpExec()
    ctx = make_ctx(settings={"directories": ["/srv/upload"]})
    ext.setup(ctx)
    ext.on_event(launch(_header(), "/tmp/x"))
    ext.on_event(launch(_header(), "/srv/upload/run.sh"))
    assert [f.fields["file_path"] for f in ctx.findings] == ["/srv/upload/run.sh"]


def test_bad_settings_rejected_naming_every_key(acme: ModuleType, make_ctx: Callable[..., Any]) -> None:
    with pytest.raises(acme.SettingsError, match=r"unknown key 'dirs'.*directories: must be a list"):
        acme.SuspiciousTmpExec().setup(make_ctx(settings={"dirs": [], "directories": "/tmp"}))


def test_example_imports_nothing_of_ringfence_but_the_sdk() -> None:
    for source in (SRC / "acme_ringfence").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ringfence"):
                    assert name == "ringfence.sdk", f"{source.name} imports {name}"


def _header() -> Header:
    return Header(id="ev-1", time_ns=0, mono_ns=0, host="h", sensor="process", seq=1)
