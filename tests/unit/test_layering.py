"""Dependencies point one way: the bridge and the device publishers import only the contract and
the shared infrastructure of the runtime package, never edge internals."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
def imported_runtime_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name == "runtime" or name.startswith("runtime."):
                    found.setdefault(str(path.relative_to(REPO)), set()).add(name)
    return found


def test_bridge_imports_only_the_contract_and_shared_infrastructure():
    # The trainer (cloud_bridge/training) is the exception by design: it must build features with the
    # edge's own stages and check the model with the edge's interpreter, so training and serving agree.
    offenders = {
        path: sorted(m for m in mods if not m.startswith(("runtime.contract", "runtime.common", "runtime.modelfile",
                                                            "runtime.deploy_contract"))
                     and m != "runtime")
        for path, mods in imported_runtime_modules("cloud_bridge").items()
        if "/training/" not in path
    }
    assert {p: m for p, m in offenders.items() if m} == {}


def test_devices_import_only_the_contract_and_shared_infrastructure():
    offenders = {
        path: sorted(m for m in mods if not m.startswith(("runtime.contract", "runtime.common")) and m != "runtime")
        for path, mods in imported_runtime_modules("devices").items()
    }
    assert {p: m for p, m in offenders.items() if m} == {}
