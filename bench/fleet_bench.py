"""Fleet benchmark: `ringfence fleet simulate` at 8,500,000 hosts (the fleet of 19 July 2024), each
scenario's ring rollout against the all-at-once push of the same release in the same run, and the good
release over many seeds (goal: completes without a halt in at least 99 of 100).

Each scenario runs in a fresh process so that its wall time and peak RSS are its own. No root needed:
    .venv/bin/python bench/fleet_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table

FULL_HOSTS = 8_500_000
SCENARIOS = ("crash-all", "crash-some", "deny-storm", "good")

_CHILD = """
import json, resource, sys, msgspec
from ringfence.fleet import SimConfig, simulate
r = simulate(SimConfig(hosts=int(sys.argv[1]), scenario=sys.argv[2], seed=int(sys.argv[3])))
doc = msgspec.to_builtins(r)
doc["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(doc))
"""


def _simulate(hosts: int, scenario: str, seed: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(hosts), scenario, str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout)


def run(quick: bool) -> str:
    hosts = FULL_HOSTS // 10 if quick else FULL_HOSTS
    rows = []
    for scenario in SCENARIOS:
        d = _simulate(hosts, scenario, 0)
        base = d["all_at_once"]
        halt = f"{d['time_to_halt_s']:.0f} s" if d["time_to_halt_s"] is not None else "-"
        rows.append((
            scenario, f"{d['exposed_hosts']:,}", f"{base['exposed_hosts']:,}",
            f"{d['exposed_hosts'] / base['exposed_hosts']:.2e}",
            f"{d['affected_hosts']:,} / {base['affected_hosts']:,}",
            d["phase"], halt, d["ring_reached"], d["manual_recovery_hosts"], f"{d['wall_s']:.1f}",
            f"{d['peak_mib']:.0f}",
        ))  # fmt: skip
    out = table(
        f"fleet simulate, {hosts:,} hosts, seed 0: ring rollout vs all at once (the same release, same run)",
        ("scenario", "exposed", "all-at-once", "ratio", "hurt (rings / all)", "outcome", "time to halt",
         "ring", "manual", "wall s", "peak MiB"),
        rows,
    )  # fmt: skip
    seeds = 3 if quick else 100
    runs = [_simulate(hosts, "good", seed) for seed in range(seeds)]
    done = sum(r["phase"] == "completed" for r in runs)
    halted = sum(r["halted"] for r in runs)
    walls = sorted(r["wall_s"] for r in runs)
    seed_rows = [(
        f"good x {seeds} seeds", f"{done} of {seeds}", halted, seeds - done - halted,
        f"{walls[len(walls) // 2]:.1f}", f"{walls[-1]:.1f}",
    )]  # fmt: skip
    out += "\n\n" + table(
        f"good release, {hosts:,} hosts: goal completes without a halt in >= 99 of 100",
        ("runs", "completed", "halted", "held", "median wall s", "max wall s"),
        seed_rows,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="850,000 hosts and 3 seeds: a smoke run")
    print(run(p.parse_args().quick), flush=True)


if __name__ == "__main__":
    main()
