"""Dependencies point one way: the core imports no component; the bridge and the device publishers
import the core, never edge internals (the bridge's trainer excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: folder in the repository -> its name in the import package
FOLDERS = {"edgeloop": "edgeloop", "runtime": "edgeloop.edge", "cloud_bridge": "edgeloop.bridge",
           "devices": "edgeloop.devices"}
COMPONENTS = ("edgeloop.edge", "edgeloop.bridge", "edgeloop.devices")


def imports_of(folder: str) -> dict[str, set[str]]:
    """path -> absolute module names it imports (anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in (REPO / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def _component(module: str) -> str | None:
    return next((c for c in COMPONENTS if module == c or module.startswith(c + ".")), None)


def test_nothing_imports_the_old_top_level_names():
    old = ("runtime", "cloud_bridge", "devices")
    offenders = {
        path: sorted(m for m in mods if m.split(".")[0] in old)
        for folder in ("edgeloop", "runtime", "cloud_bridge", "devices", "lab", "tests", "benchmarks", "docs", "docker")
        for path, mods in imports_of(folder).items()
    }
    assert {p: m for p, m in offenders.items() if m} == {}


def test_bridge_imports_only_the_core():
    # The trainer (cloud_bridge/training) is the exception by design: it must build features with the
    # edge's own stages and check the model with the edge's interpreter, so training and serving agree.
    offenders = {
        path: sorted(m for m in mods if _component(m) not in (None, "edgeloop.bridge"))
        for path, mods in imports_of("cloud_bridge").items()
        if "/training/" not in path
    }
    assert {p: m for p, m in offenders.items() if m} == {}


def test_devices_import_only_the_core():
    offenders = {
        path: sorted(m for m in mods if _component(m) not in (None, "edgeloop.devices"))
        for path, mods in imports_of("devices").items()
    }
    assert {p: m for p, m in offenders.items() if m} == {}
