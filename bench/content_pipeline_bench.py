"""Content pipeline benchmark (issue: safe content): validating a package, a published release's way to
active on one host, the engine's dead time during a revert, and what a shadow instance costs.

1. `content validate` (in process: agent/_validate.validate_package) on the default Sigma pack and on a
   package built with `ringfence content build` from SigmaHQ's Linux rules (/work/shared/data/sigmahq,
   read at bench time, never copied into the repo). The gauntlet has no stage timer, so its stages are
   taken apart by running it twice: with no fuzzing (structure, contract, static checks and the sandboxed
   load, one child) and with the fuzz stage's set time. Baselines: the root side's structure check alone,
   and parsing the same rules with pySigma in this process. No corpus is replayed (the repo has none).
2. Publish to active: a TUF repository (`content keys init`, `content publish`), `content serve` on
   loopback, one real `ringfence run` following it (`update_interval_s = 1`) with only the Sigma engine
   and its marks on the bench's own tmpfs (no audit: the process connector feeds it). Times from the
   start of `publish` to: staged on the host, baking in a shadow, active, proven good (its trial).
   Once with `shadow_bake_s = 0` and once with a bake (300 s by default; the bench uses a shorter one,
   and the time to active is that bake plus the overhead of the run with none).
3. Revert dead time: `content rollback ringfence.sigma` while this process reads the agent's status
   socket every 20 ms; dead time is the time no instance of the engine was seen `running`.
4. Shadow cost: while a release bakes, 1,000 execs of /bin/true on the tmpfs; each instance's RSS and CPU
   (its processes, from /proc: this machine's memory and cpu cgroups are v1), shadow against active.

Needs root and the e2e lock: sudo flock /run/ringfence-e2e.lock .venv/bin/python bench/run.py --only pipeline
Everything it starts (agent, server, tmpfs) is stopped and removed, on error and Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil

from bench._common import RINGFENCE, stop, table
from ringfence.agent import read_status
from ringfence.agent._config import ExtensionsSection
from ringfence.agent._validate import ValidateOptions, check_structure, read_package, validate_package
from ringfence.content._default import DEFAULT_PACK_DIR
from ringfence.events import Health

SIGMAHQ = Path("/work/shared/data/sigmahq")
ENGINE = "ringfence.sigma"
POLL_S = 0.02


# --- 1. validation ------------------------------------------------------------------------------------


def _pysigma_parse(files: list[Path]) -> tuple[float, int]:
    from sigma.collection import SigmaCollection

    t0 = time.perf_counter()
    bad = 0
    for f in files:
        try:
            SigmaCollection.from_yaml(f.read_text(), collect_errors=True)
        except Exception:  # a baseline: a rule pySigma refuses is counted, not fatal
            bad += 1
    return time.perf_counter() - t0, bad


def _structure_s(path: str) -> float:
    t0 = time.perf_counter()
    check_structure(read_package(path, []), [])
    return time.perf_counter() - t0


def _validate(path: str, fuzz_s: float) -> tuple[float, object]:
    t0 = time.perf_counter()
    report = validate_package(path, ExtensionsSection(), ValidateOptions(fuzz_s=fuzz_s))
    return time.perf_counter() - t0, report


def _sigmahq_package(tmp: Path) -> tuple[Path, float, int]:
    """SigmaHQ's Linux rules flattened into one folder, built into a package. (path, build s, rules)."""
    src = tmp / "sigmahq-linux"
    src.mkdir()
    rules = sorted(SIGMAHQ.rglob("*.yml"))
    for f in rules:
        shutil.copyfile(f, src / "__".join(f.relative_to(SIGMAHQ).parts))
    pkg = tmp / "sigmahq-linux.tar"
    t0 = time.perf_counter()
    subprocess.run([*RINGFENCE, "content", "build", str(src), "-o", str(pkg), "--version", "1.0"], check=True,
                   capture_output=True)  # fmt: skip
    return pkg, time.perf_counter() - t0, len(rules)


