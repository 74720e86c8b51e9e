"""Content benchmark: loading a 1,000,000-entry sha256 blocklist into the IOC engine's compact form,
against the same list as a Python set of bytes (what a naive engine holds) and against a 10,000-entry
list, each load in a fresh process so that its peak RSS is its own. The lists are generated on the fly
(nine in ten entries labelled, as in published lists) and deleted afterwards.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import table

REPO = str(Path(__file__).resolve().parent.parent)


def _write_list(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            label = "  generated\n" if i % 10 else "\n"
            f.write(hashlib.sha256(i.to_bytes(4, "little")).hexdigest() + label)


def _load_compact(path: str) -> tuple[int, int]:
    """(entries, bytes held) of the engine's own form."""
    from ringfence.engines.ioc import read_blocklist

    blocklist = read_blocklist(path, max_bytes=1 << 30).blocklist
    return len(blocklist), blocklist.nbytes


def _load_set(path: str) -> tuple[int, int]:
    """The naive form: one bytes object per digest in a set (labels left out, in its favour)."""
    digests: set[bytes] = set()
    with open(path, "rb") as f:
        for line in f:
            digests.add(bytes.fromhex(line.split(b"#", 1)[0].split()[0].decode()))
    return len(digests), sys.getsizeof(digests) + sum(sys.getsizeof(d) for d in digests)


def _child(mode: str, path: str) -> None:
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    n, held = {"compact": _load_compact, "set": _load_set, "none": lambda _: (0, 0)}[mode](path)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"entries": n, "seconds": took, "peak_kib": peak, "idle_kib": idle, "held": held}))


def _measure(mode: str, path: Path) -> dict[str, float]:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {REPO!r}); from bench.content_bench import "
            f"_child; _child({mode!r}, {str(path)!r})",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(r.stdout)
    return result


def run(quick: bool = False) -> str:
    big_n = 100_000 if quick else 1_000_000
    small_n = 10_000
    with tempfile.TemporaryDirectory(prefix="rf-bench-content-") as tmp:
        big, small = Path(tmp) / "big.txt", Path(tmp) / "small.txt"
        _write_list(big, big_n)
        _write_list(small, small_n)
        idle = _measure("none", small)
        rows_in = [
            (f"{small_n:,} entries, compact (baseline)", _measure("compact", small)),
            (f"{big_n:,} entries, Python set of bytes (baseline)", _measure("set", big)),
            (f"{big_n:,} entries, compact", _measure("compact", big)),
        ]
        size_mb = big.stat().st_size / 1e6
    base_small, base_set = rows_in[0][1], rows_in[1][1]
    rows = []
    for name, m in rows_in:
        extra_mb = (m["peak_kib"] - idle["peak_kib"]) / 1024
        rows.append(
            (
                name,
                f"{m['seconds']:.2f} s",
                f"{m['seconds'] / base_small['seconds']:.0f}x",
                f"{m['seconds'] / base_set['seconds']:.2f}x",
                f"{m['peak_kib'] / 1024:.0f} MB",
                f"{extra_mb:.0f} MB",
                f"{extra_mb / max(1e-9, (base_set['peak_kib'] - idle['peak_kib']) / 1024):.2f}x",
                f"{m['held'] / 1e6:.0f} MB",
                f"{m['held'] / base_set['held']:.2f}x",
            )
        )
    return table(
        f"Blocklist load (list of {size_mb:.0f} MB; process idle RSS {idle['peak_kib'] / 1024:.0f} MB; "
        "peak RSS of a fresh process per load)",
        (
            "load",
            "time",
            f"vs {small_n:,}",
            "vs set",
            "peak RSS",
            "over idle",
            "vs set",
            "held after load",
            "vs set",
        ),
        rows,
    )
