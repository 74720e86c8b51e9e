"""Sinks for events and findings: OCSF JSON lines to rotating files, RFC 5424 to a syslog receiver."""

from ringfence.events import JsonlStatistics, SyslogStatistics
from ringfence.outputs._jsonl import JsonlSink, RotatingFile
from ringfence.outputs._rfc5424 import (
    DEFAULT_FACILITY,
    DEFAULT_MAX_BYTES,
    FACILITIES,
    MAX_MAX_BYTES,
    MIN_MAX_BYTES,
    SD_ID,
    SYSLOG_SEVERITY,
    Rfc5424Formatter,
    parse_facility,
)
from ringfence.outputs._syslog import SyslogAddress, SyslogAddressError, SyslogSink, parse_address

__all__ = [
    "DEFAULT_FACILITY",
    "DEFAULT_MAX_BYTES",
    "FACILITIES",
    "MAX_MAX_BYTES",
    "MIN_MAX_BYTES",
    "SD_ID",
    "SYSLOG_SEVERITY",
    "JsonlSink",
    "JsonlStatistics",
    "Rfc5424Formatter",
    "RotatingFile",
    "SyslogAddress",
    "SyslogAddressError",
    "SyslogSink",
    "SyslogStatistics",
    "parse_address",
    "parse_facility",
]
