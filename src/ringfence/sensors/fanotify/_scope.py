"""What the two fanotify notification sensors (file events, close-write descriptors) share: which paths
they report, and how their counters become `SensorStatistics`."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from ringfence.events import HeaderStamper
from ringfence.sensors._base import SensorStatistics

log = logging.getLogger(__name__)


def stop_reader(reader: threading.Thread, fds: tuple[int, int, int], what: str) -> None:
    """Wake `reader` through the stop pipe (`fds` = group, stop read end, stop write end), wait for it,
    then close all three: the group's marks go with it, even if the reader would not stop."""
    group, stop_r, stop_w = fds
    os.write(stop_w, b"x")
    reader.join(timeout=10)
    if reader.is_alive():
        log.error("%s reader did not stop; closing its group anyway", what)
    for fd in (group, stop_r, stop_w):
        os.close(fd)


def as_prefix(path: str) -> str:
    """`path` with exactly one trailing slash, so "/a/b" is under "/a/" but "/a/bc" is not under "/a/b/"."""
    return path.rstrip("/") + "/"


def wanted(path: str, roots: tuple[str, ...], excluded: tuple[str, ...]) -> bool:
    """Whether `path` is under one of `roots` and none of `excluded` (both `as_prefix`ed)."""
    candidate = as_prefix(path)
    return candidate.startswith(roots) and not candidate.startswith(excluded)


def notification_statistics(
    name: str,
    *,
    running: bool,
    received: int,
    emitted: int,
    stamper: HeaderStamper,
    detail: dict[str, int],
    dropped: Iterable[str],
) -> SensorStatistics:
    """The sensor's statistics: `dropped` names the counters that are losses; decode and sink errors
    are its errors."""
    return SensorStatistics(
        name=name,
        running=running,
        received=received,
        emitted=emitted,
        dropped=sum(detail[k] for k in dropped),
        errors=detail["decode_errors"] + detail["sink_errors"],
        last_seq=stamper.last_seq,
        detail=detail,
    )
