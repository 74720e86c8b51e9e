"""`ringfence content status|history|rollback|restore-blocking`: content on this host (cli.py registers
them beside the publisher's `content` commands). `status`, `rollback` and `restore-blocking` talk to the
running agent over its status socket (root only); `history` reads STATE_DIR/content-history.jsonl, so it
works with the agent stopped too.

Exit status (each documented in the command's --help): 0 done; 1 not done (no agent, refused by the
agent, unknown extension or version; for `status`: a breaker is tripped); 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from ringfence.agent._breakers import HISTORY, BreakerError, HistoryEntry, Period, periods, read_history
from ringfence.agent._config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, load_config
from ringfence.agent._status import StatusUnavailable, read_status, send_command
from ringfence.events import ContentHostStatus, ExtensionContentStatus, Health

EXIT_FAILED = 1
COMMANDS = ("status", "history", "rollback", "restore-blocking")
_EXITS = "Exit status: 0 done, 1 not done (the line on stderr says why), 2 bad usage."


def add_parsers(cmds: Any) -> None:
    status = cmds.add_parser(
        "status",
        help="per extension on this host: active, last-known-good, rejected versions, breakers",
        description="Ask the running agent (status socket, root only) for each extension's content: the "
        "active slot and package version, the last-known-good one, the kept slots, whether the active "
        "one is still on trial, the rejected versions with why, the deny-rate breaker (blocking, or "
        "advisory since when and why, with the would-be denies), the crash-loop reverts, the version "
        "baking in a shadow instance and this run's shadow outcomes (promoted, or rejected with why), "
        "and a safe start (the start-loop breaker).",
        epilog="Exit status: 0 nothing tripped; 1 a breaker is tripped (an extension cannot block, or the "
        "agent runs a safe start), or no agent answers; 2 bad usage.",
    )
    status.add_argument("--json", action="store_true", help="the content section of the health, as JSON")
    history = cmds.add_parser(
        "history",
        help="per extension, the versions that were active, when, and how each ended",
        description=f"Read STATE_DIR/{HISTORY} (kept by the agent, bounded; works with the agent "
        "stopped): per extension, each slot and package version that was active, since when, when it "
        "was proven good, and how it ended: replaced by newer content, agent restarted, rejected, "
        "reverted by the crash-loop breaker, rolled back by an operator. Then the deny-rate breaker's "
        "events (blocking removed, restored) and the shadow runs (started, promoted, rejected).",
        epilog=_EXITS,
    )
    history.add_argument("extension", nargs="?", metavar="EXTENSION", help="only this extension")
    history.add_argument("--json", action="store_true", help="one JSON document")
    rollback = cmds.add_parser(
        "rollback",
        help="make an earlier kept slot active again (through the running agent)",
        description="Through the running agent: make EXTENSION's last-known-good slot active again (when "
        "the active one is already the last-known-good, the kept slot before it), or with --to VERSION "
        "the newest kept slot holding that package version. The version left, and every staged version "
        "newer than the one made active, are rejected (reason: rolled back by the operator), so that "
        "following the newest does not bring them back; a release published later is taken as usual. "
        "The slot made active becomes the last-known-good. Needs the agent running (a stopped agent "
        "starts on last-known-good packages anyway); see `content status` for the kept slots.",
        epilog=_EXITS,
    )
    rollback.add_argument("extension", metavar="EXTENSION", help="the extension id, as in `content status`")
    rollback.add_argument("--to", metavar="VERSION", help="the package version to go back to (a kept slot)")
    restore = cmds.add_parser(
        "restore-blocking",
        help="give an extension tripped by the deny-rate breaker its power to block back",
        description="Through the running agent: EXTENSION's DENYs block execs again (the deny-rate "
        "breaker made them advice only after its deny rate jumped with new content). Saved in the state "
        "dir: it holds across agent restarts, as the tripped state does. The breaker watches the "
        "extension again from its next content change.",
        epilog=_EXITS,
    )
    restore.add_argument("extension", metavar="EXTENSION", help="the extension id, as in `content status`")
    for p in (status, history, rollback, restore):
        p.add_argument(
            "--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH} if present)"
        )
        p.add_argument(
            "--state-dir", default=None, help=f"state directory (default: config, else {DEFAULT_STATE_DIR})"
        )


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or load_config(args.config).agent.state_dir
    if args.content_cmd == "history":
        return _history(state_dir, args.extension, as_json=args.json)
    if args.content_cmd == "status":
        return _status(state_dir, as_json=args.json)
    if args.content_cmd == "rollback":
        request = {"command": "content-rollback", "extension": args.extension, "to": args.to}
    else:
        request = {"command": "content-restore-blocking", "extension": args.extension}
    try:
        answer = send_command(state_dir, request)
    except StatusUnavailable as e:
        raise StatusUnavailable(
            f"content {args.content_cmd} acts through the running agent, and none answers: {e}"
        ) from e
    if not answer.get("ok"):
        raise BreakerError(f"content {args.content_cmd}: {answer.get('error', 'refused')}")
    print(answer.get("message", "done"))
    return 0


def _status(state_dir: str, *, as_json: bool) -> int:
    raw = read_status(state_dir)
    try:
        health = msgspec.json.decode(raw, type=Health)
    except msgspec.DecodeError as e:
        raise StatusUnavailable(f"{state_dir}: the agent's health document does not decode: {e}") from e
    content = health.content or ContentHostStatus()
    if as_json:
        print(json.dumps(msgspec.to_builtins(content), indent=2, sort_keys=True))
    else:
        print("\n".join(render_status(content)))
    tripped = content.safe_mode or any(not e.blocking for e in content.extensions.values())
    return EXIT_FAILED if tripped else 0


def render_status(content: ContentHostStatus) -> list[str]:
    lines = []
    if content.safe_mode:
        lines.append(f"SAFE START: {content.safe_mode}")
    if not content.extensions:
        lines.append("no extension has content on this host")
    for ext_id, e in sorted(content.extensions.items()):
        lines += [ext_id, *(f"  {line}" for line in _render_one(e))]
    return lines


def render_summary(content: ContentHostStatus) -> list[str]:
    """One line per extension (and the safe start), for `ringfence status`."""
    lines = [f"SAFE START: {content.safe_mode}"] if content.safe_mode else []
    for ext_id, e in sorted(content.extensions.items()):
        state = "blocking" if e.blocking else "ADVISORY (deny-rate breaker)"
        rejected = f" rejected={','.join(e.rejected)}" if e.rejected else ""
        shadow = f" shadow={e.shadow.split(' ', 1)[0]}" if e.shadow else ""
        lines.append(
            f"{ext_id:<24} slot={e.active_slot}{'(' + e.active + ')' if e.active else ''} good={e.good_slot} "
            f"{state} crash-loop-reverts={e.crash_loop_reverts}{rejected}{shadow}"
        )
    return lines


def _render_one(e: ExtensionContentStatus) -> list[str]:
    trial = " (new, on trial)" if e.trial else ""
    lines = [
        f"active      slot {e.active_slot}{_pkg(e.active)}{trial}",
        f"good        slot {e.good_slot}{_pkg(e.good)} (last-known-good)",
        f"kept        {', '.join(e.kept) or '-'}",
    ]
    lines += [f"rejected    {version}: {why or 'no reason recorded'}" for version, why in e.rejected.items()]
    if e.blocking:
        lines.append("blocking    yes")
    else:
        with_version = f" (package {e.advisory_version})" if e.advisory_version else ""
        lines.append(
            f"blocking    NO, advisory since {_when(e.advisory_since_ns)}{with_version}: {e.advisory_reason}"
        )
        last = f", the last: {e.last_would_be_deny}" if e.last_would_be_deny else ""
        lines.append(f"            would-be denies this run: {e.would_be_denies}{last}")
        lines.append("            (`ringfence content restore-blocking` gives it back)")
    lines.append(f"reverts     {e.reverts} this run, {e.crash_loop_reverts} by the crash-loop breaker")
    if e.last_revert:
        lines.append(f"            the last: {e.last_revert}")
    lines.append(
        f"shadow      {e.shadow or 'none baking'}; {e.shadow_promoted} promoted, {e.shadow_rejected} "
        "rejected this run"
    )
    lines += [f"            {line}" for line in e.shadow_results]
    return lines


def _pkg(version: str) -> str:
    return f" package {version}" if version else " (operator files only)"


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9)) if ns else "-"


_NOTES = ("blocking-removed", "blocking-restored", "shadow-started", "shadow-promoted", "shadow-rejected")


def _history(state_dir: str, extension: str | None, *, as_json: bool) -> int:
    path = os.path.join(state_dir, HISTORY)
    try:
        entries, skipped = read_history(path)
    except OSError as e:
        raise BreakerError(f"{path}: cannot read the content history: {e.strerror or e}") from e
    known = sorted({e.extension for e in entries})
    if extension is not None:
        if extension not in known:
            shown = ", ".join(known) or "none"
            raise BreakerError(f"no content history for extension {extension!r} in {path} (known: {shown})")
        entries = [e for e in entries if e.extension == extension]
    by_ext = periods(entries)
    notes = [e for e in entries if e.event in _NOTES]
    if as_json:
        doc = {"extensions": msgspec.to_builtins(by_ext), "breaker_events": msgspec.to_builtins(notes)}
        print(json.dumps(doc | {"unreadable_lines": skipped}, indent=2, sort_keys=True))
        return 0
    if not entries:
        print(f"no content history yet ({path})")
    for ext_id, rows in sorted(by_ext.items()):
        print(ext_id)
        for row in rows:
            print(f"  {_render_period(row)}")
        for note in (n for n in notes if n.extension == ext_id):
            print(f"  {_render_note(note)}")
    if skipped:
        print(f"warning: {skipped} unreadable lines in {path} skipped", file=sys.stderr)
    return 0


def _render_period(p: Period) -> str:
    promoted = f", proven good {_when(p.promoted_ns)}" if p.promoted_ns else ""
    ended = (
        f"until {_when(p.ended_ns)}: {p.ended}" if p.ended_ns else "active now (or when the agent stopped)"
    )
    detail = f"\n      {p.detail}" if p.detail else ""
    return f"{_when(p.since_ns)}  slot {p.slot}{_pkg(p.version)} ({p.how_started}){promoted}; {ended}{detail}"


def _render_note(n: HistoryEntry) -> str:
    return f"{_when(n.at_ns)}  {n.event}: {n.detail}"
