"""fanotify sensors: exec/open permission events as AUTH requests, and file-system changes (FID mode).

    ExecAuthSensor   "exec-auth": FAN_OPEN_EXEC_PERM (+ FAN_OPEN_PERM) -> AuthRequest, verdict cache
    FileSensor       "file": create/delete/rename/modify/close-write/attrib -> FileActivity

Both raise SensorUnavailable from start() when the kernel refuses, naming the interface.
"""

from ringfence.sensors.fanotify._exec import ExecAuthSensor
from ringfence.sensors.fanotify._file import FileSensor

__all__ = ["ExecAuthSensor", "FileSensor"]
