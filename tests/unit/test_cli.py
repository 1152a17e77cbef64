"""The ``edgeloop`` dispatcher and the commands components register with it, as real processes.

- components are found through the installed distribution's entry points, and registering them
  imports nothing but argparse and the core;
- the core never names a component, not even in a lazy import;
- a command whose extra is missing says which one to install (exit 2), without a traceback;
- ``model info``: a summary, ``--json``, exit 3 for a model that cannot be used, quiet on a closed pipe.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from lab.procs import run_cli

from edgeloop.extras import EXTRAS
from edgeloop.modelfile import metadata_path

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "runtime" / "models" / "vibration_ae.tflite"
COMPONENTS = {"edge": "edgeloop.edge.cli:register", "bridge": "edgeloop.bridge.cli:register",
              "devices": "edgeloop.devices.cli:register"}
#: What an install without the extras does not have: none of it may be imported to list the commands.
THIRD_PARTY = ("numpy", "paho", "pydantic", "yaml", "cv2", "ai_edge_litert", "tflite_runtime", "tensorflow",
               "influxdb_client", "urllib3", "pyarrow", "scipy", "river", "cryptography", "prometheus_client")


#: ``python -m edgeloop ARGS`` to completion, as a user runs it.
edgeloop = functools.partial(run_cli, module="edgeloop")


def refusing(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment whose Python cannot import ``modules``, as if their extra were not installed."""
    site = tmp_path / "refuse"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import sys

        class Refuse:
            names = {set(modules)!r}

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.names:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        """))
    return {**os.environ, "PYTHONPATH": str(site)}


# ----------------------------------------------------------------------------- discovery


def test_the_installed_distribution_registers_the_three_components():
    found = {ep.name: ep.value for ep in distribution("edgeloop").entry_points if ep.group == "edgeloop.commands"}
    assert found == COMPONENTS


def test_help_lists_every_components_commands():
    run = edgeloop("--help")
    assert run.returncode == 0 and run.stderr == ""
    listed = set(re.findall(r"^  (\w+ \w+)  ", run.stdout, re.M))
    assert {"edge run", "model info", "config check", "bridge run", "keys generate", "model retrain",
            "model list", "model deploy", "devices simulate", "devices camera"} <= listed
    assert "model build" not in listed
    assert "exit codes: 0 ok, 1 runtime failure, 2 configuration error" in run.stdout


def test_registering_the_commands_imports_nothing_heavy():
    code = ("import sys; from edgeloop.cli import build_parser; build_parser(); "
            "print(' '.join(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    modules = run.stdout.split()
    assert [m for m in modules if m.split(".")[0] in THIRD_PARTY] == []
    assert sorted(m for m in modules if m.startswith("edgeloop.")) == [
        "edgeloop.bridge", "edgeloop.bridge.cli", "edgeloop.bridge.cli_registry", "edgeloop.cli", "edgeloop.commands",
        "edgeloop.devices", "edgeloop.devices.cli", "edgeloop.edge", "edgeloop.edge.cli", "edgeloop.errors",
        "edgeloop.extras",
    ]


def test_the_core_never_names_a_component_not_even_lazily():
    """No import, importlib call or __import__ in edgeloop/ names edgeloop.edge, .bridge or .devices."""
    component = re.compile(r"^edgeloop\.(edge|bridge|devices)(\.|$)")
    offenders = []
    for path in (REPO / "edgeloop").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("import_module", "__import__", "find_spec"):
                    names = [str(node.args[0].value)]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if component.match(n)]
    assert offenders == []


# ----------------------------------------------------------------------------- extras


def test_each_extra_named_provides_the_modules_it_is_checked_for():
    """``pip install 'edgeloop[X]'`` in the message really installs what was missing."""
    requires = [Requirement(r) for r in distribution("edgeloop").requires or []]
    provided = packages_distributions()

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    for extra, needs in EXTRAS.items():
        in_extra = {norm(r.name) for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})}
        for need in needs:
            options = need if isinstance(need, tuple) else (need,)
            dists = {norm(d) for m in options for d in provided.get(m.split(".")[0], [])}
            assert dists & in_extra, f"extra {extra!r} does not install any of {options} ({sorted(in_extra)})"


@pytest.mark.parametrize("refused, args, message", [
    (["influxdb_client"], ["bridge", "run"],
     "edgeloop bridge run needs the 'bridge' extra (missing: influxdb_client): pip install 'edgeloop[bridge]'"),
    (["pyarrow", "scipy"], ["model", "list"],
     "edgeloop model list needs the 'bridge' extra (missing: pyarrow, scipy): pip install 'edgeloop[bridge]'"),
    (["tensorflow"], ["model", "retrain", "vibration_ae"],
     "edgeloop model retrain needs the 'train' extra (missing: tensorflow): pip install 'edgeloop[train]'"),
    (["cv2"], ["devices", "camera", "--count", "1"],
     "edgeloop devices camera needs the 'vision' extra (missing: cv2): pip install 'edgeloop[vision]'"),
    (["ai_edge_litert", "tflite_runtime", "tensorflow"], ["edge", "run"],
     "edgeloop edge run needs the 'edge' extra (missing: ai_edge_litert or tflite_runtime): "
     "pip install 'edgeloop[edge]' (32-bit Pi OS: 'edgeloop[tflite]')"),
    (["ai_edge_litert", "tflite_runtime", "tensorflow"], ["config", "check", str(REPO / "docker/config/edge.yaml")],
     "edgeloop config check (edge config) needs the 'edge' extra (missing: ai_edge_litert or tflite_runtime): "
     "pip install 'edgeloop[edge]' (32-bit Pi OS: 'edgeloop[tflite]')"),
], ids=["bridge-run", "model-list", "model-retrain", "devices-camera", "edge-run", "config-check-edge"])
def test_a_missing_extra_is_one_line_and_exit_2(tmp_path, refused, args, message):
    env = refusing(tmp_path, *refused)
    run = edgeloop(*args, env=env)
    assert (run.returncode, run.stderr, run.stdout) == (2, message + "\n", "")
    # The commands are still listed, and those that need nothing refused still work.
    listing = edgeloop("--help", env=env)
    assert listing.returncode == 0 and "bridge run" in listing.stdout and listing.stderr == ""


def test_retrain_request_needs_only_the_bridge_extra(tmp_path):
    # --request asks a running bridge: TensorFlow is not needed, so its absence is not the error.
    run = edgeloop("model", "retrain", "x", "--request", "--broker", "mqtt://127.0.0.1:1",
                   env=refusing(tmp_path, "tensorflow"))
    assert "extra" not in run.stderr and run.returncode == 4, run.stderr


def test_config_check_is_core_a_bridge_file_needs_no_extra(tmp_path):
    config = tmp_path / "bridge.yaml"
    config.write_text("subscribe: ['results/+/+']\nsamples: {enabled: true, dir: /tmp/samples}\n")
    run = edgeloop("config", "check", str(config),
                   env=refusing(tmp_path, "influxdb_client", "urllib3", "pyarrow", "scipy", "river", "cryptography"))
    assert run.returncode == 0 and "valid bridge configuration" in run.stdout, run.stderr


def test_an_edge_with_cameras_needs_the_vision_extra_and_without_them_does_not(tmp_path):
    camera = tmp_path / "camera.yaml"
    camera.write_text("vision:\n  cameras:\n    - camera: belt\n")
    env = refusing(tmp_path, "cv2")
    run = edgeloop("config", "check", str(camera), env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().endswith(
        f"a camera pipeline (vision: in {camera}) needs the 'vision' extra (missing: cv2): "
        "pip install 'edgeloop[edge,vision]'")
    assert edgeloop("config", "check", str(REPO / "devices/boards/rpi-64bit.yaml"), env=env).returncode == 0


def test_an_edge_with_a_sparkplug_input_needs_the_sparkplug_extra(tmp_path):
    config = tmp_path / "sparkplug.yaml"
    config.write_text("pipelines:\n  - sensor: boiler\n    input: {codec: sparkplug, metrics: [T, P, Running]}\n")
    run = edgeloop("config", "check", str(config), env=refusing(tmp_path, "google"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().endswith(
        f"a Sparkplug input (codec: sparkplug in {config}) needs the 'sparkplug' extra (missing: google.protobuf): "
        "pip install 'edgeloop[edge,sparkplug]'")
    assert edgeloop("config", "check", str(config)).returncode == 0


# ----------------------------------------------------------------------------- model info


def test_model_info_summary():
    run = edgeloop("model", "info", str(BUNDLED))
    assert run.returncode == 0, run.stderr
    meta = json.loads(metadata_path(BUNDLED).read_text())
    lines = dict(line.split(None, 1) for line in run.stdout.splitlines())
    assert lines["model"] == f"vibration_ae {meta['version']} (anomaly)"
    assert lines["file"] == f"{BUNDLED} ({BUNDLED.stat().st_size:,} bytes)"
    assert lines["sha256"] == f"{meta['sha256'][:16]}...  ok, matches the metadata"
    assert lines["interpreter"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert lines["input"].split()[1:] == ["Nx30", "float32"] and lines["output"].split()[1:] == ["Nx1", "float32"]
    assert lines["threshold"].startswith(f"{meta['threshold']:.6g}") and lines["labels"] == "normal, anomaly"
    assert len(run.stdout.splitlines()) < 15  # short: --json has the rest


def test_model_info_json_is_the_full_document():
    run = edgeloop("model", "info", "--json", str(BUNDLED))
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["sha256_ok"] is True and info["input_spec_ok"] is True and info["problems"] == []
    assert info["metadata"]["reference"]["feature_quantiles"] and info["inputs"][0]["shape"] == [None, 30]


def _copy(tmp_path: Path) -> Path:
    model = tmp_path / BUNDLED.name
    shutil.copy(BUNDLED, model)
    shutil.copy(metadata_path(BUNDLED), metadata_path(model))
    return model


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "cannot read model file"),
    ("bytes", "but its metadata says"),
    ("metadata", "invalid model metadata"),
    ("no-metadata", "cannot read model metadata"),
    ("unloadable", "the interpreter cannot load"),
])
def test_model_info_exits_3_for_a_model_that_cannot_be_used(tmp_path, damage, fragment):
    model = _copy(tmp_path)
    if damage == "missing":
        model.unlink()
    elif damage == "bytes":
        model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    elif damage == "metadata":
        metadata_path(model).write_text('{"name": "vibration_ae"}')
    elif damage == "no-metadata":
        metadata_path(model).unlink()
    else:  # metadata that matches bytes the interpreter refuses
        garbage = b"not a flatbuffer" * 4
        model.write_bytes(garbage)
        meta = json.loads(metadata_path(model).read_text())
        meta["sha256"] = __import__("hashlib").sha256(garbage).hexdigest()
        metadata_path(model).write_text(json.dumps(meta))
    for flags in ([], ["--json"]):
        run = edgeloop("model", "info", *flags, str(model))
        assert run.returncode == 3, (flags, run.stdout, run.stderr)
        assert run.stderr.startswith("edgeloop: model error: ") and "Traceback" not in run.stderr
        assert fragment in run.stdout + run.stderr
        if flags and damage != "missing":
            assert json.loads(run.stdout)["problems"]


def test_model_info_piped_to_head_exits_quietly():
    run = subprocess.run(["bash", "-c", f"{sys.executable} -m edgeloop model info {BUNDLED} | head -1; "
                          "exit ${PIPESTATUS[0]}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.startswith("model        vibration_ae")


@pytest.mark.parametrize("args", [["model", "info", str(BUNDLED)], ["model", "info", "--json", str(BUNDLED)],
                                  ["--help"]], ids=["summary", "json", "help"])
def test_a_closed_pipe_on_stdout_exits_0_with_nothing_on_stderr(args):
    """The reader is gone before the first write (``| head`` that has had its line): always EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", "edgeloop", *args], cwd=REPO, stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (run.returncode, run.stderr) == (0, "")


