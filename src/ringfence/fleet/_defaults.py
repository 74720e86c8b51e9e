"""Defaults the command line shows before it imports the server (FastAPI, SQLAlchemy load slowly)."""

DEFAULT_LISTEN = "127.0.0.1:8477"
DEFAULT_SERVER_STATE_DIR = "/var/lib/ringfence-server"
AGENT_STATE_DIR = "/var/lib/ringfence"  # the agent's default (a test holds them equal)
