"""The wheel ``make dist`` builds: one top-level name, the data the runtime needs, none of the workshop.

Built here exactly as ``make dist`` builds it (``python -m build``: the sdist, then the wheel from
the sdist), into a temporary directory.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from lab.installs import REPO, build_dist, wheel_names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built, _sdist = build_dist(tmp_path_factory.mktemp("dist"))
    return built


def dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (path,) = [n for n in zf.namelist() if n.endswith(f".dist-info/{name}")]
        return zf.read(path).decode()


def test_the_only_top_level_name_is_edgeloop(wheel):
    assert dist_info(wheel, "top_level.txt").split() == ["edgeloop"]
    record = [row[0] for row in csv.reader(io.StringIO(dist_info(wheel, "RECORD"))) if row]
    tops = {path.split("/")[0] for path in record if ".dist-info/" not in path}
    assert tops == {"edgeloop"}, tops
    assert {n.split("/")[0] for n in wheel_names(wheel) if ".dist-info/" not in n} == {"edgeloop"}


def test_board_profiles_and_bundled_models_ship(wheel):
    names = set(wheel_names(wheel))
    boards = sorted((REPO / "devices" / "boards").glob("*.yaml"))
    models = sorted((REPO / "runtime" / "models").glob("*.tflite"))
    assert len(boards) >= 3 and len(models) >= 2
    for profile in boards:
        assert f"edgeloop/devices/boards/{profile.name}" in names
    for model in models:
        assert f"edgeloop/edge/models/{model.name}" in names
        assert f"edgeloop/edge/models/{model.with_suffix('.json').name}" in names  # metadata beside each model


def test_the_workshop_does_not_ship(wheel):
    for name in wheel_names(wheel):
        parts = name.split("/")
        assert not {"lab", "tests", "benchmarks", "docker", "docs"} & set(parts), name
        assert parts[-1] != "conftest.py", name
    # Nothing installed imports the workshop or the tests.
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(".py"):
                text = zf.read(name).decode()
                for pkg in ("lab", "tests", "benchmarks"):
                    assert f"from {pkg}." not in text and f"import {pkg}." not in text, (name, pkg)


def test_opencv_is_only_in_the_vision_extra(wheel):
    """The edge and tflite installs carry no OpenCV: it is half of an edge install and only cameras need it."""
    meta = Parser().parsestr(dist_info(wheel, "METADATA"))
    extras = set(meta.get_all("Provides-Extra"))
    assert {"edge", "vision", "tflite", "bridge", "train", "dev"} <= extras
    requires = meta.get_all("Requires-Dist")
    opencv = [r for r in requires if r.lower().startswith("opencv")]
    assert opencv and all('extra == "vision"' in r for r in opencv), opencv
    assert any(r.startswith("ai-edge-litert") and 'extra == "edge"' in r for r in requires)
    assert any(r.startswith("tflite-runtime") and 'extra == "tflite"' in r for r in requires)


def test_a_git_url_builds_the_same_package(tmp_path):
    """README's ``pip install 'edgeloop[edge] @ git+URL'``: pip clones and builds (here: this checkout's HEAD).

    A bare ``git+file://`` URL: pip's PEP 508 parser wants a host in ``name @ URL`` form.
    """
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                             "-w", str(tmp_path), f"git+file://{REPO}"],
                            capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = tmp_path.glob("edgeloop-*.whl")
    assert dist_info(built, "top_level.txt").split() == ["edgeloop"]
    assert "edgeloop/edge/models/vibration_ae.tflite" in wheel_names(built)