def validation(tmp: Path, fuzz_s: float) -> tuple[str, list[str]]:
    default = os.path.join(DEFAULT_PACK_DIR, "sigma")
    packages = [("default pack", default, sorted(Path(default).glob("*.yml")), None)]
    notes: list[str] = []
    if SIGMAHQ.is_dir():
        pkg, build_s, _ = _sigmahq_package(tmp)
        packages.append(("SigmaHQ linux", str(pkg), sorted(SIGMAHQ.rglob("*.yml")), build_s))
    else:
        notes.append(f"{SIGMAHQ} missing: SigmaHQ rows skipped")
    rows: list[tuple[object, ...]] = []
    for label, path, files, build_s in packages:
        parse_s, parse_bad = _pysigma_parse(files)
        struct_s = _structure_s(path)
        no_fuzz_s, _ = _validate(path, 0)
        full_s, full = _validate(path, fuzz_s)
        issues = full.issues  # type: ignore[attr-defined]
        refused = {i.file for i in issues if i.severity == "error" and i.stage == "contract"}
        static_err = {i.file for i in issues if i.severity == "error" and i.stage != "contract"}
        warned = {i.file for i in issues if i.severity == "warning"}
        b, n = parse_s, len(files)
        fuzz_note = f"fuzz stage {full_s - no_fuzz_s:.1f} s, {full.fuzz_events} events"  # type: ignore[attr-defined]
        rows += [
            (label, "pySigma parse, in process (baseline)", n, f"{b:.2f}", "1.00", f"{parse_bad} unparsed"),
            (label, "structure (root side: bytes, sha256)", n, f"{struct_s:.2f}", f"{struct_s / b:.2f}", ""),
            (label, "validate, no fuzz (contract, static, sandboxed load)", n, f"{no_fuzz_s:.2f}",
             f"{no_fuzz_s / b:.2f}", ""),
            (label, f"validate, fuzz {fuzz_s:g} s (its set time)", n, f"{full_s:.2f}", f"{full_s / b:.2f}",
             fuzz_note),
        ]  # fmt: skip
        if build_s is not None:
            rows.append((label, "content build (CLI, incl. interpreter start)", len(files), f"{build_s:.2f}",
                         f"{build_s / b:.2f}", ""))  # fmt: skip
        notes.append(
            f"{label}: {len(full.blocking)} blocking issues; files refused by the contract: {len(refused)}, "  # type: ignore[attr-defined]
            f"with other blocking issues: {len(static_err - refused)}, with warnings: {len(warned)}"
        )
        for i in full.blocking[:8]:  # type: ignore[attr-defined]
            notes.append(f"  {i.stage} {i.file}:{i.line or ''} {i.message[:140]}")
    head = ("package", "step", "rules", "seconds", "x baseline", "")
    return table(
        "Content validation (seconds, against parsing the same rules with pySigma)", head, rows
    ), notes


# --- the host: a repository, a server, one agent -------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "rf-bench-pipeline", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def _proc(args: list[str], **kw: object) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        stop(proc)


def _cli(*args: str) -> None:
    subprocess.run([*RINGFENCE, *args], check=True, capture_output=True)


class Host:
    """A signed repository served on loopback and one agent following it, in `tmp`."""

    def __init__(self, tmp: Path, mnt: Path, bake_s: float, url: str, keys: Path) -> None:
        self.state = tmp / "state"
        self.config = tmp / "agent.toml"
        self.config.write_text(
            f'[agent]\nstate_dir = "{self.state}"\nlog_level = "warning"\n'
            f"[sensors]\naudit_exec = false\nnetwork = false\nfile = false\naudit_events = false\n"
            f'audit_identity = false\naudit_baseline = false\nlogs = false\nfile_paths = ["{mnt}"]\n'
            f'exec_mounts = ["{mnt}"]\nclose_write_paths = []\naudit_key = "rf-b-{uuid.uuid4().hex[:8]}"\n'
            f'[output]\nconsole_interval_s = 0\n[extensions]\nenabled = ["{ENGINE}"]\ndefault_pack = false\n'
            f'[content]\nurl = "{url}"\nroot = "{keys / "root.json"}"\nupdate_interval_s = 1\n'
            f"failure_grace_s = 3600\nshadow_bake_s = {bake_s}\n"
        )

    def health(self) -> Health | None:
        try:
            return msgspec.json.decode(read_status(str(self.state), 2.0), type=Health)
        except Exception:  # not up yet, or between two documents: poll again
            return None


def _publish(tmp: Path, repo: Path, keys: Path, version: str) -> None:
    pkg = tmp / f"pkg-{version}"
    pkg.mkdir()
    for f in sorted(Path(DEFAULT_PACK_DIR, "sigma").glob("*.yml")):
        shutil.copyfile(f, pkg / f.name)
    (pkg / "manifest.toml").write_text(f'name = "bench-sigma"\nengine = "{ENGINE}"\nversion = "{version}"\n')
    _cli("content", "publish", str(pkg), "--repo", str(repo), "--keys", str(keys))


def _content(h: Health) -> tuple[str, str, bool, str, list[str]]:
    """(active, good, trial, shadow, staged) of the Sigma engine."""
    c = h.content.extensions.get(ENGINE) if h.content else None
    u = h.content_updates.engines.get(ENGINE) if h.content_updates else None
    staged = u.staged if u else []
    return (c.active, c.good, c.trial, c.shadow, staged) if c else ("", "", False, "", staged)


