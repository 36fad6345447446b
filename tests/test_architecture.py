"""The import graph: no cycles among gptlab's modules, and the model knows nothing of what is built on it.

Static, from the source: every top-level `import` / `from ... import` between gptlab modules, plus the package
`__init__` that importing a submodule runs first. Imports inside functions are left out on purpose: they are how
a lower layer reaches a higher one lazily where it must, and they cannot form an import-time cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import gptlab

ROOT = Path(gptlab.__file__).parent


def module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gptlab"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("gptlab")}
        modules[name] = deps
    graph = {}
    for name, deps in modules.items():
        edges = set()
        for dep in deps:
            parts = dep.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                named = i == len(parts)  # what the statement names (a package too: its __init__ runs)
                implied = not name.startswith(target + ".")  # importing a.b.c runs a and a.b, unless already inside
                if target in modules and target != name and (named or implied):
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_gptlab_modules():
    graph = module_graph()
    assert len(graph) > 50 and "gptlab.quant.kernels" in graph
    assert cycles(graph) == []


def test_the_model_imports_only_the_layers_below_it():
    below = {"gptlab", "gptlab.config", "gptlab.errors"}
    graph = module_graph()
    for name, deps in graph.items():
        if name.startswith("gptlab.model"):
            assert all(d in below or d.startswith("gptlab.model") for d in deps), (name, deps)
