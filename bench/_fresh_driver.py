"""One driver of the fresh-binary storm (bench/cost_bench.py): COUNT times, write a new copy of /bin/true
under DIR (a name never used before), then spawn it and wait; prints each exec's latency in ns (spawn to
exit, the copy's writing not counted), one a line. An exec that fails prints `fail ERRNO-OR-STATUS`.

python bench/_fresh_driver.py DIR COUNT

Standalone on purpose (no bench imports): four of these run at once as plain processes.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    directory, count = sys.argv[1], int(sys.argv[2])
    with open("/bin/true", "rb") as f:
        image = f.read()
    out: list[str] = []
    for i in range(count):
        path = os.path.join(directory, f"true-{os.getpid()}-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
        try:
            os.write(fd, image)
        finally:
            os.close(fd)
        t0 = time.perf_counter_ns()
        try:
            pid = os.posix_spawn(path, [path], {})
        except OSError as e:
            out.append(f"fail {e.errno}")
        else:
            _, status = os.waitpid(pid, 0)
            elapsed = time.perf_counter_ns() - t0
            code = os.waitstatus_to_exitcode(status)
            out.append(str(elapsed) if code == 0 else f"fail {code}")
        os.unlink(path)
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
