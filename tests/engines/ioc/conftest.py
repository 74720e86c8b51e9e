"""The content end-to-end fixtures (agents stopped at teardown) shared with
tests/engines/test_content_e2e.py; `shared_dir` and `root_only_dir` come from tests/conftest.py."""

from tests.engines.test_content_e2e import agents, start_agent

__all__ = ["agents", "start_agent"]
