"""The log sensor: lines of system log files (auth.log, secure, syslog, messages, kern.log) as LogEvents,
followed across rotation and truncation, with positions kept so that a restart neither repeats nor skips;
and the systemd journal through journalctl, with its cursor kept the same way."""

from ringfence.sensors.logs._journal import JournalConfig, JournalSensor, journald_runs
from ringfence.sensors.logs._positions import Position, load_positions, save_positions
from ringfence.sensors.logs._sensor import DEFAULT_LOG_FILES, LogSensor, LogSensorConfig
from ringfence.sensors.logs._syslog import SyslogLine, parse_syslog

__all__ = [
    "DEFAULT_LOG_FILES",
    "JournalConfig",
    "JournalSensor",
    "LogSensor",
    "LogSensorConfig",
    "Position",
    "SyslogLine",
    "journald_runs",
    "load_positions",
    "parse_syslog",
    "save_positions",
]
