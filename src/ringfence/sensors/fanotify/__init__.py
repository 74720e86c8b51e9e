"""fanotify sensors: exec/open permission events as AUTH requests, and file-system changes (FID mode).

    ExecAuthSensor   "exec-auth": FAN_OPEN_EXEC_PERM (+ FAN_OPEN_PERM) -> AuthRequest, verdict cache
    FileSensor       "file": create/delete/rename/modify/close-write/attrib -> FileActivity
    WrittenFileSensor  "close-write": files closed after writing under the scan paths -> FileWritten
                     with a read-only descriptor, for content scans (descriptor-mode group)

Both raise SensorUnavailable from start() when the kernel refuses, naming the interface.
"""

from ringfence.sensors.fanotify._exec import ExecAuthSensor
from ringfence.sensors.fanotify._file import FileSensor
from ringfence.sensors.fanotify._written import WrittenFileSensor

__all__ = ["ExecAuthSensor", "FileSensor", "WrittenFileSensor"]
