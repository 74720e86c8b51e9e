"""What the control plane assigned this host: per engine, the one content version to run.

The server answers every heartbeat with the host's assignments (`{"assignments": {ENGINE: VERSION}}`);
the uplink offers them here, and the agent's content updates read them: with an assignment, the TUF
client fetches that version and no other, and the update loop runs it once it is staged and verified.
The assignment is only a choice among signed versions: a version the TUF repository does not list (or
lists with a bad signature) is never fetched, so a compromised control plane cannot make a host run
unsigned content. It is kept in STATE_DIR/fleet-assignments.json (written atomically), so a host
restarted while the server is away follows the last assignment it had.

    FleetAssignments(path).offer(raw) -> whether it changed   (the uplink thread; raw is hostile JSON)
    .current() -> {engine: version}                            (the update thread)
    .problem                                                   a refused answer, one line ("" for none)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ringfence._linux import write_atomic

log = logging.getLogger(__name__)

ASSIGNMENTS_FILE = "fleet-assignments.json"
MAX_ENGINES = 64
ENGINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12}){0,5}")  # the content package's version grammar


class AssignmentError(ValueError):
    pass


def parse_assignments(raw: Any) -> dict[str, str]:
    """{engine: version} from a server's answer. Raises AssignmentError naming the bad entry."""
    if not isinstance(raw, dict):
        raise AssignmentError(f"assignments: an object of engine -> version, not {type(raw).__name__}")
    if len(raw) > MAX_ENGINES:
        raise AssignmentError(f"assignments: {len(raw)} engines, at most {MAX_ENGINES}")
    out: dict[str, str] = {}
    for engine, version in raw.items():
        if not isinstance(engine, str) or not ENGINE.fullmatch(engine):
            raise AssignmentError(f"assignments: engine {engine!r} is not an engine id")
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            raise AssignmentError(f"assignments: {engine}: {version!r} is not a package version")
        out[engine] = version
    return out


class FleetAssignments:
    def __init__(self, path: str, on_change: Callable[[], None] | None = None) -> None:
        self.path = path
        self.on_change = on_change
        self._lock = threading.Lock()
        self.problem = ""
        self._current: dict[str, str] = {}
        try:
            with open(path, "rb") as f:
                self._current = parse_assignments(msgspec.json.decode(f.read(64 << 10)))
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError, AssignmentError) as e:
            self.problem = f"{path}: ignored, the server's next answer replaces it: {e}"
            log.warning("%s", self.problem)

    def current(self) -> Mapping[str, str]:
        with self._lock:
            return dict(self._current)

    def offer(self, raw: Any) -> bool:
        """The server's assignments (parsed here: hostile until then). A bad answer changes nothing and
        is the uplink's problem line until a good one comes."""
        try:
            parsed = parse_assignments(raw)
        except AssignmentError as e:
            with self._lock:
                self.problem = f"fleet server sent bad assignments (kept the last ones): {e}"
            return False
        with self._lock:
            self.problem = ""
            if parsed == self._current:
                return False
            self._current = parsed
        try:
            write_atomic(self.path, msgspec.json.encode(parsed), 0o600)
        except OSError as e:  # followed all the same; only a restart before the next answer loses it
            log.warning("%s: cannot keep the assignments: %s", self.path, e)
        log.info("fleet assignments now %s", parsed or "none")
        if self.on_change is not None:
            self.on_change()
        return True
