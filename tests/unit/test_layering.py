"""Dependencies point one way, and nothing installed goes round in a circle.

    edgeloop (the core)  <-  edgeloop.edge    (runtime/)
                         <-  edgeloop.bridge  (cloud_bridge/; its trainer also the edge's pure
                                               preprocessing and inference modules, TRAINER_USES_EDGE)
                         <-  edgeloop.devices (devices/)

and none of them imports the workshop (lab/), the tests or the benchmarks.

Every import counts, wherever it stands in a file: at module level, inside a
function (a lazy import is still a dependency), under ``TYPE_CHECKING``.
The import graph is built from the source with ``ast``, not by importing it.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from pprint import pformat

REPO = Path(__file__).resolve().parents[2]
#: folder in the repository -> its name in the import package
FOLDERS = {"edgeloop": "edgeloop", "runtime": "edgeloop.edge", "cloud_bridge": "edgeloop.bridge",
           "devices": "edgeloop.devices"}
COMPONENTS = ("edgeloop.edge", "edgeloop.bridge", "edgeloop.devices")
#: The edge modules the bridge's trainer may import (cloud_bridge/training/ only): features are built with
#: the edge's own stages and models checked with its interpreter, so training and serving agree.
TRAINER_USES_EDGE = ("edgeloop.edge.stages", "edgeloop.edge.inference", "edgeloop.edge.vision.pipeline",
                     "edgeloop.edge.vision.stages")
#: Not installed: what the installed code must never import.
WORKSHOP = ("lab", "tests", "benchmarks")


@dataclass(frozen=True)
class Import:
    module: str  # absolute, resolved to a submodule where ``from pkg import name`` names one
    line: int


@cache
def modules() -> dict[str, Path]:
    """Every installed module name -> its file."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


@cache
def imports(module: str) -> tuple[Import, ...]:
    """What ``module`` imports, anywhere in its file."""
    path = modules()[module]
    package = module if _is_package(module) else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(Import(sub if sub in modules() else base, node.lineno))
    return tuple(out)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _component(module: str) -> str | None:
    return next((c for c in COMPONENTS if _within(module, c)), None)


def _name(module: str) -> str:
    return str(modules()[module].relative_to(REPO))


def offenders(folder: str, allowed) -> dict[str, list[str]]:  # noqa: ANN001 -- allowed(module, imported) -> bool
    """file -> the imports of the installed modules in ``folder`` that ``allowed`` refuses ("module:line")."""
    package = FOLDERS[folder]
    found: dict[str, list[str]] = {}
    for module in modules():
        if _within(module, package) and _component(module) == _component(package):
            bad = [f"{m}:{n}" for m, n in sorted({(i.module, i.line) for i in imports(module)
                                                  if not allowed(module, i.module)})]
            if bad:
                found[_name(module)] = bad
    return found


# ---------------------------------------------------------------------- directions


def test_the_core_imports_no_component():
    found = offenders("edgeloop", lambda _m, imported: _component(imported) is None)
    assert not found, pformat(found)


def test_the_edge_imports_only_the_core():
    found = offenders("runtime", lambda _m, imported: _component(imported) in (None, "edgeloop.edge"))
    assert not found, pformat(found)


def test_the_bridge_imports_the_core_and_its_trainer_only_the_edges_pure_modules():
    def allowed(module: str, imported: str) -> bool:
        component = _component(imported)
        if component in (None, "edgeloop.bridge"):
            return True
        trainer = _within(module, "edgeloop.bridge.training")
        return trainer and any(_within(imported, edge) for edge in TRAINER_USES_EDGE)

    found = offenders("cloud_bridge", allowed)
    assert not found, pformat(found)


def test_devices_import_only_the_core():
    found = offenders("devices", lambda _m, imported: _component(imported) in (None, "edgeloop.devices"))
    assert not found, pformat(found)


