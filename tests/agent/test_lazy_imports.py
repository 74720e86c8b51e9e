"""The agent on its defaults carries no library it does not use: python-tuf, securesystemslib and httpx
load only with a content URL or a fleet, prometheus_client only with metrics_listen, numpy only for the
fleet's rollouts (bench/RESULTS.md: 49 -> 29 MB at import). Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("tuf", "securesystemslib", "httpx", "prometheus_client", "numpy", "scipy", "fastapi", "sqlalchemy")


def _loaded_after(code: str) -> set[str]:
    """The HEAVY top-level packages in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(r.stdout.splitlines()[-1])) & set(HEAVY)


def test_the_agents_modules_and_its_default_config_load_none_of_them() -> None:
    code = (
        "import ringfence.cli, ringfence.agent._daemon, ringfence.agent._extensions\n"
        "from ringfence.agent import parse_config\n"
        "from ringfence.agent._updates import make_update_loop\n"
        "c = parse_config(b'', 'r.toml')\n"
        "assert make_update_loop(c.content, '/nonexistent', None, {}, None) is None\n"
    )
    assert _loaded_after(code) == set()


@pytest.mark.parametrize(
    ("code", "wanted"),
    [
        ("from ringfence.content import TufContentUpdater", {"tuf", "securesystemslib"}),
        ("import ringfence.content as c; c.KeyStore; c.Repository", {"tuf", "securesystemslib"}),
        ("from ringfence.fleet import Uplink, UplinkConfig, credential_path", {"httpx"}),
        ("from ringfence.agent._metrics import MetricsServer", {"prometheus_client"}),
    ],
)
def test_a_lazy_name_still_loads_its_module_when_used(code: str, wanted: set[str]) -> None:
    assert wanted <= _loaded_after(code)


@pytest.mark.parametrize("package", ["ringfence.content", "ringfence.fleet"])
def test_a_name_the_package_does_not_have_is_an_attribute_error(package: str) -> None:
    code = f"import {package} as p\ntry:\n    p.NoSuchName\nexcept AttributeError as e:\n    print(e)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert f"module '{package}' has no attribute 'NoSuchName'" in r.stdout