def test_keys_generate_refuses_to_overwrite_and_names_force(tmp_path):
    assert edgeloop("keys", "generate", "--out", str(tmp_path)).returncode == 0
    before = (tmp_path / "deploy.key").read_bytes()
    run = edgeloop("keys", "generate", "--out", str(tmp_path))
    assert run.returncode == 2 and "already exists" in run.stderr and "--force overwrites them" in run.stderr, run.stderr
    assert (tmp_path / "deploy.key").read_bytes() == before
    assert edgeloop("keys", "generate", "--out", str(tmp_path), "--force").returncode == 0
    assert (tmp_path / "deploy.key").read_bytes() != before


@pytest.mark.parametrize("config, says", [
    (None, "no -c bridge.yaml was given, so there is no sample store"),
    ("samples: {enabled: false}\n", "samples.enabled is false, so there is no sample store"),
    ("samples: {enabled: true, dir: '{tmp}/nowhere'}\n", "the sample store {tmp}/nowhere does not exist"),
], ids=["no-config", "store-off", "store-empty"])
def test_retrain_without_a_sample_store_says_so_and_how_to_turn_it_on(tmp_path, config, says):
    args = ["model", "retrain", "vibration_ae", "--registry", str(tmp_path / "registry")]
    if config is not None:
        (tmp_path / "bridge.yaml").write_text(config.replace("{tmp}", str(tmp_path)))
        args += ["-c", str(tmp_path / "bridge.yaml")]
    run = edgeloop(*args)
    assert run.returncode == 2 and says.replace("{tmp}", str(tmp_path)) in run.stderr, run.stderr
    assert "samples: {enabled: true" in run.stderr or "samples.enabled: true" in run.stderr
    assert "field samples" in run.stderr and "only 0" not in run.stderr


