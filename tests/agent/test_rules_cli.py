"""`ringfence rules check|list` and `ringfence run --rules`, as a user runs them: real files of each format,
good and bad, checked by the engines' own loaders in a sandboxed child; a real agent started with
`--rules` that raises a finding for a real exec on the test's tmpfs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.agent import Config
from ringfence.agent._config import ExtensionsSection
from ringfence.agent._rules import (
    Found,
    RulesCheckError,
    _ChildSpec,
    _run_child,
    _Staged,
    check_paths,
    with_rules,
)
from tests.engines.sigma.build import rule

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
RULE_ID = "7e57c11e-0000-4000-8000-000000000001"
BAD_RE_ID = "7e57c11e-0000-4000-8000-000000000002"
SHA256 = "a" * 64

YARA_GOOD = (
    'rule rf_block : block { strings: $a = "rf-evil" condition: $a }\nrule rf_note { condition: false }\n'
)
YARA_BAD = 'rule rf_broken {\n  strings: $a = "x"\n  condition: $a and no_such_thing\n}\n'


def _indicator(n: int, pattern: str) -> dict[str, str]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "valid_from": "2026-01-01T00:00:00Z",
        "pattern_type": "stix",
        "pattern": pattern,
    }


def _stix(*patterns: str) -> str:
    objects = [_indicator(n, p) for n, p in enumerate(patterns, 1)]
    return json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects})


def _cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RINGFENCE, *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def content() -> Iterator[Path]:
    """The operator's rules: a root-only directory, so only root (and the copy it hands over) reads it."""
    d = Path(tempfile.mkdtemp(prefix="rf-rules-cli-", dir="/tmp"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d)


def _good(d: Path) -> Path:
    (d / "probe.yml").write_text(
        rule("sel:\n  Image|endswith: /rf-rules-probe\ncondition: sel", rule_id=RULE_ID)
    )
    (d / "net.yaml").write_text(
        rule("sel:\n  DestinationPort: 4444\ncondition: sel", category="network_connection")
    )
    (d / "block.yar").write_text(YARA_GOOD)
    (d / "list.ioc").write_text(f"# feed\n{SHA256} known bad\n203.0.113.7\n198.51.100.0/24\nevil.example\n")
    (d / "feed.json").write_text(
        _stix("[ipv4-addr:value = '192.0.2.1']", "[domain-name:value = 'bad.example']")
    )
    for f in d.iterdir():
        f.chmod(0o600)
    return d


def test_good_content_of_every_format_is_counted_per_engine_and_logsource_and_exits_zero(content) -> None:
    _good(content)
    r = _cli("rules", "check", str(content))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "sigma: 2 files, 2 rules would load" in out
    assert "active process_creation: 1" in out and "active network_connection: 1" in out
    assert "yara: 1 files, 2 rules would load" in out and "tagged block: 1" in out
    assert "ioc: 2 files, 6 indicators would load" in out
    assert "sha256: 1" in out and "domain: 2" in out and "address: 3" in out
    assert "0 errors" in out
    assert RULE_ID not in out  # check counts; list names the rules


def test_rules_list_names_each_rule_that_would_load(content) -> None:
    _good(content)
    r = _cli(
        "rules", "list", str(content / "probe.yml"), str(content / "block.yar"), str(content / "list.ioc")
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{RULE_ID}  process_creation" in r.stdout and str(content / "probe.yml") in r.stdout
    assert ".rf_block  tags: block" in r.stdout and ".rf_note  tags: -" in r.stdout
    assert f"{content / 'list.ioc'}  (ioc)" in r.stdout


def test_every_problem_of_every_format_is_named_with_file_line_and_rule_id_and_exits_one(content) -> None:
    _good(content)
    (content / "broken.yml").write_text("title: ok\nid: [broken\n")
    (content / "backref.yml").write_text(
        rule("sel:\n  CommandLine|re: '(a)\\1'\ncondition: sel", rule_id=BAD_RE_ID)
    )
    (content / "bad.yar").write_text(YARA_BAD)
    (content / "bad.ioc").write_text("203.0.113.9\nthis is no indicator\n")
    (content / "bad.json").write_text(
        _stix("[ipv4-addr:value = '192.0.2.9'", "[ipv4-addr:value = '192.0.2.8']")
    )
    r = _cli("rules", "check", str(content))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()

    def line_with(*parts: str) -> str:
        hits = [line for line in lines if all(p in line for p in parts)]
        assert hits, f"no line with {parts} in:\n{r.stdout}"
        return hits[0]

    assert line_with(f"{content / 'broken.yml'}:3:", "error", "YAML")  # where the parser gave up
    assert line_with(f"{content / 'backref.yml'}:", f"rule {BAD_RE_ID}:", "error", "re2")
    assert line_with(f"{content / 'bad.yar'}:3:", "error", "no_such_thing")
    assert line_with(f"{content / 'bad.ioc'}:2:", "error")
    # a STIX indicator that does not parse is skipped (a warning); the bundle's others load
    assert line_with(str(content / "bad.json"), "warning", "indicator--00000000-0000-4000-8000-000000000001")
    assert "4 errors" in r.stdout
    assert "sigma: 4 files, 2 rules would load" in r.stdout  # the good ones still count
    assert "/tmp/ringfence-rules-" not in r.stdout  # the operator's paths, never the checker's copies
    assert "Traceback" not in r.stderr


def test_json_report_holds_every_engine_and_issue(content) -> None:
    _good(content)
    (content / "bad.yar").write_text(YARA_BAD)
    r = _cli("rules", "check", "--json", str(content))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    engines = {e["engine"]: e for e in doc["engines"]}
    assert engines["sigma"]["loaded"] == 2 and engines["sigma"]["counts"]["active process_creation"] == 1
    assert engines["yara"]["loaded"] == 0  # a YARA set with an error is refused whole, as the engine does
    assert engines["ioc"]["counts"] == {"sha256": 1, "address": 3, "domain": 2}
    (issue,) = [i for i in engines["yara"]["issues"] if i["severity"] == "error"]
    assert issue["file"] == str(content / "bad.yar") and issue["line"] == 3


def test_missing_paths_and_files_of_no_engine_are_errors(content) -> None:
    (content / "notes.txt").write_text("hello\n")
    (content / "SHOUT.YML").write_text(
        rule("sel:\n  Image|endswith: /x\ncondition: sel")
    )  # the engine skips it
    (content / "empty").mkdir()
    (content / "empty" / "SHOUT.YAR").write_text(YARA_GOOD)
    names = ("notes.txt", "nope.yml", "empty", "SHOUT.YML")
    r = _cli("rules", "check", *(str(content / n) for n in names))
    assert r.returncode == 1
    assert f"{content / 'SHOUT.YML'}: error: not a Sigma" in r.stdout
    assert f"{content / 'notes.txt'}: error: not a Sigma" in r.stdout
    assert f"{content / 'nope.yml'}: error: no such file or directory" in r.stdout
    assert f"{content / 'empty'}: warning: no Sigma, YARA or IOC files" in r.stdout


def test_a_fifo_named_like_a_rule_file_does_not_hang_the_check(content) -> None:
    os.mkfifo(content / "trap.yml")
    r = _cli("rules", "check", str(content), timeout_s=60)
    assert r.returncode == 1
    assert f"{content / 'trap.yml'}: error: not a regular file" in r.stdout


def test_the_checker_runs_sandboxed_and_cannot_read_what_root_can(tmp_path) -> None:
    """The copy step is root's; the parsing child is not: pointed at /etc/shadow, it cannot open it."""
    work = Path(tempfile.mkdtemp(prefix="rf-rules-sandbox-", dir="/tmp"))
    try:
        spec = _ChildSpec(files=[_Staged("ioc", "/etc/shadow", "/etc/shadow")], sandbox=True)
        report = _run_child(spec, str(work), ExtensionsSection(), 60)
    finally:
        shutil.rmtree(work)
    (issue,) = report.engines[0].issues
    assert issue.file == "/etc/shadow" and "cannot open: Permission denied" in issue.message
    assert report.engines[0].loaded == 0


def test_root_only_files_are_checked_through_roots_copy(content) -> None:
    (content / "probe.yml").write_text(rule("sel:\n  Image|endswith: /x\ncondition: sel", rule_id=RULE_ID))
    (content / "probe.yml").chmod(0o600)
    report = check_paths([str(content)])
    assert not report.blocking and report.engines[0].loaded == 1
    assert not list(Path("/tmp").glob("ringfence-rules-*/sigma/*-probe.yml"))  # the copies are gone


def test_run_rules_adds_each_file_to_its_engine_and_enables_it() -> None:
    config = Config(
        extensions=ExtensionsSection(enabled=("ringfence.reputation",), disabled=("ringfence.yara",))
    )
    found = [
        Found("sigma", "/etc/rf/a.yml"),
        Found("yara", "/etc/rf/b.yar"),
        Found("ioc", "/etc/rf/c.ioc"),
        Found("sigma", "/etc/rf/odd name.yml"),
    ]
    out = with_rules(config, found, "ringfence.reputation")
    ext = out.extensions
    assert ext.content["ringfence.sigma"] == {
        "rules-000-a.yml": "/etc/rf/a.yml",
        "rules-003-odd_name.yml": "/etc/rf/odd name.yml",
    }
    assert ext.content["ringfence.yara"] == {"rules-001-b.yar": "/etc/rf/b.yar"}
    assert ext.content["ringfence.reputation"] == {"rules-002-c.ioc": "/etc/rf/c.ioc"}
    assert set(ext.enabled) == {"ringfence.reputation", "ringfence.sigma", "ringfence.yara"}
    assert ext.disabled == ()


def test_help_texts_name_the_formats_and_the_commands() -> None:
    top = _cli("--help")
    assert "rules" in top.stdout
    rules = _cli("rules", "--help")
    assert rules.returncode == 0 and "check" in rules.stdout and "list" in rules.stdout
    assert ".yar" in rules.stdout and ".ioc" in rules.stdout and "sandbox" in rules.stdout
    check = _cli("rules", "check", "--help")
    assert check.returncode == 0 and "--json" in check.stdout and "PATH" in check.stdout
    run = _cli("run", "--help")
    assert "--rules PATH" in run.stdout and "Repeatable" in run.stdout
    missing = _cli("rules", "check")
    assert missing.returncode == 2 and "PATH" in missing.stderr


# --- run --rules, with a real agent ---------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The state dir goes here: the extension user must pass through it (pytest's dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="rf-rules-run-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _config(path: Path, tmpfs: Path, state: Path) -> Path:
    key = f"rf-t-{uuid.uuid4().hex[:8]}"
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\naudit_key = "{key}"\n'
        "[output]\nconsole_interval_s = 0\n[extensions]\nenabled = []\n"
    )
    return path


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _finding_for(findings: Path, marker: str) -> bool:
    if not findings.exists():
        return False
    docs = [json.loads(line) for line in findings.read_text().splitlines() if line]
    return any(
        d["finding_info"].get("analytic", {}).get("name") == RULE_ID
        and marker in d.get("evidences", [{}])[0].get("process", {}).get("cmd_line", "")
        for d in docs
    )


def _denied(path: Path) -> bool:
    try:
        subprocess.run([str(path)], check=False, timeout=30)
    except PermissionError:
        return True
    return False


@pytest.mark.kernel
def test_run_rules_enables_sigma_yara_and_ioc_whose_content_catches_real_execs(
    tmpfs, shared_dir, content
) -> None:
    """The config enables no extension: --rules turns on each engine its files are for."""
    sigma_rule = rule("sel:\n  Image|endswith: /rf-rules-probe\ncondition: sel", rule_id=RULE_ID)
    (content / "probe.yml").write_text(sigma_rule)
    mark = f"RF-RULES-CLI-BLOCK-{uuid.uuid4().hex[:12]}"
    (content / "block.yar").write_text(
        f'rule rf_rules_cli_block : block {{ strings: $m = "{mark}" condition: $m }}\n'
    )
    listed = tmpfs / "rf-rules-listed"
    shutil.copy2("/bin/true", listed)
    with listed.open("ab") as f:
        f.write(uuid.uuid4().bytes)  # a binary of its own, whose sha256 no other file has
    digest = hashlib.sha256(listed.read_bytes()).hexdigest()
    (content / "hashes.ioc").write_text(f"# test list\n{digest} rf-rules-cli test\n")
    for f in content.iterdir():
        f.chmod(0o600)
    state = shared_dir / "state"
    config = _config(shared_dir / "rf.toml", tmpfs, state)
    rules_args = ["--rules", str(content)]
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config), *rules_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _eventually(lambda: (state / "status.sock").exists() or proc.poll() is not None, "agent up")
        assert proc.poll() is None, proc.communicate()
        probe = tmpfs / "rf-rules-probe"
        shutil.copy2("/bin/true", probe)
        marker = f"--rf-{uuid.uuid4().hex[:12]}"

        def caught() -> bool:
            subprocess.run([str(probe), marker], check=True, timeout=30)
            return _finding_for(state / "findings.jsonl", marker)

        _eventually(caught, "a finding of the --rules Sigma rule for the probe's exec")
        evil = tmpfs / "rf-rules-evil"
        shutil.copy2("/bin/true", evil)
        with evil.open("ab") as f:
            f.write(mark.encode())
        _eventually(lambda: _denied(evil), "the --rules YARA block rule denying the marked binary")
        _eventually(lambda: _denied(listed), "the --rules IOC list denying the listed binary")
        assert not _denied(probe)  # the unmarked, unlisted binary still runs
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"--rules: sigma 1 from 1 files, yara 1 from 1 files, ioc 1 from 1 files" in out
    assert b"Traceback" not in err


