"""The composition root: config, daemon wiring, health. Only this package wires the layers together."""

from ringfence.agent._config import DEFAULT_CONFIG_PATH, Config, load_config, parse_config
from ringfence.agent._console import Console
from ringfence.agent._daemon import Agent
from ringfence.agent._errors import AgentError, ConfigError, ConfigProblem
from ringfence.agent._health import summary_line
from ringfence.agent._status import StatusServer, StatusUnavailable, read_status
from ringfence.events import Health

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Agent",
    "AgentError",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Console",
    "Health",
    "StatusServer",
    "StatusUnavailable",
    "load_config",
    "parse_config",
    "read_status",
    "summary_line",
]
