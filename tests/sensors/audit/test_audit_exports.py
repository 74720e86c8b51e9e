"""The audit sensor's public surface stays small: a change to it is deliberate."""

from __future__ import annotations

import ringfence.sensors.audit as audit


def test_exported_names_are_pinned() -> None:
    assert sorted(audit.__all__) == [
        "AuditFeed",
        "AuditRequestError",
        "AuditSensor",
        "AuditSweep",
        "AuditTuning",
        "Baseline",
        "DEFAULT_BASELINE",
        "DEFAULT_OFF",
        "Mode",
        "SavedSettings",
        "SyscallGroup",
        "Watch",
        "list_rule_keys",
        "sweep_audit",
    ]