def test_run_rules_with_a_bad_rule_stops_the_start_in_one_line(shared_dir, content, tmp_path) -> None:
    (content / "good.yml").write_text(rule("sel:\n  Image|endswith: /x\ncondition: sel"))
    (content / "bad.yml").write_text("title: ok\nid: [broken\n")
    state = shared_dir / "state"
    config = _config(shared_dir / "rf.toml", tmp_path, state)
    r = _cli("run", "--config", str(config), "--rules", str(content), timeout_s=120)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ringfence: --rules: 1 errors, not started:")
    assert f"{content / 'bad.yml'}:3: error: YAML" in line
    assert not (state / "status.sock").exists()
    for n in range(25):
        (content / f"bad-{n:02d}.yml").write_text("title: [broken\n")
    many = _cli("run", "--config", str(config), "--rules", str(content), timeout_s=120)
    (line,) = many.stderr.strip().splitlines()
    assert line.startswith("ringfence: --rules: 26 errors, not started:")
    assert line.endswith("; and 6 more (ringfence rules check)") and line.count("error: YAML") == 20


def test_run_rules_refuses_a_file_another_user_could_change_before_reading_it(
    shared_dir, content, tmp_path
) -> None:
    """Root would copy what the path names: a file or directory others can write is refused unread."""
    writable = content / "writable.yml"
    writable.write_text("title: [broken\n")  # a YAML error would show that it was read
    writable.chmod(0o666)
    open_dir = shared_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "r.yml").write_text(rule("sel:\n  Image|endswith: /x\ncondition: sel"))
    config = _config(shared_dir / "rf.toml", tmp_path, shared_dir / "state")
    r = _cli("run", "--config", str(config), "--rules", str(writable), "--rules", str(open_dir))
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ringfence: --rules: 2 errors, not started:")
    assert f"{writable}: error: it is uid 0, mode 666: the agent hands over only content" in line
    assert f"{open_dir / 'r.yml'}: error: {open_dir} is writable by others" in line
    assert "YAML" not in line


