"""The agent layer's errors, one root.

AgentError              the agent cannot do what was asked; the message says why and what to do
  ConfigError           a configuration that cannot be used: every problem at once (`.problems`),
                        each with the file (or "command line"), the key, the line where known, and
                        what is wrong
  StatusUnavailable     no agent answers on the status socket (agent/_status.py)
"""

from __future__ import annotations

import msgspec


class AgentError(Exception):
    """The agent cannot start or do what was asked; the message says why and what to do."""


class ConfigProblem(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # the file, or "command line"
    key: str  # "sensors.file_paths[0]"; empty for the file as a whole (unreadable, not TOML)
    message: str
    line: int | None = None  # 1-based, where the key could be found in the file

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: key {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(AgentError):
    """Every problem of a configuration, one per line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
