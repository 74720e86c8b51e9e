"""A rule tree as one Python function, so evaluating a candidate rule is a single call, not a walk.

The generated source holds only integers and names this module defines (`h` the set of indexed atoms
that hit, `v` the event's field values, `t` the tests of the other atoms, `S<n>` frozensets of atom ids):
no text of a rule ever reaches it, so a rule cannot inject code. An OR of indexed atoms becomes one
`isdisjoint` against a frozenset. A tree too deep for Python's compiler falls back to walking it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ringfence.engines.sigma._compile import Node

Predicate = Callable[[set[int], dict[str, Any]], bool]
Test = Callable[[dict[str, Any]], bool]


def predicate(tree: Node, tests: Sequence[Test | None]) -> Predicate:
    constants: dict[str, object] = {"t": tests}
    try:
        source = _source(tree, tests, constants)
        code = compile(f"lambda h, v: {source}", "<sigma rule>", "eval")
        function: Predicate = eval(code, constants)  # noqa: S307 (integers and our own names only, see above)
    except (RecursionError, SyntaxError, MemoryError):
        return lambda hits, values: walk(tree, tests, hits, values)
    return function


def _source(node: Node, tests: Sequence[Test | None], constants: dict[str, object]) -> str:
    op = node[0]
    if op == "atom":
        i = int(node[1])
        return f"({i} in h)" if tests[i] is None else f"t[{i}](v)"
    if op == "const":
        return "True" if node[1] else "False"
    if op == "not":
        return f"(not {_source(node[1], tests, constants)})"
    children = node[1]
    if op == "or":
        indexed = [int(c[1]) for c in children if c[0] == "atom" and tests[c[1]] is None]
        rest = [c for c in children if not (c[0] == "atom" and tests[c[1]] is None)]
        parts = [_source(c, tests, constants) for c in rest]
        if len(indexed) > 1:
            name = f"S{len(constants)}"
            constants[name] = frozenset(indexed)
            parts.insert(0, f"(not h.isdisjoint({name}))")
        elif indexed:
            parts.insert(0, f"({indexed[0]} in h)")
        return "(" + " or ".join(parts) + ")"
    return "(" + " and ".join(_source(c, tests, constants) for c in children) + ")"


def walk(node: Node, tests: Sequence[Test | None], hits: set[int], values: dict[str, Any]) -> bool:
    op = node[0]
    if op == "atom":
        test = tests[node[1]]
        return node[1] in hits if test is None else test(values)
    if op == "and":
        return all(walk(c, tests, hits, values) for c in node[1])
    if op == "or":
        return any(walk(c, tests, hits, values) for c in node[1])
    if op == "not":
        return not walk(node[1], tests, hits, values)
    return bool(node[1])
