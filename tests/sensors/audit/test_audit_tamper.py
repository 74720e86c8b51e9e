"""Someone else switching audit off under the sensor: its records just stop, so the sensor must say so.

A root process can delete the sensor's rules (`auditctl -D`), disable audit (`auditctl -e 0`) or take the
audit daemon role; without a check, `status` stayed healthy while no exec or network record arrived."""

from __future__ import annotations

import pytest

from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._client import AuditClient

pytestmark = pytest.mark.kernel


def _problem(running) -> str:
    return running.sensor.statistics().problem


def test_deleted_rules_are_a_problem(make_sensor, control: AuditClient, key: str) -> None:
    running = make_sensor()
    running.sensor.start()
    assert _problem(running) == ""
    for rule in control.list_rules():
        if any(k.partition(":")[0] == key for k in rule.keys):
            control.delete_rule(rule.raw)
    assert "were deleted" in _problem(running)


def test_disabled_audit_is_a_problem(make_sensor, control: AuditClient) -> None:
    running = make_sensor()
    running.sensor.start()
    if control.status().enabled == 2:
        pytest.skip("audit configuration is locked")
    control.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_ENABLED, enabled=0))
    try:
        assert "audit was disabled" in _problem(running)
    finally:
        control.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_ENABLED, enabled=1))
    assert _problem(running) == ""


def test_daemon_role_taken_away_is_a_problem(make_sensor, control: AuditClient) -> None:
    running = make_sensor()
    running.sensor.start()
    if running.sensor.statistics().detail["mode_daemon"] != 1:
        pytest.skip("another audit daemon runs here: the sensor reads the multicast group")
    control.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_PID, pid=0))  # as a rival's registration would
    assert "audit daemon role was taken" in _problem(running)
