"""A sensor edge never imports OpenCV; a camera config without it says which extra to install.

OpenCV (the ``vision`` extra) is about half of an edge install, and the 32-bit Pi install
(``[tflite]``) has none. Each check runs in a fresh interpreter whose import system refuses
``cv2`` and records every attempt, so an import of OpenCV anywhere on the path -- even one
that catches the ImportError -- fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Prepended to every script: a meta-path finder that refuses cv2 and records who asked.
BLOCK_CV2 = textwrap.dedent("""
    import sys
    ATTEMPTS = []

    class NoOpenCV:
        def find_spec(self, name, path=None, target=None):
            if name == "cv2" or name.startswith("cv2."):
                ATTEMPTS.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, NoOpenCV())
""")


def run_blocked(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_CV2 + textwrap.dedent(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_sensor_edge_starts_up_without_opencv(tmp_path):
    """Load the config, build the engine on the bundled model, build the app and the CLI: no cv2."""
    config = tmp_path / "edge.yaml"
    config.write_text("node_id: slim-edge\nmqtt: {url: 'mqtt://127.0.0.1:1'}\n")
    result = run_blocked(f"""
        import json
        from edgeloop.cli import build_parser
        from edgeloop.edge.app import EdgeApp
        from edgeloop.edge.config import BUNDLED_MODEL, load_edge_config

        args = build_parser().parse_args(["edge", "run", "-c", {str(config)!r}])
        cfg = load_edge_config(args.config)
        app = EdgeApp(cfg, source=args.config)  # loads the model and builds every pipeline; connects nothing
        runners = app.engine.runners.values()
        print(json.dumps({{"attempts": ATTEMPTS, "cv2_loaded": "cv2" in sys.modules, "vision": app.vision is None,
                          "multiprocessing": "multiprocessing" in sys.modules,  # only with workers > 1
                          "models": [str(r.model.path) for r in runners], "bundled": str(BUNDLED_MODEL)}}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [] and out["cv2_loaded"] is False
    assert out["vision"] is True
    assert out["multiprocessing"] is False
    assert out["models"] == [out["bundled"]]


def test_the_blocker_catches_an_opencv_import(tmp_path):
    """The check above can fail: importing the camera path records the attempt."""
    result = run_blocked("""
        try:
            import edgeloop.edge.vision.ops
        except ImportError as exc:
            print(repr(exc))
        print(ATTEMPTS)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'vision' extra" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "['cv2']"


@pytest.mark.parametrize("command", [["config", "check"], ["edge", "run", "-c"]], ids=["config check", "edge run"])
def test_a_camera_config_without_opencv_names_the_vision_extra(command, tmp_path):
    config = tmp_path / "camera.yaml"
    config.write_text("mqtt: {url: 'mqtt://127.0.0.1:1'}\nvision:\n  cameras:\n    - camera: belt\n")
    result = run_blocked(f"""
        from edgeloop.cli import main
        sys.exit(main({[*command, str(config)]!r}))
    """, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"a camera pipeline (vision: in {config})" in result.stderr  # the file and the field
    assert "'vision' extra" in result.stderr and "edgeloop[edge,vision]" in result.stderr


def test_only_the_vision_extra_brings_opencv():
    """pyproject: OpenCV is in `vision` and nowhere else, so `[edge]` and `[tflite]` stay small."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    with_opencv = {name for name, reqs in extras.items() if any(r.lower().startswith("opencv") for r in reqs)}
    assert with_opencv == {"vision"}
