"""The content end-to-end fixtures (a state dir the extension user can reach, a root-only dir, agents
stopped at teardown) shared with tests/engines/test_content_e2e.py."""

from tests.engines.test_content_e2e import agents, root_only_dir, shared_dir, start_agent

__all__ = ["agents", "root_only_dir", "shared_dir", "start_agent"]
