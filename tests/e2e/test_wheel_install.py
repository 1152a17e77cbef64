"""The edge install a user gets: the built wheel with ``[edge]`` and the tested constraints, in a fresh venv.

``make dist``'s wheel goes into a new virtualenv with ``pip install -c
devices/boards/constraints-edge.txt 'edgeloop-*.whl[edge]'`` (README, "Installing on a device"),
from PyPI, with no OpenCV. Its console script then runs the edge against a real mosquitto, checks
the board profiles it ships, describes the bundled model, and refuses the bridge with the extra
to install. Every command runs from the venv's directory, so nothing of the checkout is importable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edgeloop.contract import InferenceResult
from edgeloop.devices.simulator import FleetSimulator
from lab.installs import CONSTRAINTS, Venv, build_dist
from lab.servers import eventually
from lab.mqtt import Watcher, close, connect, publish_all
from lab.procs import CliProcess

DEVICES = 3
READINGS = 20  # per device: READINGS - 1 windows each (128-sample windows, hop 64, 64-sample readings)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    wheel, _sdist = build_dist(tmp_path_factory.mktemp("dist"))
    return Venv.install(tmp_path_factory.mktemp("edge") / "venv", wheel, "edge")


def installed_file(venv: Venv, package: str, name: str) -> Path:
    code = f"import importlib.resources as r, json; print(json.dumps(str(r.files({package!r}) / {name!r})))"
    path = Path(venv.python_json(code))  # type: ignore[arg-type]
    assert venv.path in path.parents and path.is_file(), path  # the venv's copy, not the checkout's
    return path


def test_the_edge_install_has_no_opencv_and_keeps_to_the_constraints(venv):
    dists = {name.lower(): version for name, version in venv.distributions().items()}
    assert not venv.has_module("cv2")
    assert not [name for name in dists if name.startswith("opencv")]
    assert "ai-edge-litert" in dists and "tensorflow" not in dists and "influxdb-client" not in dists
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.name.lower() in dists:
                assert req.specifier.contains(dists[req.name.lower()], prereleases=True), (line, dists[req.name.lower()])


def test_the_installed_edge_classifies_readings_from_a_real_broker(venv, mosquitto, tmp_path, unique_id):
    node = f"wheel-{unique_id}"
    collector = Watcher(mosquitto.port, ["status/#", "results/#", "deadletter/#"])
    edge = CliProcess(["edge", "run", "--broker", mosquitto.url, "--node-id", node], tmp_path / "edge.log",
                      program=[str(venv.bin("edgeloop"))], cwd=venv.path, base_env=venv.env()).start()
    try:
        collector.wait_online(node, edge)
        sim = FleetSimulator(DEVICES, seed=5, anomaly_rate=0.01, sensors=("vibration",))
        readings = list(sim.readings(count=DEVICES * READINGS))
        publish_all(pub := connect(mosquitto.port), [(t, r.model_dump_json(exclude_none=True).encode()) for t, r in readings])
        windows = DEVICES * (READINGS - 1)
        eventually(lambda: len(collector.on("results/")) >= windows, timeout=60, interval=0.2,
                   message=f"fewer than {windows} results from the installed edge")
        close(pub)
    finally:
        rc = edge.terminate()
        collector.close()
    assert rc == 0, edge.log()
    results = [InferenceResult.model_validate_json(p) for p in collector.on("results/")]
    assert sorted((r.device, r.seq) for r in results) == sorted(
        (f"dev-{d:03d}", seq) for d in range(DEVICES) for seq in range(1, READINGS)
    )
    model = json.loads(installed_file(venv, "edgeloop.edge.models", "vibration_ae.json").read_text())
    assert {(r.model, r.model_version) for r in results} == {(model["name"], model["version"])}
    assert collector.on("deadletter/") == []
    assert "cv2" not in edge.log() and "Traceback" not in edge.log()


@pytest.mark.parametrize("profile", ["rpi-64bit.yaml", "rpi-32bit-legacy.yaml", "jetson.yaml"])
def test_the_shipped_board_profiles_pass_config_check(venv, profile):
    path = installed_file(venv, "edgeloop.devices.boards", profile)
    result = venv.edgeloop("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "valid edge configuration" in result.stdout


def test_model_info_describes_the_bundled_model(venv):
    path = installed_file(venv, "edgeloop.edge.models", "vibration_ae.tflite")
    result = venv.edgeloop("model", "info", str(path))
    assert result.returncode == 0, result.stderr
    assert "vibration_ae" in result.stdout


def test_a_camera_config_names_the_vision_extra(venv, tmp_path):
    config = tmp_path / "camera.yaml"
    config.write_text("vision:\n  cameras:\n    - camera: belt\n")
    result = venv.edgeloop("config", "check", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "'vision' extra" in result.stderr


def test_a_bridge_command_says_which_extra_to_install(venv, mosquitto):
    result = venv.edgeloop("bridge", "run", "--broker", mosquitto.url, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "extra" in result.stderr and "bridge" in result.stderr, result.stderr


def test_the_footprint_benchmark_measures_this_install(venv):
    """``python -m benchmarks.footprint`` (docs/benchmarks.md) on the same install: sizes and import costs."""
    from benchmarks.footprint import disk, import_costs

    sizes = disk(venv)
    assert not [name for name in sizes["per_distribution_mb"] if name.lower().startswith("opencv")]
    assert sizes["per_distribution_mb"]["numpy"] > 1 and sizes["per_distribution_mb"]["ai-edge-litert"] > 1
    assert abs(sizes["total_mb"] - sum(sizes["per_distribution_mb"].values())) < 1  # rounding only
    costs = import_costs(venv, repeats=1)
    assert costs["bare_interpreter_mb"] > 0 and costs["numpy"] > 0
    assert "OpenCV, numpy already loaded" not in costs  # nothing to import: the edge install has none
