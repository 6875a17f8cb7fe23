"""No import cycles in wsi_nuc: neither among the imports Python runs when a module loads, nor counting the
imports inside functions (deferred to keep start-up and the driver light, but still dependencies)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "wsi_nuc"


def _name(p: Path) -> str:
    parts = list(p.with_suffix("").relative_to(PKG.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py") if "models" not in p.relative_to(PKG).parts[:1]}


def _targets(module: str, is_pkg: bool, node) -> list[str]:
    """The wsi_nuc modules an import statement loads (``from .x import y``: ``.x.y`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    return [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]


def _imports(tree, top_only: bool):
    """Import statements, skipping ``if TYPE_CHECKING:`` blocks (never run); with ``top_only`` only those a
    module runs when it loads (not inside functions or classes' methods)."""
    todo = list(tree.body)
    while todo:
        n = todo.pop()
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            todo.extend(n.orelse)
            continue
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            yield n
            continue
        if top_only and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        todo.extend(ast.iter_child_nodes(n))


def import_graph(top_only: bool) -> dict[str, set[str]]:
    """module -> the wsi_nuc modules it imports. Imports of a module's own parent packages are left out:
    Python initialises them before the module, so they cannot close a cycle of loading."""
    graph = {}
    for m, p in MODULES.items():
        deps = set()
        for node in _imports(ast.parse(p.read_text()), top_only):
            for t in _targets(m, p.name == "__init__.py", node):
                if t in MODULES and t != m and not m.startswith(t + "."):
                    deps.add(t)
        graph[m] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports():
    g = import_graph(top_only=False)
    assert "wsi_nuc.tiling" in g["wsi_nuc.segment"] and "wsi_nuc.stitch" in g["wsi_nuc.pipeline"]


def test_no_cycles_when_modules_load():
    assert cycles(import_graph(top_only=True)) == []


def test_no_cycles_counting_deferred_imports():
    assert cycles(import_graph(top_only=False)) == []


def test_inference_never_imports_training_or_writers():
    """What the tile task can reach (graph, predict and everything they import, deferred imports included)
    holds no training module and no writer."""
    g = import_graph(top_only=False)
    seen, todo = set(), ["wsi_nuc.graph"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(g[m])
    assert not [m for m in seen if m.startswith(("wsi_nuc.train", "wsi_nuc.writers"))], sorted(seen)
