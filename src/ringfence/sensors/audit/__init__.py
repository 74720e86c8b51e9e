"""The audit sensor: execve and socket syscalls (connect, accept, bind, listen) from kernel audit, and
(as `AuditFeed` asks) every other audit event, logins and account changes, and the audit baseline.

Speaks NETLINK_AUDIT directly (no auditctl, no libaudit). `sweep_audit` removes what a crashed run left:
rules by key, and the settings recorded before its first take-over. Errors (the tree):
    SensorError                      (ringfence.sensors)
      SensorUnavailable              audit netlink missing or refused; the message says what the kernel said
      AuditRequestError              one audit request refused, with `.operation` and `.errno`
"""

from ringfence.sensors.audit._baseline import DEFAULT_BASELINE, DEFAULT_OFF, Baseline, SyscallGroup, Watch
from ringfence.sensors.audit._client import AuditRequestError
from ringfence.sensors.audit._feed import AuditFeed
from ringfence.sensors.audit._rules import list_rule_keys
from ringfence.sensors.audit._saved import AuditSweep, SavedSettings
from ringfence.sensors.audit._saved import sweep as sweep_audit
from ringfence.sensors.audit._sensor import AuditSensor, AuditTuning, Mode

__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_OFF",
    "AuditFeed",
    "AuditRequestError",
    "AuditSensor",
    "AuditSweep",
    "AuditTuning",
    "Baseline",
    "Mode",
    "SavedSettings",
    "SyscallGroup",
    "Watch",
    "list_rule_keys",
    "sweep_audit",
]
