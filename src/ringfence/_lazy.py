"""Names of a package that load their module on first use (PEP 562), for packages whose heavy
dependencies (python-tuf, httpx, numpy) the agent must not carry unless it uses them. Below the layers:
it imports nothing of ours."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_names(
    package: str, lazy: Mapping[str, tuple[str, ...]], namespace: dict[str, object]
) -> Callable[[str], object]:
    """The module `__getattr__` of `package`: `lazy` maps a module to the names it provides; a name is
    imported from its module on first use and then kept in the package's `namespace` (its globals)."""
    module_of = {name: module for module, names in lazy.items() for name in names}

    def __getattr__(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
