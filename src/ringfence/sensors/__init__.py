"""Sensors: one subpackage per kernel interface, each turning kernel records into typed events."""

from ringfence.sensors._base import (
    AuditExec,
    AuditExecSink,
    AuthSink,
    EventSink,
    ProcessResolver,
    Sensor,
    SensorError,
    SensorStatistics,
    SensorUnavailable,
)

__all__ = [
    "AuditExec",
    "AuditExecSink",
    "AuthSink",
    "EventSink",
    "ProcessResolver",
    "Sensor",
    "SensorError",
    "SensorStatistics",
    "SensorUnavailable",
]
