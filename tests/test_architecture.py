"""The house rules a newcomer relies on: no import circles between gapcal's modules."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "gapcal"


def import_graph() -> dict:
    """Module -> the gapcal modules its top-level imports load (a package's own __init__ aside)."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("gapcal",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        mods[name] = path
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gapcal"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods}
            deps |= subs
            if len(subs) < len(node.names) and target in mods:
                deps.add(target)
        graph[name] = deps
    return graph


def find_circle(graph: dict):
    """One import circle of ``graph`` as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert "gapcal.stores.core" in graph and "gapcal.stores.faiss.index" in graph
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_a_circle_is_found_when_there_is_one(tmp_path, monkeypatch):
    pkg = tmp_path / "gapcal"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert find_circle(import_graph()) == ["gapcal.a", "gapcal.b", "gapcal.a"]
