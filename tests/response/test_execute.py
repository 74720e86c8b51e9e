"""execute(): brokered requests from extensions, incomplete ones refused and logged, never raised."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import ringfence.response
from ringfence.events import ActionKind, ActionRequest
from ringfence.response import ResponseConfig, ResponseExecutor
from ringfence.sensors.process import ProcessTable


@pytest.fixture
def ex(tmp_path: Path) -> ResponseExecutor:
    return ResponseExecutor(ResponseConfig(state_dir=str(tmp_path / "state")))


@pytest.mark.parametrize(
    "request_",
    [
        ActionRequest(kind=ActionKind.KILL, pid=12345, requested_by="ext"),
        ActionRequest(kind=ActionKind.KILL, start_time_ns=1, requested_by="ext"),
        ActionRequest(kind=ActionKind.QUARANTINE, requested_by="ext"),
    ],
)
def test_incomplete_request_refused_and_logged(ex: ResponseExecutor, request_: ActionRequest) -> None:
    result = ex.execute(request_)
    assert (result.kind, result.ok) == (request_.kind, False)
    assert "needs" in result.message
    [record] = ex.action_log()
    assert (record.action, record.ok, record.requested_by) == (request_.kind.value, False, "ext")


@pytest.mark.kernel
def test_kill_request_executed(ex: ResponseExecutor) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        start = ProcessTable().resolve(proc.pid).start_time_ns  # as an extension gets it from an event
        result = ex.execute(ActionRequest(kind=ActionKind.KILL, pid=proc.pid, start_time_ns=start))
        assert result.ok, result.message
        assert proc.poll() == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.kernel
def test_quarantine_request_executed(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = tmp_path / "evil"
    path.write_bytes(b"x")
    result = ex.execute(ActionRequest(kind=ActionKind.QUARANTINE, path=str(path), requested_by="yara"))
    assert result.ok, result.message
    assert [e.requested_by for e in ex.quarantine_list()] == ["yara"]


def test_action_log_limit_keeps_the_newest(ex: ResponseExecutor) -> None:
    for _ in range(5):
        ex.execute(ActionRequest(kind=ActionKind.QUARANTINE, reason="r"))
    assert len(ex.action_log(limit=2)) == 2
    assert ex.action_log(limit=0) == []


def test_torn_last_log_line_skipped_not_fatal(tmp_path: Path, ex: ResponseExecutor) -> None:
    ex.execute(ActionRequest(kind=ActionKind.QUARANTINE))
    with (tmp_path / "state" / "actions.jsonl").open("ab") as f:
        f.write(b'{"time_ns": 1, "act')
    assert len(ex.action_log()) == 1


def test_exported_names_pinned() -> None:
    assert sorted(ringfence.response.__all__) == sorted(
        [
            "DEFAULT_SCOPE",
            "ISOLATION_TABLE",
            "ActionLogError",
            "ActionRecord",
            "ActionRefused",
            "ActionScope",
            "KillError",
            "NftError",
            "QuarantineEntry",
            "QuarantineError",
            "ResponseConfig",
            "ResponseConfigError",
            "ResponseError",
            "ResponseExecutor",
            "default_protected_paths",
            "parse_networks",
            "start_time_ns",
        ]
    )