def test_nothing_installed_imports_the_workshop_the_tests_or_the_benchmarks():
    # tests/ is on sys.path when the tests run: its helper modules are importable by their bare names.
    test_helpers = {p.stem for p in (REPO / "tests").glob("*.py")} | {p.name for p in (REPO / "tests").iterdir()
                                                                       if p.is_dir()}
    refused = set(WORKSHOP) | test_helpers
    found = {}
    for folder in FOLDERS:
        found.update(offenders(folder, lambda _m, imported: imported.split(".")[0] not in refused))
    assert not found, pformat(found)


def test_the_trainers_edge_modules_exist_and_are_pure():
    """A stale whitelist entry would allow a module nobody checks; and what the trainer may use of the
    edge must not drag the edge's I/O along: nothing it reaches, directly or not, talks MQTT."""
    assert [m for m in TRAINER_USES_EDGE if m not in modules()] == []
    reached, todo = set(), [m for m in modules() if any(_within(m, edge) for edge in TRAINER_USES_EDGE)]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += [i.module for i in imports(module) if i.module in modules()]
    talking = {_name(m): sorted({i.module for i in imports(m) if i.module.split(".")[0] == "paho" or
                                 _within(i.module, "edgeloop.mqtt")}) for m in reached}
    assert {name: mods for name, mods in talking.items() if mods} == {}


# ---------------------------------------------------------------------- circles


def import_cycles() -> list[list[str]]:
    """The strongly connected components of the installed modules' import graph with more than one
    module (or a module importing itself), each as the files in it (Tarjan's algorithm)."""
    graph = {m: sorted({i.module for i in imports(m) if i.module in modules() and i.module != m} |
                       ({m} if any(i.module == m for i in imports(m)) else set())) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~100)
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
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(_name(m) for m in component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycles_among_the_installed_modules():
    cycles = import_cycles()
    assert not cycles, "import cycles (each a set of files):\n" + pformat(cycles)


def test_the_graph_sees_lazy_relative_and_from_package_imports(tmp_path, monkeypatch):
    """The checks above are only as good as the graph: a function-level ``from pkg import module``
    and a relative import must be edges, and a circle through them must be found."""
    fake = tmp_path / "repo"
    (fake / "edgeloop").mkdir(parents=True)
    (fake / "edgeloop" / "__init__.py").write_text("")
    (fake / "edgeloop" / "a.py").write_text("def f():\n    from edgeloop import b\n")
    (fake / "edgeloop" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    for folder in ("runtime", "cloud_bridge", "devices"):
        (fake / folder).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", fake)
    modules.cache_clear()
    imports.cache_clear()
    try:
        assert {i.module for i in imports("edgeloop.a")} == {"edgeloop.b"}
        assert {i.module for i in imports("edgeloop.b")} == {"typing", "edgeloop.a"}
        assert import_cycles() == [["edgeloop/a.py", "edgeloop/b.py"]]
    finally:
        modules.cache_clear()
        imports.cache_clear()


#: Outside the product, paho is used directly only where MQTT itself is measured (docs/benchmarks.md);
#: everything else watches and feeds the broker through the workshop's lab/mqtt.py.
BARE_PAHO = {"lab/mqtt.py", "benchmarks/mqtt_limit.py", "benchmarks/naive.py", "benchmarks/bridge.py",
             "benchmarks/vision.py", "benchmarks/reliability.py", "benchmarks/bridge_drain.py"}


def test_the_workshop_tests_and_benchmarks_reach_paho_only_through_lab_mqtt():
    users = set()
    for folder in ("lab", "benchmarks", "tests/integration", "tests/e2e"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] == "paho" for n in names):
                    users.add(str(path.relative_to(REPO)))
    assert users - BARE_PAHO == set()
    assert "lab/mqtt.py" in users  # the check sees imports at all


def test_nothing_imports_the_old_top_level_names():
    old = ("runtime", "cloud_bridge", "devices")
    found = {}
    for folder in ("edgeloop", "runtime", "cloud_bridge", "devices", "lab", "tests", "benchmarks", "docs", "docker"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                bad = [n for n in names if n.split(".")[0] in old]
                if bad:
                    found.setdefault(str(path.relative_to(REPO)), []).extend(bad)
    assert found == {}
