"""The process sensor (netlink process connector) and the process table cache it keeps current."""

from ringfence.sensors._proctable import (
    ExecImage,
    ProcessTable,
    ProcessTableConfig,
    ProcessTableStatistics,
    parse_container_id,
)
from ringfence.sensors.process._sensor import ProcessSensor, exit_code_of

__all__ = [
    "ExecImage",
    "ProcessSensor",
    "ProcessTable",
    "ProcessTableConfig",
    "ProcessTableStatistics",
    "exit_code_of",
    "parse_container_id",
]
