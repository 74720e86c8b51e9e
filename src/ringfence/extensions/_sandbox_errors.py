"""The sandbox's errors, in their own module so every `_sandbox_*` part can raise them.

Errors (the tree):
    SandboxError                anything the sandbox raises; the message says what failed, where, and
      |                         the kernel's errno text
      SandboxUnavailable        a mechanism the policy needs is missing on this kernel (Landlock,
                                seccomp); the sandbox fails closed rather than run an extension unconfined
"""

from __future__ import annotations

import errno
import os


class SandboxError(Exception):
    """Root of every error the sandbox raises."""


class SandboxUnavailable(SandboxError):
    """A required kernel mechanism is missing or refused. `.mechanism` names it."""

    def __init__(self, mechanism: str, message: str) -> None:
        super().__init__(f"{mechanism}: {message}")
        self.mechanism = mechanism


def os_error_text(err: OSError) -> str:
    """'EACCES (Permission denied)' for an OSError, whatever its errno."""
    if err.errno is None:
        return str(err)
    name = _errno_name(err.errno)
    return f"{name} ({os.strerror(err.errno)})"


def errno_text(errno_value: int) -> str:
    """'EPERM (Operation not permitted)' for a raw errno value."""
    return f"{_errno_name(errno_value)} ({os.strerror(errno_value)})"


def _errno_name(value: int) -> str:
    return errno.errorcode.get(value, f"errno {value}")