def _wait(
    host: Host, done: Callable[[Health], bool], timeout_s: float, agent: subprocess.Popen[str]
) -> Health:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited ({agent.returncode})")
        h = host.health()
        if h is not None and done(h):
            return h
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s:g} s; last status: {host.health()}")


def _release(host: Host, tmp: Path, repo: Path, keys: Path, version: str, agent: subprocess.Popen[str],
             timeout_s: float, during_bake: Callable[[], None] | None = None,
             baked: bool = False) -> dict[str, float]:  # fmt: skip
    """Publish `version`; seconds from the start of publish to each milestone."""
    t0 = time.monotonic()
    _publish(tmp, repo, keys, version)
    marks = {"published": time.monotonic() - t0}
    deadline = t0 + timeout_s
    while "proven" not in marks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{version} not proven within {timeout_s:g} s: {host.health()}")
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited ({agent.returncode})")
        h = host.health()
        if h is not None:
            active, good, trial, shadow, staged = _content(h)
            now = time.monotonic() - t0
            if version in staged:
                marks.setdefault("staged", now)
            if version in shadow:
                marks.setdefault("shadow", now)
                if during_bake is not None:
                    during_bake()
                    during_bake = None
            if active == version and not shadow and (not baked or "shadow" in marks):
                marks.setdefault("active", now)  # (the status names the version active just before its bake)
            if active == version:
                marks.setdefault("named active", now)
            if active == good == version and not trial:
                marks.setdefault("proven", now)
        time.sleep(POLL_S)
    return marks


@contextlib.contextmanager
def _host(tmp: Path, bake_s: float) -> Iterator[tuple[Host, Path, Path, subprocess.Popen[str]]]:
    keys, repo = tmp / "keys", tmp / "repo"
    tmp.mkdir()
    os.chmod(tmp, 0o711)  # the sandboxed engine reaches its content under the state dir
    _cli("content", "keys", "init", str(keys))
    _publish(tmp, repo, keys, "1.0")
    with (
        _tmpfs(tmp / "mnt") as mnt,
        _proc([*RINGFENCE, "content", "serve", str(repo), "--listen", "127.0.0.1:0"],
              stdout=subprocess.PIPE) as srv,
    ):  # fmt: skip
        assert srv.stdout is not None
        url = srv.stdout.readline().split(" on ", 1)[1].split("/ ", 1)[0]
        host = Host(tmp, mnt, bake_s, url, keys)
        with _proc([*RINGFENCE, "run", "--config", str(host.config)], stdout=subprocess.DEVNULL) as agent:
            _wait(host, lambda h: _content(h)[0] == _content(h)[1] == "1.0" and not _content(h)[2],
                  bake_s + 120, agent)  # fmt: skip
            yield host, repo, keys, agent


# --- 2, 3, 4 ---------------------------------------------------------------------------------------------


def _usage(pid: int) -> dict[str, int]:
    """RSS and CPU of the instance's process and its children (this machine's memory and cpu controllers
    are cgroup v1, where the instance's cgroup counts page cache too: /proc is the like-for-like)."""
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    cpu = sum(sum(q.cpu_times()[:2]) for q in procs)
    return {"cpu_us": int(cpu * 1e6), "mem": sum(q.memory_info().rss for q in procs)}


def _exec_load(mnt: Path, n: int) -> float:
    prog = mnt / "bench-true"
    shutil.copy2("/bin/true", prog)
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt {n} ]; do {prog}; i=$((i+1)); done"], check=True)
    return time.perf_counter() - t0


def shadow_cost(host: Host, n: int) -> tuple[list[tuple[object, ...]], str]:
    """Both instances' cgroups over the same `n` execs (called while a release bakes)."""
    ids = (ENGINE, f"{ENGINE}@shadow")
    deadline = time.monotonic() + 30
    while True:  # the shadow instance is announced before its process runs
        h = host.health()
        pids = (
            {e.id: e.pid for e in h.extensions if e.id in ids and e.pid and e.state == "running"} if h else {}
        )
        if len(pids) == 2 or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    before = {i: _usage(p) for i, p in pids.items()}
    took = _exec_load(Path(str(host.config.parent / "mnt")), n)
    after = {i: _usage(p) for i, p in pids.items()}
    h = host.health()
    events = {e.id: e.events_delivered for e in h.extensions} if h else {}
    rows = []
    base = after.get(ENGINE)
    for i in (ENGINE, f"{ENGINE}@shadow"):
        if i not in after:
            rows.append((i, "not running during the load", "", "", "", ""))
            continue
        cpu_ms = (after[i]["cpu_us"] - before[i]["cpu_us"]) / 1e3
        base_cpu = (base["cpu_us"] - before[ENGINE]["cpu_us"]) / 1e3 if base else 0
        rows.append((
            f"{i} ({'shadow' if '@' in i else 'active'})",
            f"{before[i]['mem'] / 2**20:.1f}", f"{after[i]['mem'] / 2**20:.1f}",
            f"{cpu_ms:.0f}", f"{cpu_ms / n * 1e3:.0f}",
            f"{after[i]['mem'] / base['mem']:.2f} / {cpu_ms / base_cpu:.2f}" if base and base_cpu else "",
        ))  # fmt: skip
    return rows, (
        f"{n} execs took {took:.1f} s; events delivered since start: active "
        f"{events.get(ENGINE, '?')}, shadow {events.get(f'{ENGINE}@shadow', '?')}"
    )


