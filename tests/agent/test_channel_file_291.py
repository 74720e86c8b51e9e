"""The test named after the incident of 19 July 2024 (Channel File 291): a content file asked for a 21st
input field that the engine never supplied, a validator passed it, it went everywhere at once, and the
engine crashed each host. Here, with a real agent and a signed repository:

1. a Sigma package whose rule reads a field the engine does not supply (`InputField21`) is refused by
   `ringfence content validate`, which names its file, line and rule id;
2. the same rule forced onto the host past validation (as an operator file: the host checks signed
   packages against the contract, operator files go straight to the engine) does not crash the engine:
   the field is absent, the rule never matches, the engine runs on;
3. a signed package built to crash its engine on every event is taken, baked in a shadow instance of
   the engine beside the active one, crashes there, and is rejected: it never reaches the active
   instance, which never crashes (the same release forced active without a shadow run is reverted by
   the crash-loop breaker: tests/agent/test_content_breakers_e2e.py);
4. throughout, every exec on the host completes: `runs` fails the test on an exec that hangs, and none is
   denied (both engines fail open).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import Agent, Config, Console
from ringfence.agent._config import ContentSection
from ringfence.agent._extensions import make_supervisor
from ringfence.cli import main
from tests.agent.helpers import scoped_config
from tests.agent.test_content_breakers_e2e import ENTRY, PROBE, REPO, Execs, _publish, health, probe_content
from tests.agent.test_updates_e2e import Served

pytestmark = pytest.mark.kernel

SIGMA = "ringfence.sigma"
RULE_ID = "c0ffee00-0291-4000-8000-000000000021"
FIELD_21 = f"""title: Reads the 21st input field
id: {RULE_ID}
status: test
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Image|endswith: /probe-target
        InputField21|contains: anything
    condition: selection
level: high
"""


def test_the_21st_field_is_refused_harmless_when_forced_and_a_crashing_release_reverts_itself(
    agents: list[Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path, tmp_path: Path, target: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # 1. the validator refuses the package, naming the file, the line and the rule
    rules = tmp_path / "field-21"
    rules.mkdir()
    (rules / "field21.yml").write_text(FIELD_21)
    pkg = tmp_path / "field-21.tar"
    assert main(["content", "build", str(rules), "-o", str(pkg), "--version", "1.0"]) == 0
    capsys.readouterr()
    assert main(["content", "validate", str(pkg), "--fuzz-seconds", "0", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    refused = [i for i in report["issues"] if i["severity"] == "error" and "InputField21" in i["message"]]
    assert refused, report
    assert (refused[0]["file"], refused[0]["rule"], refused[0]["line"]) == ("field21.yml", RULE_ID, 10)

    # 2 and 3: the agent, the rule forced on as an operator file, the probe engine following a repository
    operator_rule = root_only_dir / "field21.yml"
    operator_rule.write_text(FIELD_21)
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", shared_dir / "state"
    assert main(["content", "keys", "init", str(keys)]) == 0
    _publish(tmp_path, repo, keys, "1.0", "allow")
    server = Served(repo)
    try:
        config = scoped_config(tmpfs, state, extensions=(SIGMA, ENTRY), import_paths=(REPO,))
        config = msgspec.structs.replace(
            config,
            extensions=msgspec.structs.replace(
                config.extensions, content={SIGMA: {"field21.yml": str(operator_rule)}}, default_pack=False
            ),
            content=ContentSection(
                url=server.url,
                update_interval_s=1,
                root=str(keys / "root.json"),
                failure_grace_s=3600,
                shadow_bake_s=2,
            ),
        )
        agent = start(agents, config)
        execs = Execs(target)

        def sigma() -> object:
            return {e.id: e for e in health(state).extensions}[SIGMA]

        def proven(version: str) -> bool:
            p = probe_content(state)
            return p.active == version and p.good == version and not p.trial  # type: ignore[attr-defined]

        assert execs.until(lambda: proven("1.0")), probe_content(state)
        for _ in range(20):  # events the forced rule is matched against: the field is absent, never a fault
            assert execs.once()
        assert sigma().state == "running" and sigma().crashes == 0  # type: ignore[attr-defined]
        findings = Path(agent.state_dir) / "findings.jsonl"
        assert not findings.exists() or RULE_ID not in findings.read_text()

        _publish(tmp_path, repo, keys, "2.0", "crash")  # the bad release, signed and served

        def rejected() -> bool:
            return "2.0" in probe_content(state).rejected  # type: ignore[attr-defined]

        assert execs.until(rejected, timeout_s=60), probe_content(state)
        p = probe_content(state)
        assert "rejected in shadow: its shadow instance failed" in p.rejected["2.0"], p  # type: ignore[attr-defined]
        assert p.active == "1.0" and p.reverts == 0 and p.crash_loop_reverts == 0, p  # type: ignore[attr-defined]
        probe = {e.id: e for e in health(state).extensions}[PROBE]
        assert probe.state == "running" and probe.crashes == 0 and probe.failures == 0, probe  # never hurt
        for _ in range(5):
            assert execs.once()
        assert execs.denied == 0  # every exec completed, none was blocked by a crashing or blind engine
        assert sigma().state == "running" and sigma().crashes == 0  # type: ignore[attr-defined]
    finally:
        server.stop()


def start(agents: list[Agent], config: Config) -> Agent:
    agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
    agents.append(agent)
    agent.start()
    return agent
