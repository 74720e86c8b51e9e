"""`ringfence fleet simulate`: run a scenario, print the rollout beside the all-at-once baseline.

cli.py builds the parser (it must not import numpy for every command) and calls `run` here.
"""

from __future__ import annotations

import argparse
import sys

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ringfence.fleet._simulate import SimConfig, SimResult, simulate


def run(args: argparse.Namespace) -> int:
    try:
        cfg = SimConfig(hosts=args.hosts, scenario=args.scenario, seed=args.seed)
    except ValueError as e:
        sys.stderr.write(f"ringfence fleet simulate: {e}\n")
        return 2
    err = Console(stderr=True)
    total = sum(r.bake_s for r in cfg.plan.rings) + 60
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"{cfg.scenario}, {cfg.hosts:,} hosts", total=total, state="")
        result = simulate(cfg, lambda now, state: bar.update(task, completed=now, state=state))
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        Console().print(render(result))
    return 0


def render(r: SimResult) -> Table:
    base = r.all_at_once
    t = Table(title=f"{r.scenario} on {r.hosts:,} hosts (seed {r.seed}): rollout {r.phase}")
    t.add_column("")
    t.add_column("ring rollout", justify="right")
    t.add_column("all at once", justify="right")
    halt = f"{r.time_to_halt_s:.0f} s" if r.time_to_halt_s is not None else "-"
    for name, ours, theirs in (
        ("hosts that ran the release", f"{r.exposed_hosts:,}", f"{base.exposed_hosts:,}"),
        ("of them hurt by it", f"{r.affected_hosts:,}", f"{base.affected_hosts:,}"),
        ("halted", "yes" if r.halted else "no", "no"),
        ("time to halt", halt, "-"),
        ("ring reached", f"{r.ring_reached} ({r.ring_fraction:.2%})", "everybody"),
        ("hosts needing manual recovery", f"{r.manual_recovery_hosts:,}", f"{base.manual_recovery_hosts:,}"),
    ):
        t.add_row(name, ours, theirs)
    t.caption = f"{r.simulated_s:.0f} simulated s; last decision: {r.decisions[-1]['reason']}"
    return t
