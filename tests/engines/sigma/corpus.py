"""Events for the differential test and the benchmark, and pySigma's SQLite backend as the reference.

`ordinary_events` is a realistic Linux mix (shells, compilers, package managers, git, services, file
writes, connections) drawn from a seeded RNG; `detection_events` the same for the detection sensors'
kinds (audit events of several records, log lines of sshd, sudo, cron and the rest, DNS queries and
responses). `attack_events` is made from the rules themselves: for
each rule, an event that satisfies one branch of its condition (and a case-changed twin), so most rules
match something and the comparison means something. `Reference` loads the same rules into SQLite
queries (one table per logsource, text columns COLLATE NOCASE as Zircolite builds them, a `_text`
column for keywords; an audit event is one row per record, as auditd logs a line per record) and
answers which (rule, event) pairs match.
"""

from __future__ import annotations

import random
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule

from ringfence.engines.sigma import LOGSOURCES, Logsource, RuleSet, logsources_of
from ringfence.engines.sigma._compile import Node, Str
from ringfence.engines.sigma._fields import _LOG_SERVICES, field_spec, keyword_text, subjects
from ringfence.sdk import (
    AuditEvent,
    AuditRecord,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    Event,
    FileActivity,
    FileActivityId,
    Header,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

SIGMAHQ = Path(__file__).resolve().parents[4] / "shared" / "data" / "sigmahq"
LINUX_RULE_DIRS = (
    SIGMAHQ / "rules" / "linux",
    SIGMAHQ / "rules-emerging-threats",
    SIGMAHQ / "rules-threat-hunting",
)

_COMMANDS = [
    ("/usr/bin/ls", "ls -la {d}"),
    ("/usr/bin/cat", "cat {f}"),
    ("/usr/bin/grep", "grep -rn TODO {d}"),
    ("/usr/bin/git", "git status"),
    ("/usr/bin/git", "git commit -m fix -- {f}"),
    ("/usr/bin/git", "git pull --rebase origin main"),
    ("/usr/bin/gcc", "gcc -O2 -c {f}.c -o {f}.o"),
    ("/usr/bin/make", "make -j8"),
    ("/usr/bin/python3", "python3 -m pytest -q"),
    ("/usr/bin/python3", "python3 /usr/lib/command-not-found -- foo"),
    ("/usr/bin/pip", "pip install -r requirements.txt"),
    ("/usr/bin/npm", "npm install"),
    ("/usr/bin/apt-get", "apt-get install -y libssl-dev"),
    ("/usr/bin/dpkg", "dpkg --configure -a"),
    ("/usr/bin/systemctl", "systemctl status nginx"),
    ("/usr/bin/journalctl", "journalctl -u ssh --since today"),
    ("/usr/bin/ssh", "ssh -p 22 deploy@10.0.3.4"),
    ("/usr/bin/curl", "curl -fsS https://api.github.com/repos/x/y"),
    ("/usr/bin/wget", "wget -q https://deb.debian.org/debian/dists/stable/Release"),
    ("/usr/bin/tar", "tar -czf /var/backups/home.tgz /home/alice"),
    ("/usr/bin/rsync", "rsync -a /srv/ backup:/srv/"),
    ("/usr/sbin/logrotate", "/usr/sbin/logrotate /etc/logrotate.conf"),
    ("/usr/bin/find", "find {d} -name *.log -mtime +7 -delete"),
    ("/usr/bin/sed", "sed -i s/foo/bar/ {f}"),
    ("/usr/bin/bash", "bash -c {f}"),
    ("/usr/bin/sh", "/bin/sh -c run-parts /etc/cron.daily"),
    ("/usr/bin/sudo", "sudo systemctl restart nginx"),
    ("/usr/bin/docker", "docker ps -a"),
    ("/usr/bin/vim", "vim {f}"),
    ("/usr/bin/chmod", "chmod 644 {f}"),
]
_PARENTS = ["/usr/bin/bash", "/usr/bin/zsh", "/usr/sbin/cron", "/usr/lib/systemd/systemd", "/usr/sbin/sshd"]
_DIRS = ["/home/alice/src", "/tmp", "/var/log", "/srv/www", "/home/bob/.cache", "/etc/nginx"]
_USERS = ["alice", "bob", "root", "www-data", "postgres"]
_IPS = ["10.0.3.4", "140.82.121.3", "151.101.1.69", "192.168.1.10", "8.8.8.8", "2a04:4e42::81"]
_PORTS = [443, 80, 22, 53, 5432, 8080]


class _Seq:
    def __init__(self) -> None:
        self.n = 0

    def header(self) -> Header:
        self.n += 1
        return Header(
            id=uuid.UUID(int=self.n).hex, time_ns=self.n, mono_ns=self.n, host="h", sensor="gen", seq=self.n
        )


def _proc(rng: random.Random, exe: str, cmdline: str, **over: Any) -> ProcessRef:
    parent_exe = over.pop("parent_exe", rng.choice(_PARENTS))
    parent_cmd = over.pop("parent_cmdline", parent_exe.rsplit("/", 1)[-1])
    user = over.pop("user", rng.choice(_USERS))
    parent = ProcessRef(pid=100, exe=parent_exe, cmdline=(parent_cmd,), user=user)
    fields = {
        "pid": rng.randint(200, 60000),
        "ppid": 100,
        "exe": exe,
        "cmdline": (cmdline,),
        "user": user,
        "cwd": rng.choice(_DIRS),
        "parent": parent,
    }
    fields.update(over)
    return ProcessRef(**fields)


def ordinary_events(n: int, seed: int = 7) -> list[Event]:
    """`n` events: about 60 % execs, 30 % file changes, 10 % connections."""
    rng, seq = random.Random(seed), _Seq()
    out: list[Event] = []
    for _ in range(n):
        roll = rng.random()
        d = rng.choice(_DIRS)
        f = f"{d}/{rng.choice(['main', 'notes', 'app', 'index', 'data'])}{rng.randint(0, 99)}"
        if roll < 0.6:
            exe, cmd = rng.choice(_COMMANDS)
            out.append(
                ProcessActivity(
                    header=seq.header(),
                    activity=ProcessActivityId.LAUNCH,
                    process=_proc(rng, exe, cmd.format(d=d, f=f)),
                )
            )
        elif roll < 0.9:
            activity = rng.choice([FileActivityId.CREATE, FileActivityId.CLOSE_WRITE, FileActivityId.DELETE])
            out.append(
                FileActivity(
                    header=seq.header(),
                    activity=activity,
                    path=f + ".txt",
                    process=_proc(rng, "/usr/bin/vim", "vim"),
                )
            )
        else:
            ip = rng.choice(_IPS)
            family = "inet6" if ":" in ip else "inet"
            out.append(
                NetworkActivity(
                    header=seq.header(),
                    activity=NetworkActivityId.OPEN,
                    syscall="connect",
                    success=True,
                    local=Endpoint(family=family, ip="10.0.0.5", port=rng.randint(30000, 60000)),
                    remote=Endpoint(family=family, ip=ip, port=rng.choice(_PORTS)),
                    process=_proc(rng, "/usr/bin/curl", "curl"),
                )
            )
    return out


_EXECS = [
    ("ls", "-la", "/home/alice"),
    ("git", "status"),
    ("make", "-j8"),
    ("tar", "-xzf", "src.tgz"),
    ("systemctl", "status", "nginx"),
    ("grep", "-rn", "TODO", "src"),
    ("chmod", "644", "notes.txt"),
    ("id",),
]
_WATCHED = ["/etc/passwd", "/etc/ld.so.preload", "/etc/cron.d/backup", "/etc/profile", "/tmp/app.log"]
_LOG_LINES = [
    ("sshd", "/var/log/auth.log", "Accepted publickey for alice from 10.0.3.4 port 51234 ssh2"),
    ("sshd", "/var/log/auth.log", "Disconnected from user alice 10.0.3.4 port 51234"),
    (
        "sudo",
        "/var/log/auth.log",
        "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
    ),
    ("CRON", "/var/log/syslog", "(root) CMD (run-parts /etc/cron.hourly)"),
    ("systemd", "/var/log/syslog", "Started Daily apt download activities."),
    ("kernel", "journal", "eth0: link up, 1000 Mbps full duplex"),
    ("su", "/var/log/auth.log", "(to root) alice on pts/1"),
    ("rsyslogd", "/var/log/messages", "rsyslogd was HUPed"),
]
_NAMES = ["deb.debian.org", "api.github.com", "pypi.org", "registry.npmjs.org", "example.internal"]


def _audit(seq: _Seq, rng: random.Random, records: list[AuditRecord]) -> AuditEvent:
    process = _proc(rng, "/usr/bin/bash", "bash")
    return AuditEvent(
        header=seq.header(), serial=seq.n, time_ns=seq.n, records=tuple(records), process=process
    )


def _syscall(name: str, number: int, exe: str, key: str | None = None, **more: str) -> AuditRecord:
    fields = {"arch": "c000003e", "syscall": str(number), "success": "yes", "exit": "0", "a0": "3"}
    fields.update({"comm": exe.rsplit("/", 1)[-1], "exe": exe, "SYSCALL": name, "ARCH": "x86_64", **more})
    if key is not None:
        fields["key"] = key
    return AuditRecord(type="SYSCALL", fields=fields)


def detection_events(n: int, seed: int = 13) -> list[Event]:
    """`n` events of the detection kinds: about 40 % audit events (an exec's SYSCALL, EXECVE, CWD, PATH
    and PROCTITLE records, or a watched file's SYSCALL and PATH), 40 % log lines, 10 % DNS queries and
    responses (one or two answers), 10 % connections to an address with a host name."""
    rng, seq = random.Random(seed), _Seq()
    seq.n = 1 << 30
    out: list[Event] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.2:
            argv = rng.choice(_EXECS)
            execve = AuditRecord(
                type="EXECVE", fields={"argc": str(len(argv)), **{f"a{i}": a for i, a in enumerate(argv)}}
            )
            records = [
                _syscall("execve", 59, f"/usr/bin/{argv[0]}", "ringfence"),
                execve,
                AuditRecord(type="CWD", fields={"cwd": rng.choice(_DIRS)}),
                AuditRecord(
                    type="PATH", fields={"item": "0", "name": f"/usr/bin/{argv[0]}", "nametype": "NORMAL"}
                ),
                AuditRecord(type="PROCTITLE", fields={"proctitle": " ".join(argv)}),
            ]
            out.append(_audit(seq, rng, records))
        elif roll < 0.4:
            path = rng.choice(_WATCHED)
            records = [
                _syscall("openat", 257, "/usr/bin/vim", "ringfence:identity"),
                AuditRecord(
                    type="PATH",
                    fields={"item": "1", "name": path, "nametype": rng.choice(["NORMAL", "CREATE"])},
                ),
            ]
            out.append(_audit(seq, rng, records))
        elif roll < 0.8:
            program, source, message = rng.choice(_LOG_LINES)
            out.append(
                LogEvent(
                    header=seq.header(),
                    source=source,
                    message=message,
                    program=program,
                    pid=rng.randint(2, 9999),
                )
            )
        elif roll < 0.9:
            name = rng.choice(_NAMES)
            query = DnsQuery(hostname=name, type=rng.choice(["A", "AAAA"]), dns_class="IN")
            response = rng.random() < 0.5
            out.append(
                DnsActivity(
                    header=seq.header(),
                    activity=DnsActivityId.RESPONSE if response else DnsActivityId.QUERY,
                    query=query,
                    answers=tuple(
                        DnsAnswer(name=name, type="A", data=ip)
                        for ip in rng.sample(_IPS[:5], rng.randint(1, 2))
                    )
                    if response
                    else (),
                    process=None if response else _proc(rng, "/usr/bin/curl", "curl"),
                )
            )
        else:  # a connection to an address the DNS sensor learnt a name for
            out.append(
                NetworkActivity(
                    header=seq.header(),
                    activity=NetworkActivityId.OPEN,
                    syscall="connect",
                    success=True,
                    local=Endpoint(family="inet", ip="10.0.0.5", port=rng.randint(30000, 60000)),
                    remote=Endpoint(
                        family="inet", ip=rng.choice(_IPS[:5]), port=443, hostname=rng.choice(_NAMES)
                    ),
                    process=_proc(rng, "/usr/bin/curl", "curl"),
                )
            )
    return out


def _assign(node: Node, atoms: Sequence[Any], values: dict[str, str]) -> None:
    """Make `values` satisfy one branch of `node` where literals can (regexes and negations skipped)."""
    op = node[0]
    if op == "atom":
        atom = atoms[node[1]]
        if isinstance(atom, Str) and atom.field is None:
            values[KEYWORDS] = f"{values.get(KEYWORDS, '')} {atom.text} "
        elif isinstance(atom, Str):
            old = values.get(atom.field, "")
            text = atom.text
            if atom.kind == "exact":
                values[atom.field] = text
            elif atom.kind == "prefix":
                values[atom.field] = text + old
            elif atom.kind == "suffix":
                values[atom.field] = old + text
            else:
                values[atom.field] = f"{old} {text} " if old else f"x {text} y"
    elif op == "and":
        for child in node[1]:
            _assign(child, atoms, values)
    elif op == "or":
        _assign(node[1][0], atoms, values)


KEYWORDS = "\x00keywords"  # where `_assign` puts the keywords an event's text must hold


def _event(source: Logsource, v: dict[str, str], seq: _Seq, rng: random.Random) -> Event:
    def num(name: str, default: int) -> int:
        raw = v.get(name)
        return int(raw) if raw is not None and raw.isdigit() else default

    proc = _proc(
        rng,
        v.get("Image", "/usr/bin/true"),
        v.get("CommandLine", "true"),
        parent_exe=v.get("ParentImage", "/usr/bin/bash"),
        parent_cmdline=v.get("ParentCommandLine", "bash"),
        user=v.get("User", "root"),
        cwd=v.get("CurrentDirectory", "/root"),
    )
    if source is Logsource.PROCESS_CREATION:
        return ProcessActivity(header=seq.header(), activity=ProcessActivityId.LAUNCH, process=proc)
    made = _detection_event(source, v, seq, proc)
    if made is not None:
        return made
    if source is Logsource.NETWORK_CONNECTION:
        ip = v.get("DestinationIp", "203.0.113.9")
        family = "inet6" if ":" in ip else "inet"
        return NetworkActivity(
            header=seq.header(),
            activity=NetworkActivityId.OPEN,
            syscall="accept" if v.get("Initiated") == "false" else "connect",
            success=True,
            local=Endpoint(family=family, ip=v.get("SourceIp", "10.0.0.5"), port=num("SourcePort", 40000)),
            remote=Endpoint(
                family=family, ip=ip, port=num("DestinationPort", 443), hostname=v.get("DestinationHostname")
            ),
            process=proc,
        )
    activity = {
        Logsource.FILE_DELETE: FileActivityId.DELETE,
        Logsource.FILE_CHANGE: FileActivityId.CLOSE_WRITE,
    }.get(source, FileActivityId.CREATE)
    return FileActivity(
        header=seq.header(), activity=activity, path=v.get("TargetFilename", "/tmp/x"), process=proc
    )


def _detection_event(source: Logsource, v: dict[str, str], seq: _Seq, proc: ProcessRef) -> Event | None:
    """An audit event (its one record built from the values, keywords in a field of their own), a log
    line of the logsource's program (keywords in its message), or a DNS query or response."""
    keywords = v.get(KEYWORDS, "")
    if source is Logsource.AUDITD:
        fields = {k: x for k, x in v.items() if k not in ("type", KEYWORDS)}
        if keywords:
            fields["kw"] = keywords
        record = AuditRecord(type=v.get("type", "SYSCALL"), fields=fields)
        return AuditEvent(header=seq.header(), serial=seq.n, time_ns=seq.n, records=(record,), process=proc)
    if source in (Logsource.DNS_QUERY, Logsource.DNS):
        query = DnsQuery(
            hostname=v.get("QueryName", v.get("query", "x.example")),
            type=v.get("QueryType", v.get("record_type")),
        )
        answers = (DnsAnswer(name=query.hostname, type="A", data=v["answer"]),) if "answer" in v else ()
        activity = DnsActivityId.QUERY if source is Logsource.DNS_QUERY else DnsActivityId.RESPONSE
        return DnsActivity(header=seq.header(), activity=activity, query=query, answers=answers, process=proc)
    if not LOGSOURCES[source] or source is Logsource.SUDO:
        pairs = " ; ".join(f"{k}={x}" for k, x in v.items() if k != KEYWORDS)
        message = f"alice : {pairs} ; {keywords}" if pairs else keywords or "nothing"
        programs = sorted(_LOG_SERVICES.get(source, {"pkexec" if source is Logsource.AUTH else "kernel"}))
        return LogEvent(header=seq.header(), source="/var/log/auth.log", message=message, program=programs[0])
    return None


def attack_events(ruleset: RuleSet, seed: int = 11) -> list[Event]:
    """Per active rule: an event built to satisfy it, and the same with its values upper-cased."""
    rng, seq = random.Random(seed), _Seq()
    seq.n = 1 << 40
    out: list[Event] = []
    for source, index in ruleset.indexes.items():
        atoms = index.atom_list()
        for rule in index.rules():
            values: dict[str, str] = {}
            _assign(rule.tree, atoms, values)
            out.append(_event(source, values, seq, rng))
            out.append(_event(source, {k: x.upper() for k, x in values.items()}, seq, rng))
    return out


class Reference:
    """The same rules as SQLite queries through pySigma's SQLite backend."""

    def __init__(self, rule_dirs: Sequence[Path]) -> None:
        files = sorted(str(p) for d in rule_dirs for p in d.rglob("*.yml"))
        collection = SigmaCollection.load_ruleset(files, collect_errors=True)
        self.db = sqlite3.connect(":memory:")
        self.db.create_function("REGEXP", 2, _regexp, deterministic=True)
        self.queries: dict[Logsource, list[tuple[str, str]]] = {s: [] for s in LOGSOURCES}
        self.skipped: dict[str, str] = {}
        self.columns = {source: _columns(source) for source in LOGSOURCES}
        for source, names in self.columns.items():
            columns = "".join(
                f', "{name}" {"INTEGER" if field_spec(source, name).numeric else "TEXT COLLATE NOCASE"}'  # type: ignore[union-attr]
                for name in names
            )
            self.db.execute(f'CREATE TABLE "{source}" (event_ INTEGER, _text TEXT COLLATE NOCASE{columns})')
        backend = sqliteBackend(fulltext_field="_text")
        for rule in collection.rules:
            if not isinstance(rule, SigmaRule) or rule.errors:
                continue
            name = rule.logsource.category or rule.logsource.service or "builtin"
            if name not in {str(s) for s in LOGSOURCES} or rule.logsource.product not in (None, "linux"):
                continue
            try:
                queries = backend.convert_rule(rule)  # one per condition; they are OR-ed
            except Exception as e:  # a rule the backend cannot convert: the test lists it
                self.skipped[str(rule.id)] = f"{type(e).__name__}: {e}"
                continue
            source = Logsource(name)
            for query in queries:
                self.queries[source].append((str(rule.id), query.replace("FROM logs", f'FROM "{source}"', 1)))

    def load(self, events: Sequence[Event]) -> None:
        for source, names in self.columns.items():
            getters = [field_spec(source, n).getter for n in names]  # type: ignore[union-attr]
            rows = []
            for i, event in enumerate(events):
                if source not in logsources_of(event):
                    continue
                for subject in subjects(source, event):  # an audit event: a row per record
                    vals = [g(subject) for g in getters]  # type: ignore[misc]
                    text = keyword_text(source, subject)
                    if text is None:
                        text = "\n".join(str(x) for x in vals if x is not None and x != "")
                    rows.append((i, text, *vals))
            cols = "".join(f', "{n}"' for n in names)
            marks = ", ".join("?" * (len(names) + 2))
            self.db.executemany(f'INSERT INTO "{source}" (event_, _text{cols}) VALUES ({marks})', rows)

    def matches(self) -> set[tuple[str, int]]:
        out = set()
        for queries in self.queries.values():
            for rule_id, query in queries:
                sql = query.replace("SELECT *", "SELECT DISTINCT event_", 1)
                out.update((rule_id, row[0]) for row in self._execute(sql))
        return out

    def _execute(self, sql: str) -> list[Any]:
        """The query's rows; a field no column holds is added, empty (a field we do not supply is absent)."""
        while True:
            try:
                return self.db.execute(sql).fetchall()
            except sqlite3.OperationalError as e:
                table = re.search(r'FROM "(\w+)"', sql)
                missing = re.fullmatch(r"no such column: (\w+)", str(e))
                if table is None or missing is None:
                    raise
                self.db.execute(f'ALTER TABLE "{table[1]}" ADD COLUMN "{missing[1]}" TEXT')

    def clear(self) -> None:
        for source in self.columns:
            self.db.execute(f'DELETE FROM "{source}"')


def _columns(source: Logsource) -> list[str]:
    """The supplied fields as columns; for auditd also a0..a15, and of names that differ only in case
    (SQLite's column names do not) the upper-case one: rules write SYSCALL (the name), not syscall."""
    names = [n for n, spec in LOGSOURCES[source].items() if spec.getter is not None]
    if source is Logsource.AUDITD:
        names += [f"a{i}" for i in range(16) if f"a{i}" not in names]
    folded = [n.lower() for n in names]
    return [n for n in names if n == n.upper() or folded.count(n.lower()) == 1]


def _regexp(pattern: str, value: object) -> bool:
    return value is not None and re.search(pattern, str(value)) is not None


def engine_matches(ruleset: RuleSet, events: Sequence[Event]) -> Iterator[tuple[str, int]]:
    for i, event in enumerate(events):
        for source in logsources_of(event):
            index = ruleset.indexes.get(source)
            if index is not None:
                keys = {key for subject in subjects(source, event) for key in index.match(subject)}
                for key in sorted(keys):
                    yield ruleset.rules[key].id, i
