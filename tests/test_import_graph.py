"""The package's import graph, read from the source (imports inside functions count, imports
under `if TYPE_CHECKING:` do not): no new import cycle may appear.

Issue 32 asks for none at all, except façade methods documented as such: FACADE_IMPORTS lists
them (InterpretableModel.edit, .to_transformers and the transformers-style forward import the
modules that build on the model, inside the method). Nothing else may close a cycle.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

from retrofit import _moved

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"retrofit": ROOT / "retrofit", "retrofit.adapters": ROOT / "adapters"}

# module -> modules it may import inside a documented façade method although they import it
FACADE_IMPORTS = {"retrofit.model.interpretable": {"retrofit.editing.apply", "retrofit.model.hf"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def _targets(module: str, is_package: bool, node: ast.AST, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: None if is_package else -1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.AST) -> None:
        self.found |= _targets(self.module, self.is_package, node, self.modules)

    visit_ImportFrom = visit_Import


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[module] = visitor.found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def test_the_graph_is_read_from_real_imports():
    graph = _graph()
    assert "retrofit.errors" in graph["retrofit.config"]
    assert (
        "retrofit.extraction.pooled_layers" in graph["retrofit.extraction.hooks"]
    )  # a top-level import
    assert "retrofit.concepts.settings" in graph["retrofit.config"]  # one inside a function
    assert not graph["retrofit.validation"] - {"retrofit.errors"}  # a leaf


def test_no_import_cycle_but_the_documented_facades():
    graph = _graph()
    for module, allowed in FACADE_IMPORTS.items():
        graph[module] = graph[module] - allowed
    cycles = [sorted(c) for c in _cycles(graph)]
    assert not cycles, (
        f"import cycles through {cycles}: break them (move the shared piece to a leaf)"
    )


def test_the_facade_imports_happen_inside_methods_only():
    """A façade import at module level would make the cycle real at import time."""
    for module, allowed in FACADE_IMPORTS.items():
        path = _modules()[module]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = _Imports(module, path.name == "__init__.py", _modules())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                top.visit(node)
        assert not top.found & allowed, (module, top.found & allowed)


def test_the_config_imports_no_stage():
    """The config validates with leaf settings modules; it never imports what fits or checks."""
    stages = (
        "retrofit.methods.base",
        "retrofit.methods.flint.attributes",
        "retrofit.check",
        "retrofit.fitting.bottleneck",
    )
    reached = {m for m in _graph()["retrofit.config"] if m.startswith(stages)}
    assert not reached, reached


def test_the_leaves_stay_leaves():
    graph = _graph()
    for leaf in (
        "retrofit.validation",
        "retrofit.settings",
        "retrofit.registry",
        "retrofit._version",
        "retrofit.consistency_settings",
        "retrofit.check.html_parts",
    ):
        assert graph[leaf] <= {"retrofit.errors", "retrofit.validation"}, (leaf, graph[leaf])


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_a_moved_module_keeps_its_old_path_for_one_release(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=re.escape(_moved.MOVED[old])):
        module = importlib.import_module(old)
    assert module is importlib.import_module(_moved.MOVED[old])
    assert not (ROOT / Path(*old.split("."))).with_suffix(".py").exists()
    # the old path never rebinds the new package's own names
    new_parent, leaf = _moved.MOVED[old].rsplit(".", 1)
    assert getattr(importlib.import_module(new_parent), leaf) is module


def test_the_old_heads_package_offers_its_names_without_touching_methods() -> None:
    import retrofit.methods.qpm.head as qpm_head

    for old in ("retrofit.heads", "retrofit.heads.qpm"):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="retrofit.methods.base"):
        import retrofit.heads as old_heads
    with pytest.warns(DeprecationWarning):
        from retrofit.heads import qpm  # noqa: F401  (the old submodule path)
    assert old_heads.get_head is importlib.import_module("retrofit.methods.base").get_head
    assert importlib.import_module("retrofit.methods.qpm").head is qpm_head
