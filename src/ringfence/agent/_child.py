"""Running engine code on hostile content from a root CLI: copy, sandbox, spawn (`rules check`, `replay`).

The root side never parses content. It copies the operator's files (root reads them: they may be
root-only) into a private work directory (`copy_file`, bounded, regular files only), hands the copies to
the extension user (`hand_to`), and runs a child `python -I -m MODULE` with its spec in one environment
variable (`spawn`). The child enters the extension sandbox first thing (`SandboxedChild.policy` and
`.prepared` travel in its spec), as the engines run: the extension user, no capabilities, cgroups
(`extensions.memory_mb`), Landlock (read: the work directory and Python), seccomp. Run as another user,
there is no sandbox to enter: the child runs as that user.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from ringfence.agent._config import ExtensionsSection
from ringfence.agent._errors import AgentError

if TYPE_CHECKING:
    from ringfence.extensions._sandbox import PreparedSandbox, SandboxPolicy

MAX_FILE_BYTES = 256 << 20  # per file copied for a child
STDERR_TAIL_BYTES = 16384
CHILD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def safe_name(name: str) -> str:
    """A file name for a copy: letters, digits, `_.-` only, at most 100 characters, not hidden."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-100:].lstrip(".") or "file"


def copy_file(origin: str, dest: str, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Copy one file (a regular file, at most `max_bytes`) to a new `dest` (0600); the problem, or None.
    Opened non-blocking: a FIFO named like a rule file cannot hang the copy."""
    try:
        fd = os.open(origin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > max_bytes:
            return f"larger than the limit of {max_bytes} bytes"
        with (
            os.fdopen(os.dup(fd), "rb") as src,
            open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out,
        ):
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    return f"grew past the limit of {max_bytes} bytes while read"
                out.write(chunk)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    finally:
        os.close(fd)
    return None


def hand_to(work: str, uid: int, gid: int) -> None:
    """The copies to the sandbox user, read-only, and to no one else (they may be root-only files)."""
    for current, _, names in os.walk(work):
        for name in names:
            os.chown(os.path.join(current, name), uid, gid)
            os.chmod(os.path.join(current, name), 0o400)
        os.chown(current, uid, gid)
        os.chmod(current, 0o500)


def exit_text(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


class SandboxedChild:
    """The sandbox of one child, as a context: prepared (and `work` handed to its user) on entry when we
    are root, released on exit (anything left in its cgroups is killed). `sandbox` is False otherwise.
    `error` builds the exception for a failure: `what` names the command (`rules check`, `replay`)."""

    def __init__(
        self, name: str, what: str, work: str, extensions: ExtensionsSection, error: type[AgentError]
    ) -> None:
        self.sandbox = os.geteuid() == 0
        self.policy: SandboxPolicy | None = None
        self.prepared: PreparedSandbox | None = None
        self._name, self._what, self._work = name, what, work
        self._extensions, self._error = extensions, error

    def __enter__(self) -> SandboxedChild:
        if not self.sandbox:
            return self
        from ringfence.extensions._sandbox import SandboxError, SandboxPolicy, prepare_sandbox

        self.policy = SandboxPolicy(
            extension_id=f"{self._name}-{os.getpid()}",
            user=self._extensions.user,
            readable_paths=(self._work,),
            memory_mb=self._extensions.memory_mb,
            cpu_percent=100,  # a command an operator waits for; the engines' own quota applies when they run
            max_processes=64,
        )
        try:
            self.prepared = prepare_sandbox(self.policy)
        except SandboxError as e:
            raise self._error(f"{self._what}: preparing the sandbox failed: {e}") from e
        hand_to(self._work, self.prepared.uid, self.prepared.gid)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.policy is not None and self.prepared is not None:
            from ringfence.extensions._sandbox import release_sandbox

            release_sandbox(self.policy, self.prepared)

    def spec_fields(self) -> dict[str, Any]:
        """`sandbox`, `policy` and `prepared` for the child's spec (see `enter`)."""
        return {
            "sandbox": self.sandbox,
            "policy": msgspec.Raw(msgspec.json.encode(self.policy)),
            "prepared": msgspec.Raw(msgspec.json.encode(self.prepared)),
        }

    def out_of_memory(self) -> str | None:
        """The line to say when the child was OOM-killed in its cgroup (read before release), else None."""
        from ringfence.extensions._sandbox import cgroup_oom_killed

        if self.prepared is not None and cgroup_oom_killed(self.prepared):
            limit = self._extensions.memory_mb
            return f"ran out of memory ({limit} MiB, extensions.memory_mb: the engine would too)"
        return None


def enter(sandbox: bool, policy: msgspec.Raw, prepared: msgspec.Raw) -> None:
    """In the child, first thing, single-threaded: enter the sandbox its spec describes (if any)."""
    if sandbox:
        from ringfence.extensions._sandbox import PreparedSandbox, SandboxPolicy, enter_sandbox

        enter_sandbox(
            msgspec.json.decode(policy, type=SandboxPolicy),
            msgspec.json.decode(prepared, type=PreparedSandbox),
        )


def spawn(
    module: str, env_name: str, spec: msgspec.Struct, *, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    """`python -I -m module` with `spec` (JSON) in `env_name`, a minimal environment, cwd /, its own
    session, stdout and stderr piped; stdin /dev/null unless `stdin` (subprocess.PIPE, a descriptor)."""
    env = {"PATH": CHILD_PATH, "LANG": "C.UTF-8", env_name: msgspec.json.encode(spec).decode()}
    return subprocess.Popen(
        [sys.executable, "-I", "-m", module], env=env, cwd="/",
        stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
