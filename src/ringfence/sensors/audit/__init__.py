"""The audit sensor: execve and socket syscalls (connect, accept, bind, listen) from kernel audit.

Speaks NETLINK_AUDIT directly (no auditctl, no libaudit). Errors (the tree):
    SensorError                      (ringfence.sensors)
      SensorUnavailable              audit netlink missing or refused; the message says what the kernel said
      AuditRequestError              one audit request refused, with `.operation` and `.errno`
"""

from ringfence.sensors.audit._client import AuditRequestError
from ringfence.sensors.audit._rules import list_rule_keys
from ringfence.sensors.audit._sensor import AuditSensor, AuditTuning, Mode

__all__ = ["AuditRequestError", "AuditSensor", "AuditTuning", "Mode", "list_rule_keys"]
