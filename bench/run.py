"""Run every benchmark and print one table per measurement, each against a baseline from the same run.

sudo .venv/bin/python bench/run.py [--quick] [--only GROUP] (groups: see --help)

Hold the e2e lock on a shared machine: sudo flock /run/ringfence-e2e.lock .venv/bin/python bench/run.py ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import agent_bench
from bench._common import require_root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller counts: a smoke run, not a measurement")
    groups = (
        "agent",
        "cost",
        "profile",
        "extensions",
        "content",
        "pipeline",
        "sigma",
        "yara",
        "dns",
        "audit",
        "fleet",
        "console",
        "fleet-load",
    )
    p.add_argument("--only", choices=groups, help="run one group")
    p.add_argument(
        "--profile-src",
        metavar="DIR",
        action="append",
        default=[],
        help="profile: also run the agent from another checkout's src/ (before/after in one run; repeatable)",
    )
    p.add_argument(
        "--configs",
        metavar="KEYS",
        help="cost: only these configurations, comma-separated (nothing,auditd,connector,audit,file,gate,"
        "feed,defaults; nothing always)",
    )
    args = p.parse_args()
    require_root()
    if args.only in (None, "agent"):
        print(agent_bench.run(args.quick), flush=True)
    if args.only in (None, "cost"):
        from bench import cost_bench

        print("\n" + cost_bench.run(args.quick, args.configs), flush=True)
    if args.only in (None, "profile"):
        from bench import profile_bench

        print("\n" + profile_bench.run(args.quick, args.profile_src), flush=True)
    if args.only in (None, "extensions"):
        from bench import extensions_bench

        print("\n" + extensions_bench.run(args.quick), flush=True)
    if args.only in (None, "content"):
        from bench import content_bench

        print("\n" + content_bench.run(args.quick), flush=True)
    if args.only in (None, "pipeline"):
        from bench import content_pipeline_bench

        print("\n" + content_pipeline_bench.run(args.quick), flush=True)
    if args.only in (None, "sigma"):
        from bench import sigma_bench

        print("\n" + sigma_bench.run(args.quick), flush=True)
    if args.only in (None, "yara"):
        from bench import yara_bench

        print("\n" + yara_bench.run(args.quick), flush=True)
    if args.only in (None, "dns"):
        from bench import dns_bench

        print("\n" + dns_bench.run(args.quick), flush=True)
    if args.only in (None, "audit"):
        from bench import audit_bench

        print("\n" + audit_bench.run(args.quick), flush=True)
    if args.only in (None, "fleet"):
        from bench import fleet_bench

        print("\n" + fleet_bench.run(args.quick), flush=True)
    if args.only in (None, "console"):
        from bench import console_bench

        print("\n" + console_bench.run(args.quick), flush=True)
    if args.only in (None, "fleet-load"):
        from bench import fleet_load_bench

        print("\n" + fleet_load_bench.run(args.quick), flush=True)


if __name__ == "__main__":
    main()
