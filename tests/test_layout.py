"""The package's shape (issue #17): imports run one way, top to bottom, with no circles, and the
stages stay visible in the tree. The layers are those of docs/architecture.md's table."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotune"

# Top to bottom. A module may import its own layer or any layer below it, never one above.
LAYERS = [
    ("cli", "__main__"),
    ("probe", "check", "plan"),
    ("search",),
    ("cluster",),
    ("trials",),
    ("model", "devices", "describe"),
    ("emit",),
    ("spec", "progress"),
    ("recipe",),
    ("errors", "sizes", "extras"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the autotune modules it imports (top-level and lazy imports alike)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def layer_of(module: str) -> int:
    stage = module.split(".")[1]
    for index, names in enumerate(LAYERS):
        if stage in names:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py (add its stage to LAYERS)")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_inside_the_package():
    assert circles(import_graph()) == []


def test_imports_run_top_to_bottom():
    upward = []
    for module, targets in import_graph().items():
        if module == "autotune":
            continue  # the root: the version, and the public API loaded lazily on first use
        for target in targets:
            if target != "autotune" and layer_of(target) < layer_of(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_stages_stay_visible():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 10, top


def test_the_architecture_table_names_every_stage():
    table = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    stages = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
              if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p.is_dir() and (p / "__init__.py").exists())}
    missing = sorted(s for s in stages if f"`{s}" not in table)
    assert missing == []


@pytest.mark.parametrize("edge", [("autotune.spec", "autotune.cli"), ("autotune.recipe.schema", "autotune.emit.hf")])
def test_the_layer_check_can_fail(edge):
    module, target = edge
    assert layer_of(target) < layer_of(module)
    assert circles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
