"""The errors of the response layer. The tree is drawn in the package docstring."""

from __future__ import annotations


class ResponseError(Exception):
    """Root of every error the response layer raises."""


class ResponseConfigError(ResponseError, ValueError):
    """The configuration is unusable (a management address that does not parse, ...).

    A ValueError too, so that msgspec reports it as a validation error when it decodes a config."""


class ActionRefused(ResponseError):
    """A request refused by policy before anything was done: out of the requester's scope, a protected
    path or process, a request missing what it needs. The action log records it as "refused"."""


class KillError(ResponseError):
    """A kill was refused (protected, pid reused, already gone) or did not take effect in time."""

    def __init__(self, pid: int, message: str) -> None:
        super().__init__(f"kill pid {pid}: {message}")
        self.pid = pid


class QuarantineError(ResponseError):
    """A quarantine or restore was refused or failed; `.where` names the path or vault entry."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class NftError(ResponseError):
    """The `nft` command failed; the message carries the command and what nft said."""

    def __init__(self, command: tuple[str, ...], message: str) -> None:
        super().__init__(f"{' '.join(command)}: {message}")
        self.command = command


class ActionLogError(ResponseError):
    """The action log could not be written or read; `.path` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
