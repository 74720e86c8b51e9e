"""The differential test on events recorded from a real agent run: attacker-looking procedures done
harmlessly (copies of /bin/true named like the tools, with the tools' arguments; files written on the
test's tmpfs; a connection to a listener of the test's own), beside whatever else the host runs. The
engine and pySigma's SQLite backend must agree on every (rule, event) pair of the recording."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.agent.helpers import Collector, scoped_config
from tests.engines.sigma.corpus import LINUX_RULE_DIRS, Reference, engine_matches

from ringfence.agent import Agent, Console
from ringfence.broker import ThreadedSubscriber
from ringfence.engines.sigma import load_files, rule_files
from ringfence.sdk import EventKind, ProcessActivity

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not LINUX_RULE_DIRS[0].is_dir(), reason="../shared/data/sigmahq is not there"),
]

PROCEDURES = [
    ("base64", "-d", "payload.b64"),
    ("whoami",),
    ("crontab", "-l"),
    ("chmod", "+x", "/tmp/dropper"),
    ("nohup", "bash", "-c", "id"),
    ("setenforce", "0"),
    ("iptables", "-F"),
    ("history", "-c"),
    ("shred", "-u", "/var/log/auth.log"),
    ("useradd", "-o", "-u", "0", "backdoor"),
]


@pytest.fixture
def recorded(tmpfs: Path, tmp_path: Path) -> Iterator[list]:
    collector = Collector()
    agent = Agent(scoped_config(tmpfs, tmp_path / "state"), console=Console(io.StringIO()))
    kinds = frozenset({EventKind.PROCESS, EventKind.FILE, EventKind.NETWORK})
    agent.broker.subscribe(ThreadedSubscriber("recorder", collector, kinds).start())
    agent.start()
    try:
        yield _perform(tmpfs, collector)
    finally:
        agent.stop()


def _perform(tmpfs: Path, collector: Collector) -> list:
    tools = tmpfs / "usr" / "bin"
    tools.mkdir(parents=True)
    for argv in PROCEDURES:
        shutil.copy2("/bin/true", tools / argv[0])
        subprocess.run([str(tools / argv[0]), *argv[1:]], check=True, timeout=30)
    (tmpfs / "etc" / "cron.d").mkdir(parents=True)
    (tmpfs / "etc" / "cron.d" / "job").write_text("* * * * * root /tmp/x\n")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        subprocess.run(
            ["/bin/sh", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} 2>/dev/null || true"], check=False
        )
    marker = f"--rf-end-{uuid.uuid4().hex[:8]}"
    subprocess.run(["/bin/true", marker], check=True)
    collector.wait_for(lambda e: isinstance(e, ProcessActivity) and marker in e.process.cmdline, timeout_s=15)
    return list(collector.seen)


def test_recorded_agent_events_match_exactly_what_the_sqlite_backend_matches(recorded: list) -> None:
    files = [(str(d / n), str(d / n)) for d in LINUX_RULE_DIRS for n in rule_files(str(d))]
    rules = load_files(files)
    mine = set(engine_matches(rules, recorded))
    reference = Reference(LINUX_RULE_DIRS)
    reference.load(recorded)
    theirs = reference.matches()
    assert mine == theirs, (sorted(mine - theirs)[:5], sorted(theirs - mine)[:5])
    titles = {
        rules.rules[k].title for k in range(len(rules.rules)) if rules.rules[k].id in {r for r, _ in mine}
    }
    assert len(titles) >= 8, titles  # the procedures really hit rules: the comparison is not empty