def test_model_add_registers_a_file_as_another_version(tmp_path):
    from edgeloop.bridge.registry import Registry
    from edgeloop.modelfile import load_model_files, sha256_bytes, write_model_files

    reg = ["--registry", str(tmp_path / "registry")]
    assert edgeloop("model", "add", str(BUNDLED), "--promote", *reg).returncode == 0
    run = edgeloop("model", "add", "vibration_ae", str(BUNDLED), "--version", "1.1.0", *reg)
    assert run.returncode == 0 and "added vibration_ae 1.1.0" in run.stdout and "parent 1.0.0" in run.stdout, run.stderr
    registry = Registry(tmp_path / "registry")
    path, meta = registry.get("vibration_ae", "1.1.0")  # sha256 checked against the rewritten metadata
    assert meta.version == "1.1.0" and meta.sha256 == sha256_bytes(BUNDLED.read_bytes()) == sha256_bytes(path.read_bytes())
    assert meta.model_dump(exclude={"version"}) == load_model_files(BUNDLED)[1].model_dump(exclude={"version"})
    assert registry.record("vibration_ae", "1.1.0")["parent"] == "1.0.0" and registry.current("vibration_ae") == "1.0.0"
    assert {"action": "add", "version": "1.1.0", "from_version": "1.0.0"}.items() <= registry.audit()[-1].items()

    # Other bytes under a version the registry holds: refused, naming the way out.
    content, bundled_meta = load_model_files(BUNDLED)
    other = write_model_files(tmp_path / "other", content + b"\0",
                              bundled_meta.model_copy(update={"sha256": sha256_bytes(content + b"\0")}))
    run = edgeloop("model", "add", str(other), *reg)
    assert run.returncode == 1 and "`edgeloop model add vibration_ae FILE --version X.Y.Z`" in run.stderr, run.stderr
    # A name that is not the file's, and a version that cannot be a topic level.
    run = edgeloop("model", "add", "other_model", str(other), "--version", "2.0.0", *reg)
    assert run.returncode == 2 and "holds model 'vibration_ae'" in run.stderr, run.stderr
    run = edgeloop("model", "add", "vibration_ae", str(other), "--version", "2 0", *reg)
    assert run.returncode == 1 and "must match" in run.stderr, run.stderr
    assert registry.versions("vibration_ae") == ["1.0.0", "1.1.0"]
