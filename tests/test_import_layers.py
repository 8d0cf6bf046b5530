"""The import layers of the house, enforced: a module imports only its own layer or
lower ones, no two modules import each other (directly or around a loop), and
`pipelines/` uses dim_tf only through its public names.

    errors, io, faults -> config -> data -> models -> objectives -> training ->
    evaluation -> serving -> entry points

Imports inside functions count: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Lowest first. A module belongs to the first layer with a matching prefix.
LAYERS = (
    ("foundations", ("dim_tf.errors", "dim_tf.io", "dim_tf.faults")),
    ("config", ("dim_tf.config",)),
    ("data", ("dim_tf.data",)),
    ("models", ("dim_tf.models",)),
    ("objectives", ("dim_tf.objectives",)),
    ("training", ("dim_tf.training", "dim_tf.flops")),
    ("evaluation", ("dim_tf.evaluation",)),
    ("serving", ("dim_tf.serving",)),
    ("entry points", ("dim_tf.cli", "dim_tf.train", "dim_tf.evaluate", "dim_tf.export",
                      "dim_tf.embed", "dim_tf.benchmark", "dim_tf")),
)


def _public_names() -> set[str]:
    """dim_tf.__all__, read from dim_tf/__init__.py without importing it."""
    tree = ast.parse((ROOT / "dim_tf" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_EXPORTS":
            return set(ast.literal_eval(node.value)) | {"__version__"}
    raise AssertionError("dim_tf/__init__.py has no _EXPORTS table")


PUBLIC = _public_names()


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a module in `known`; `from A import B`
    counts as importing A.B when that is a module, else A."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                # `from dim_tf import evaluate` is the public function, not the module.
                is_module = child in known and not (node.module == "dim_tf" and alias.name in PUBLIC)
                found.append((child if is_module else node.module, node.lineno))
    return sorted({(name, line) for name, line in found if name in known})


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        # The package itself ("dim_tf": its lazy public names) matches only exactly.
        if any(module == p or (p != "dim_tf" and module.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_import_layers.py: add it.")


def _graph(package: str) -> tuple[dict[str, pathlib.Path], dict[str, set[str]]]:
    modules = _modules(package)
    known = set(modules) | set(_modules("dim_tf"))
    return modules, {m: {name for name, _ in _imports(p, known) if name != m}
                     for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in graph:
                continue
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_dim_tf_module_imports_only_its_own_layer_or_lower():
    modules, _ = _graph("dim_tf")
    known = set(modules)
    upward = []
    for module, path in modules.items():
        for imported, line in _imports(path, known):
            if _layer(imported) > _layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} "
                              f"({LAYERS[_layer(module)][0]}) imports {imported} "
                              f"({LAYERS[_layer(imported)][0]})")
    assert not upward, "Upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", ["dim_tf", "pipelines"])
def test_no_import_cycles(package):
    _, graph = _graph(package)
    assert not _cycles(graph), f"Import cycles in {package}/: {_cycles(graph)}"


def test_pipelines_use_only_public_dim_tf_names():
    public = PUBLIC
    misuse = []
    for module, path in _modules("pipelines").items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                misuse += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                           if a.name.startswith("dim_tf.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dim_tf"):
                if node.module != "dim_tf":
                    misuse.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
                misuse += [f"{path.name}:{node.lineno}: dim_tf.{a.name} is not public"
                           for a in node.names if node.module == "dim_tf" and a.name not in public]
    assert not misuse, "pipelines/ must use `from dim_tf import <public name>`:\n" + "\n".join(misuse)


def test_the_checker_catches_an_upward_import_and_a_cycle(tmp_path):
    """The rules above can fail: a planted upward import and a planted cycle are found."""
    assert _layer("dim_tf.config") < _layer("dim_tf.training.run")
    planted = tmp_path / "upward.py"
    planted.write_text("def f():\n    from dim_tf.training import run\n", encoding="utf-8")
    assert _imports(planted, {"dim_tf.training.run", "dim_tf.training"}) == [
        ("dim_tf.training.run", 2)]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_public_names_resolve():
    """Every name in dim_tf.__all__ imports (a renamed module would break only here)."""
    import dim_tf

    missing = [name for name in dim_tf.__all__ if not hasattr(dim_tf, name)]
    assert not missing, f"dim_tf.__all__ names that do not resolve: {missing}"


def test_every_module_is_in_a_layer():
    for module in _modules("dim_tf"):
        _layer(module)
    assert os.path.isdir(ROOT / "pipelines")
