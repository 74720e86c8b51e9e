"""`ringfence server rollout ...` and `ringfence server place ...`: rollouts and placements from the shell,
on the same database as the servers (what the console does, as operator `cli`, in the audit log)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from ringfence.fleet._errors import FleetError

if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

PLAN_EXAMPLE = """\
# a rollout plan (TOML): rings from the smallest; fraction is the cumulative share of the fleet
max_wait_s = 3600
[[rings]]
fraction = 0.01
bake_s = 900
min_hosts = 20
min_reporting_hosts = 10
[[rings]]
fraction = 1.0
bake_s = 0
"""


def add_rollout_parsers(cmds: Commands, db_options: Any) -> None:
    rollout = cmds.add_parser(
        "rollout",
        help="roll a content release out in rings, gated on the hosts' health",
        description="A rollout assigns ENGINE's RELEASE to ring after ring of hosts (ranked by a hash of "
        "their id; `server place` fixes a host's or a group's ring or pins it to n-1), every other host "
        "to --lkg. Each server looks at its rollouts every --rollout-interval (one node at a time, under "
        "a lease): a critical regression halts it and assigns --lkg to every host, a gate that passes "
        "opens the next ring, an inconclusive one holds for an operator. Hosts take only versions the "
        "signed repository lists.",
    ).add_subparsers(dest="rollout_cmd", metavar="COMMAND", required=True)
    start = rollout.add_parser(
        "start",
        help="start rolling out RELEASE of ENGINE",
        description="Create a rollout; the next look (within a minute) assigns ring 0. --plan FILE is a "
        "TOML plan (rings, bakes, minimum hosts, gates); without it the default plan (0.01 %% canary, "
        "0.1, 1, 10, 50, 100 %%). Example plan:\n\n" + PLAN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument("engine", metavar="ENGINE", help="the engine id (the package manifest's engine)")
    start.add_argument("release", metavar="RELEASE", help="the content version to roll out")
    start.add_argument(
        "--lkg", required=True, metavar="VERSION", help="last-known-good: what a rollback runs"
    )
    start.add_argument("--plan", metavar="FILE", help="a TOML rollout plan (default: the built-in plan)")
    db_options(start)
    lst = rollout.add_parser("list", help="rollouts, newest first")
    db_options(lst)
    show = rollout.add_parser("show", help="one rollout: phase, ring, and every decision with its evidence")
    show.add_argument("rollout_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="the whole state as JSON")
    db_options(show)
    for action, what in (
        ("pause", "hold at the current ring (a critical regression still halts it)"),
        ("resume", "from a pause: bake on; from a hold: accept the ring and open the next"),
        ("abort", "add no more rings; hosts keep what they were assigned"),
        ("rollback", "assign last-known-good to every host, now"),
    ):
        p = rollout.add_parser(action, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument("rollout_id", metavar="ID")
        p.add_argument("--reason", default="", help="why (kept in the rollout's log and the audit log)")
        db_options(p)
    place = cmds.add_parser(
        "place",
        help="put a host or a group in a fixed ring, pin it to n-1, or put a host in a group",
        description="SUBJECT is host:HOST_ID or group:NAME. --ring K puts it in ring K of every rollout "
        "(0 = the canaries; past the plan's last ring = the last); --pin n-1 keeps it on last-known-good "
        "until a later rollout; --pin follow undoes a pin. --group NAME puts a host in a group (a host's "
        "own ring or pin beats its group's). --clear removes the placement.",
    )
    place.add_argument("subject", metavar="SUBJECT")
    place.add_argument("--ring", type=int, default=None)
    place.add_argument("--pin", choices=("n", "n-1", "follow"), default=None)
    place.add_argument("--group", default=None, metavar="NAME")
    place.add_argument("--clear", action="store_true")
    db_options(place)


def load_plan(path: str) -> Any:
    """A RolloutPlan from a TOML file. Raises FleetError naming the file and the field."""
    from ringfence.fleet._errors import RolloutError
    from ringfence.fleet._rollout import RolloutPlan

    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        return msgspec.toml.decode(data, type=RolloutPlan)
    except OSError as e:
        raise FleetError(f"--plan {path}: {e.strerror}") from e
    except (msgspec.DecodeError, msgspec.ValidationError, RolloutError) as e:
        raise FleetError(f"--plan {path}: {e}") from e


def run_rollout(args: argparse.Namespace, sessions: Any) -> int:
    from ringfence.fleet import _evaluator as ev

    try:
        if args.server_cmd == "place":
            _place(args, sessions)
        elif args.rollout_cmd == "start":
            _start(args, sessions)
        elif args.rollout_cmd == "list":
            _list(sessions)
        elif args.rollout_cmd == "show":
            _show(args, sessions)
        else:
            r = ev.operate(
                sessions, time.time_ns(), args.rollout_id, args.rollout_cmd, by="cli", reason=args.reason
            )
            print(f"rollout {args.rollout_id}: {r.phase} ({r.log[-1].reason})")
    except ev.OperatorRefused as e:
        command = " ".join(c for c in (args.server_cmd, getattr(args, "rollout_cmd", "")) if c)
        raise FleetError(f"{command}: {e}") from e
    return 0


def _place(args: argparse.Namespace, sessions: Any) -> None:
    from ringfence.fleet._evaluator import place

    pin = "" if args.pin == "follow" else args.pin
    place(
        sessions,
        time.time_ns(),
        args.subject,
        ring=args.ring,
        pin=pin,
        group=args.group,
        clear=args.clear,
        by="cli",
    )
    print(f"{args.subject}: {'cleared' if args.clear else 'placed'} (the next look applies it)")


def _start(args: argparse.Namespace, sessions: Any) -> None:
    from ringfence.fleet._evaluator import create_rollout

    plan = load_plan(args.plan) if args.plan else None
    rid = create_rollout(
        sessions, time.time_ns(), args.engine, args.release, last_known_good=args.lkg, plan=plan, by="cli"
    )
    print(f"rollout {rid}: {args.engine} {args.release} (LKG {args.lkg}) pending; the next look starts it")


def _list(sessions: Any) -> None:
    from ringfence.fleet._evaluator import rollouts

    with sessions() as s:
        rows = rollouts(s)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at_ns / 1e9))
        ring = f"ring {r.ring} of {r.rings - 1}" if r.ring >= 0 else "no ring yet"
        print(f"{r.id}  {r.engine} {r.release} (LKG {r.last_known_good})  {r.phase:<11} {ring}  {when}")


def _show(args: argparse.Namespace, sessions: Any) -> None:
    from ringfence.fleet._evaluator import load_rollout
    from ringfence.fleet._rollout import encode_rollout

    with sessions() as s:
        record, rollout = load_rollout(s, args.rollout_id)
    if args.json:
        sys.stdout.write(encode_rollout(rollout).decode() + "\n")
    else:
        print(render_rollout(record.engine, rollout))


def render_rollout(engine: str, rollout: Any) -> str:
    lines = [
        f"rollout {rollout.id}: {engine} {rollout.release} (LKG {rollout.last_known_good}) {rollout.phase}, "
        f"ring {rollout.ring} of {len(rollout.plan.rings) - 1} assigned (through ring {rollout.through_ring})"
    ]
    for d in rollout.log:
        hosts = f" [{d.treated_hosts} on it, {d.control_hosts} not]" if d.treated_hosts is not None else ""
        lines.append(f"  +{d.at_s:>8.0f} s  {d.action:<8} ring {d.ring} by {d.by}: {d.reason}{hosts}")
        if d.gate is not None:
            lines += [f"             {metric_line(m)}" for m in d.gate.metrics if m.verdict != "pass"]
    return "\n".join(lines)


def metric_line(m: Any) -> str:
    """One gate metric's evidence: verdict, test, statistic, p-value, both groups (and their sizes)."""

    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    crit = " (critical)" if m.critical else ""
    return (
        f"{m.name}{crit}: {m.verdict}, {m.test} statistic {g(m.statistic)} p {g(m.p_value)}; on the release "
        f"{g(m.treated)} of {m.treated_n} hosts, not on it {g(m.control)} of {m.control_n}"
        + (f"; {m.note}" if m.note else "")
    )
