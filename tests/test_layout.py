"""The library's layering, read from the source (no import is executed): the shared core
imports no paper package, and no module imports one that imports it back, directly or
through others, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "layerlab"
PAPERS = ("laser", "prune", "painters", "beyond", "book")


def module_names(root: Path = LIB) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package is its __init__)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(root: Path = LIB) -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its body (module level or inside
    a function). ``from a.b import c`` counts as importing ``a.b`` and, where it is a module, ``a.b.c``."""
    names = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in names}
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in names and t != module)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "layerlab"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from layerlab.core import b\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "core" / "c.py").write_text("import layerlab.core.a\n")
    (pkg / "core" / "d.py").write_text("from layerlab.core import a\n")
    assert circles(import_graph(pkg)) == [["layerlab.core.a", "layerlab.core.b", "layerlab.core.c"]]
    (pkg / "core" / "c.py").write_text("")
    assert circles(import_graph(pkg)) == []


def test_no_import_circle_anywhere_in_the_library():
    assert circles(import_graph()) == []


@pytest.mark.parametrize("paper", PAPERS)
def test_the_core_imports_no_paper_package(paper):
    offenders = {module: sorted(t for t in targets if t.startswith(f"layerlab.{paper}"))
                 for module, targets in import_graph().items() if module.startswith("layerlab.core")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_core_is_split_by_role_with_no_loose_modules():
    loose = sorted(p.name for p in (LIB / "core").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    import layerlab.core as core
    roles = sorted(p.name for p in (LIB / "core").iterdir() if (p / "__init__.py").exists())
    assert sorted(core.SUBMODULES) == roles


def test_every_subpackage_lists_its_modules():
    """Each lazy package's SUBMODULES names exactly the modules and packages inside it, so
    ``layerlab.core.model.runner`` style access reaches all of them and nothing stale."""
    import importlib
    for init in LIB.rglob("__init__.py"):
        package = ".".join(init.parent.relative_to(LIB.parent).parts)
        listed = getattr(importlib.import_module(package), "SUBMODULES", None)
        if listed is None:
            continue
        present = {p.stem for p in init.parent.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
        present |= {p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()}
        assert sorted(listed) == sorted(present), package


def test_every_core_module_has_its_short_path():
    """``from layerlab import runner`` reaches each core module at its role's path, and only those."""
    import layerlab
    core = {name.rsplit(".", 1)[1]: name for name in module_names()
            if name.count(".") == 3 and name.startswith("layerlab.core.")}
    assert sorted(layerlab.CORE) == sorted(core)
    for short, full in core.items():
        assert getattr(layerlab, short).__name__ == full
    assert "smollm2-135m" in layerlab.REGISTRY and callable(layerlab.load)
