"""The import graph: no cycles among gptlab's modules, and every import points down the layer order.

Static, from the source: every `import` / `from ... import` between gptlab modules, inside functions too (a lazy
import is still a dependency), plus the package `__init__` that importing a submodule runs first. Only imports
under `if TYPE_CHECKING:` (annotations, never run) are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import gptlab

ROOT = Path(gptlab.__file__).parent


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
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


# The layer order, lowest first: a module may import its own layer and the layers below, never above. Names are
# without "gptlab."; "X.*" is package X and everything in it, any other name that one module (a package: its
# __init__). A new module must be placed here, or the test says so.
LAYERS = (
    ("gptlab", "allocator", "errors", "paths", "io", "lock", "tensorfile", "document", "quant", "adapters", "interop", "bench",
     "train", "commands", "lab", "lab.stats", "lab.sequential"),  # packages whose __init__ imports nothing; plain utilities
    ("config", "tokenizers", "corpus", "memory", "model.filters", "train.distributed", "train.losses", "train.grad_norm",
     "train.efficiency", "train.metrics", "train.checkpoint", "bench.hardware", "bench.breakdown", "bench.minimal_script", "native"),
    ("data", "model.*"),  # the model knows nothing of what is built on it
    ("rundir", "bands", "evaluate", "static_decode", "generate", "budget", "train.optim", "train.probes", "quant.fake", "quant.kernels", "quant.linear",
     "quant.ptq", "quant.qat", "adapters.lora", "adapters.peft_format"),  # techniques: transforms of a built model
    ("transforms", "run", "interop.hf_tokenizer", "interop.hf", "interop.lm_eval",
     "interop.gguf_export", "interop.llama_cpp_check", "quant.inspect", "adapters.merge", "report"),
    ("train.callbacks", "train.loop", "quant.workflow", "bench.decode", "bench.train", "bench.time_to_loss"),
    ("quickstart", "doctor", "lab.ray_executor", "lab.grid", "lab.plots", "lab.results", "lab.calibrate", "lab.lesson",
     "lab.literature", "lab.scale"),
    ("lab.lessons.*",),  # the lessons and their plots
    ("lab.report", "lab.runner"),
    ("lab.ab",),  # a lesson the runner runs look by look
    ("commands.common",),
    ("commands.ab", "commands.bench", "commands.data", "commands.doctor", "commands.evaluate", "commands.interop", "commands.lab", "commands.quant",
     "commands.quickstart", "commands.report", "commands.sample", "commands.train"),
    ("cli", "__main__"),
)


def layer(module: str) -> int:
    name = module.removeprefix("gptlab.") if module != "gptlab" else "gptlab"
    matches = [(len(entry), i) for i, names in enumerate(LAYERS) for entry in names
               if name == entry.removesuffix(".*") or (entry.endswith(".*") and name.startswith(entry[:-1]))]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return max(matches)[1]


def test_every_import_points_down_the_layer_order():
    graph = module_graph()
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, deps in graph.items() for b in deps if layer(b) > layer(a))
    assert upward == []


def test_the_graph_holds_lazy_imports_and_leaves_out_annotation_only_ones(tmp_path):
    package = tmp_path / "gptlab"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "__init__.py").write_text("")
    (package / "cli.py").write_text("from gptlab.model import gpt\n")
    (package / "model" / "gpt.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gptlab import errors\n"
        "def f():\n    from gptlab.cli import main\n")
    (package / "errors.py").write_text("")
    graph = module_graph(package)
    assert graph["gptlab.model.gpt"] == {"gptlab.cli"}  # lazy, and upward: the layer test would fail on it
    assert graph["gptlab.cli"] == {"gptlab.model", "gptlab.model.gpt"}
    assert layer("gptlab.cli") > layer("gptlab.model.gpt") and cycles(graph) == [["gptlab.cli", "gptlab.model.gpt"]]
