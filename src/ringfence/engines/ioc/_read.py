"""Reading a content file safely: opened non-blocking (a FIFO or a device at the path must not hang the
engine), a regular file only, never more than `max_bytes` (a file still growing is stopped there)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator

from ringfence.engines.ioc._issues import Issue, error

LineParser = Callable[[Iterable[bytes]], None]


def read_lines(path: str, source: str, *, max_bytes: int, issues: list[Issue], parse: LineParser) -> None:
    """Hand the file's lines (without their end of line) to `parse`, streaming: never the whole file in
    memory. Problems go to `issues`, named `source`."""
    fd = _open(path, source, max_bytes, issues)
    if fd is None:
        return
    try:
        with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as f:
            parse(_bounded_lines(f, max_bytes, source, issues))
    except OSError as e:
        issues.append(error(source, None, f"cannot read: {e.strerror}"))
    finally:
        os.close(fd)


def read_bytes(path: str, source: str, *, max_bytes: int, issues: list[Issue]) -> bytes | None:
    """The whole file (at most `max_bytes`), or None with the problem in `issues`."""
    fd = _open(path, source, max_bytes, issues)
    if fd is None:
        return None
    try:
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                issues.append(error(source, None, f"larger than the limit of {max_bytes} bytes"))
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        issues.append(error(source, None, f"cannot read: {e.strerror}"))
        return None
    finally:
        os.close(fd)


def _open(path: str, source: str, max_bytes: int, issues: list[Issue]) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        issues.append(error(source, None, f"cannot open: {e.strerror}"))
        return None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        issues.append(error(source, None, f"cannot read: {e.strerror}"))
        return None
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_size > max_bytes:
        problem = f"larger than the limit of {max_bytes} bytes"
    if problem is not None:
        os.close(fd)
        issues.append(error(source, None, problem))
        return None
    return fd


def _bounded_lines(
    lines: Iterable[bytes], max_bytes: int, source: str, issues: list[Issue]
) -> Iterator[bytes]:
    total = 0
    for raw in lines:
        total += len(raw)
        if total > max_bytes:
            issues.append(error(source, None, f"larger than the limit of {max_bytes} bytes"))
            return
        yield raw.rstrip(b"\r\n")