def revert_dead_time(host: Host, agent: subprocess.Popen[str], to: str) -> tuple[object, ...]:
    """`content rollback` (to the kept slot before the active one, `to`), the engine's instances polled
    every POLL_S: the time none was seen running."""
    seen_down = 0.0
    t0 = time.monotonic()
    proc = subprocess.Popen([*RINGFENCE, "content", "rollback", ENGINE, "--state-dir", str(host.state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    polls = 0
    last = time.monotonic()
    down_since: float | None = None
    while time.monotonic() - t0 < 20:
        h = host.health()
        now = time.monotonic()
        polls += 1
        running = h is not None and any(
            e.id.startswith(ENGINE) and e.state == "running" for e in h.extensions
        )
        if h is not None and not running and down_since is None:
            down_since = last
        if running and down_since is not None:
            seen_down += now - down_since
            down_since = None
        last = now
        if proc.poll() is not None and h is not None and _content(h)[0] == to and running:
            break
        time.sleep(POLL_S)
    out = proc.communicate()[0].strip()
    took = time.monotonic() - t0
    gap = "0 (never seen down)" if seen_down == 0 else f"{seen_down * 1e3:.0f} ms"
    return ("content rollback (operator)", f"{took:.2f}", polls, f"{took / polls * 1e3:.0f}", gap, out[:80])


def publish_to_active(tmp: Path, quick: bool) -> tuple[str, str, str]:
    rounds, bake_s, n_exec = (1, 10.0, 200) if quick else (3, 60.0, 1000)
    rows: list[tuple[object, ...]] = []
    revert_rows: list[tuple[object, ...]] = []
    with _host(tmp / "nobake", 0) as (host, repo, keys, agent):
        for r in range(rounds):
            m = _release(host, tmp / "nobake", repo, keys, f"{2 + r}.0", agent, 120)
            rows.append(("shadow_bake_s = 0", f"{2 + r}.0", *_marks(m)))
        revert_rows.append(revert_dead_time(host, agent, f"{rounds}.0"))  # the kept slot before the active
    base = min(float(r[7]) for r in rows)
    cost: list[tuple[list[tuple[object, ...]], str]] = []
    with _host(tmp / "bake", bake_s) as (host, repo, keys, agent):
        m = _release(host, tmp / "bake", repo, keys, "2.0", agent, bake_s + 120,
                     during_bake=lambda: cost.append(shadow_cost(host, n_exec)), baked=True)  # fmt: skip
        rows.append((f"shadow_bake_s = {bake_s:g}", "2.0", *_marks(m)))
    rows = [(*r, f"{float(r[7]) / base:.2f}") for r in rows]
    head = (
        "config",
        "version",
        "published",
        "staged",
        "status says active",
        "shadow",
        "active",
        "proven",
        "x no-bake active",
    )
    t2 = table("Publish to active on one host (seconds from the start of `content publish`)", head, rows)
    head3 = ("action", "took s", "status polls", "ms/poll", "engine dead time", "rollback said")
    t3 = table("Revert dead time (goal: 0)", head3, revert_rows)
    head4 = ("instance", "RSS before MiB", "RSS after MiB", "CPU ms", "CPU us/exec", "x active (mem / CPU)")
    t4 = table(f"Shadow cost over the same {n_exec} execs (RSS and CPU of each instance's processes)", head4,
               cost[0][0] if cost else [])  # fmt: skip
    t4 += "\n" + (cost[0][1] if cost else "the bake ended before the load could run")
    return t2, t3, t4


def _marks(m: dict[str, float]) -> tuple[str, ...]:
    return tuple(
        f"{m[k]:.2f}" if k in m else "-"
        for k in ("published", "staged", "named active", "shadow", "active", "proven")
    )


def run(quick: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="rf-bench-pipeline-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o711)  # the sandboxed engine passes through to its content in the state dir
        t1, notes = validation(tmp, 2.0 if quick else 10.0)
        out = [t1, *notes]
        out += publish_to_active(tmp, quick)
    return "\n\n".join(out[:1]) + "\n" + "\n".join(out[1:-3]) + "\n\n" + "\n\n".join(out[-3:])