def _rules_cgroups() -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/ringfence/rules-check-{os.getpid()}"))


def test_a_checker_past_its_deadline_is_killed_and_reported_in_one_line(content) -> None:
    (content / "probe.yml").write_text(rule("sel:\n  Image|endswith: /x\ncondition: sel"))
    with pytest.raises(RulesCheckError) as raised:
        check_paths([str(content)], timeout_s=0)
    assert str(raised.value) == "rules check: the checker did not finish in time"
    assert not _rules_cgroups()  # its sandbox is released, its processes gone with it
    assert not list(Path("/tmp").glob("ringfence-rules-*/sigma/*-probe.yml"))


def test_rules_check_as_an_unprivileged_user_runs_without_the_sandbox(shared_dir) -> None:
    (shared_dir / "probe.yml").write_text(rule("sel:\n  Image|endswith: /x\ncondition: sel", rule_id=RULE_ID))
    (shared_dir / "bad.yar").write_text(YARA_BAD)
    for f in shared_dir.iterdir():
        f.chmod(0o644)
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *RINGFENCE,
            "rules",
            "list",
            str(shared_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert r.returncode == 1, r.stderr
    assert f"{RULE_ID}  process_creation" in r.stdout
    assert f"{shared_dir / 'bad.yar'}:3: error:" in r.stdout


def test_sigma_placeholders_come_from_the_config_and_bad_settings_are_named(content, tmp_path) -> None:
    (content / "admins.yml").write_text(
        rule("sel:\n  User|expand: '%admins%'\ncondition: sel", rule_id=RULE_ID)
    )
    without = _cli("rules", "check", "--config", str(tmp_path / "none.toml"), str(content))
    assert without.returncode == 1 and "cannot read the config: No such file" in without.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    unset = _cli("rules", "check", "--config", str(empty), str(content))
    assert unset.returncode == 1 and f"rule {RULE_ID}:" in unset.stdout and "admins" in unset.stdout
    config = tmp_path / "rf.toml"
    config.write_text('[extensions.config."ringfence.sigma".placeholders]\nadmins = ["root", "alice"]\n')
    good = _cli("rules", "check", "--config", str(config), str(content))
    assert good.returncode == 0, good.stdout
    assert "sigma: 1 files, 1 rules would load" in good.stdout
    config.write_text('[extensions.config."ringfence.sigma"]\nplaceholders = "admins"\n')
    bad = _cli("rules", "check", "--config", str(config), str(content))
    assert bad.returncode == 1
    assert (
        '[extensions.config."ringfence.sigma"]: error: ringfence.sigma settings: placeholders' in bad.stdout
    )


def test_content_and_file_names_cannot_drive_the_terminal(content) -> None:
    """A rule title, a YAML error or a file name with escape sequences is printed escaped."""
    (content / "title.yml").write_text(
        rule("sel:\n  Image|endswith: /x\ncondition: sel", rule_id=RULE_ID).replace(
            "title: test rule", 'title: "\\e]0;owned\\a\\e[2J"\ndescription: test rule'
        )
    )
    (content / "evil\x1b[31m\n.yml").write_text("title: [broken\n")
    r = _cli("rules", "list", str(content))
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J" in r.stdout  # the title, escaped
    assert f"{content}/evil\\x1b[31m\\x0a.yml:" in r.stdout  # the file name, escaped


def test_a_checker_over_the_extension_memory_limit_is_named_in_one_line(content) -> None:
    """The check runs within extensions.memory_mb, as the engine will: content it cannot load there fails."""
    limits = ExtensionsSection(memory_mb=64)
    (content / "small.ioc").write_text(f"{SHA256}\n")
    assert check_paths([str(content)], limits).engines[0].loaded == 1  # the checker itself fits
    with (content / "huge.ioc").open("w") as f:  # 1.5 million sha256 lines: far more than 64 MiB loaded
        f.writelines(f"{n:064x}\n" for n in range(1, 1_500_000))
    with pytest.raises(RulesCheckError) as raised:
        check_paths([str(content)], limits)
    assert str(raised.value) == (
        "rules check: the checker ran out of memory (64 MiB, extensions.memory_mb: the engine would too)"
    )
    assert not _rules_cgroups()
