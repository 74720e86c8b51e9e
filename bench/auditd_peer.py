"""Debian's auditd as the bench's peer (issue 10): installed without starting its service, run as the
bench's own child with an execve rule (b64 + b32), and everything undone afterwards (the rules, the
kernel's enabled flag and backlog limit as found, the daemon, its log directory).

Only one process can be the audit daemon: `running_auditd` refuses to start while another one (an agent,
another auditd) holds the role, and the agent cannot start while auditd runs. Hold the e2e lock
(`flock /run/ringfence-e2e.lock ...`) around any run of this bench on a shared machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

KEY = "rf-bench-auditd"
RULES = [["-F", "arch=b64", "-S", "execve"], ["-F", "arch=b32", "-S", "execve"]]
_POLICY_RC = "/usr/sbin/policy-rc.d"
_STATUS = re.compile(r"^(\w+) (\d+)", re.MULTILINE)


class AuditdError(RuntimeError):
    """auditd could not be installed, started or undone; the text says what and where."""


def install() -> str:
    """Install Debian's auditd (no recommends) if it is missing, without starting its service: a
    temporary policy-rc.d refuses every service start during the install. Returns the version."""
    if shutil.which("auditd") is None or shutil.which("auditctl") is None:
        _apt_install()
    if any(p.info["name"] == "auditd" for p in psutil.process_iter(["name"])):
        raise AuditdError("an auditd is running (did its package start the service?): stop it first")
    r = subprocess.run(["auditctl", "-v"], capture_output=True, text=True, check=False)
    return (r.stdout or r.stderr).strip().rpartition(" ")[2] or "?"


def _apt_install() -> None:
    ours = not os.path.exists(_POLICY_RC)
    if ours:
        with open(_POLICY_RC, "w") as f:
            f.write("#!/bin/sh\n# bench/auditd_peer.py: no service starts during its install\nexit 101\n")
        os.chmod(_POLICY_RC, 0o755)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "auditd"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise AuditdError(f"apt-get install auditd failed: {r.stderr.strip()[-400:]}")
    finally:
        if ours:
            os.unlink(_POLICY_RC)


def kernel_status() -> dict[str, int]:
    """`auditctl -s`: enabled, pid, backlog_limit, ..."""
    r = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in _STATUS.findall(r.stdout)}


def _holder_alive(pid: int) -> bool:
    return pid > 0 and psutil.pid_exists(pid)


@contextmanager
def running_auditd(backlog_limit: int = 8192) -> Iterator[int]:
    """auditd as a child (`-n`: no fork) with its log in a temporary directory and an execve rule for
    both ABIs; yields its pid. Undone on exit, whatever happened."""
    found = kernel_status()
    if _holder_alive(found.get("pid", 0)):
        raise AuditdError(f"pid {found['pid']} is the audit daemon: only one can be (agent or auditd)")
    with tempfile.TemporaryDirectory(prefix="rf-bench-auditd-") as conf_dir:
        os.chmod(conf_dir, 0o700)
        _write_conf(conf_dir)
        proc = subprocess.Popen(
            ["auditd", "-n", "-c", conf_dir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        added: list[list[str]] = []
        try:
            _await_registered(proc)
            subprocess.run(["auditctl", "-b", str(backlog_limit)], capture_output=True, check=True)
            for rule in RULES:
                subprocess.run(
                    ["auditctl", "-a", "always,exit", *rule, "-k", KEY], capture_output=True, check=True
                )
                added.append(rule)
            yield proc.pid
        finally:
            for rule in added:
                subprocess.run(
                    ["auditctl", "-d", "always,exit", *rule, "-k", KEY], capture_output=True, check=False
                )
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(
                ["auditctl", "-b", str(found.get("backlog_limit", 64))], capture_output=True, check=False
            )
            subprocess.run(["auditctl", "-e", str(found.get("enabled", 0))], capture_output=True, check=False)
    left = leftovers()
    if left:
        raise AuditdError(f"left behind after auditd: {left}")


def leftovers() -> str:
    """What of ours is still there: rules with our key, an auditd process. Empty when nothing."""
    rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=False).stdout
    ours = [line for line in rules.splitlines() if KEY in line]
    procs = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "auditd"]
    return "; ".join(([f"rules {ours}"] if ours else []) + ([f"auditd processes {procs}"] if procs else []))


def _write_conf(conf_dir: str) -> None:
    """auditd's defaults as Debian ships them, its log in `conf_dir` (removed with it)."""
    log_file = os.path.join(conf_dir, "audit.log")
    with open(os.path.join(conf_dir, "auditd.conf"), "w") as f:
        f.write(
            f"log_file = {log_file}\nlog_format = ENRICHED\nlog_group = root\npriority_boost = 4\n"
            "flush = INCREMENTAL_ASYNC\nfreq = 50\nnum_logs = 2\nmax_log_file = 64\n"
            "max_log_file_action = ROTATE\nspace_left = 75\nspace_left_action = IGNORE\n"
            "admin_space_left = 50\nadmin_space_left_action = IGNORE\ndisk_full_action = IGNORE\n"
            "disk_error_action = IGNORE\nwrite_logs = yes\nname_format = NONE\n"
        )
    os.chmod(os.path.join(conf_dir, "auditd.conf"), 0o640)


def _await_registered(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AuditdError(f"auditd exited with {proc.returncode}: {err.strip()[-400:]}")
        if kernel_status().get("pid") == proc.pid:
            return
        time.sleep(0.1)
    raise AuditdError(f"auditd (pid {proc.pid}) did not register as the audit daemon in {timeout_s} s")
