"""The house rules of the source layout, checked on the code itself (imports read with ``ast``,
function-level and ``TYPE_CHECKING`` imports included): no import cycles between modules of the
package, operators never import training, and no oversized files in ``pipeline/``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> import name (pyproject [tool.setuptools.package-dir])
FOLDERS = {"pipeline/_root": "affectstream", "pipeline": "affectstream.pipeline",
           "operators": "affectstream.operators", "models": "affectstream.models",
           "training": "affectstream.training"}
MAX_LINES = 420  # "files under ~400 lines" (developers' guide)


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for folder, pkg in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder)
            if folder == "pipeline" and rel.parts[0] == "_root":
                continue
            parts = [x for x in rel.with_suffix("").parts if x != "__init__"]
            mods[".".join([pkg, *parts])] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from a.b import c`` counts ``a.b.c`` when that
    is a module, else ``a.b``)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m:
                    graph[m].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the whole package was read
    assert cycles(graph) == []


def test_operators_never_import_training() -> None:
    bad = sorted((m, t) for m, ts in import_graph().items() for t in ts
                 if m.startswith("affectstream.operators") and t.startswith("affectstream.training"))
    assert bad == []


def test_pipeline_is_split_into_subpackages() -> None:
    loose = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert loose == ["config.py", "errors.py", "untrained.py"], loose


def test_no_oversized_source_files_in_pipeline() -> None:
    big = sorted((len(p.read_text().splitlines()), str(p.relative_to(ROOT)))
                 for p in (ROOT / "pipeline").rglob("*.py")
                 if len(p.read_text().splitlines()) > MAX_LINES)
    assert big == [], big
