"""``make demo`` (``python -m lab.demo``): what it checks before it starts, and how it ends when the loop cannot.

- ``make demo`` installs the train extra before it runs the demo, whatever ran before it (``make
  -n`` on a copy of the Makefile in each state a clone can be in); CI runs ``make demo
  DEMO_ARGS=--check`` on its fresh clone (.ci/run).
- In a venv without TensorFlow (the extras ``make venv`` installs minus ``train``: pip-installed
  here from the checkout), the closed-loop demo names the missing extra and the commands that fix
  it and exits 2 at once, before it starts any server; the ingest demo (``--no-drift``) is ready.
- ``--duration`` is refused for the closed-loop demo, whose length its events set.
- A retrain the worker refuses is printed the moment the bridge has it, with its reason, and ends
  the demo (``DEMO FAILED: ...``, exit code 1) instead of idling until the publisher's end; a run
  with no drift gives up after ``max_s`` of publishing, the same way.

The runs below are the demo's own code with real servers, an edge process and the bridge; only
the drift monitor's windows are shorter than the demo's (so drift is found in seconds) and the
retrain asks for more samples than exist (a real refusal, from the real worker process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab.demo import verdict
from lab.installs import REPO, Venv
from lab.loopdemo import run_drift_demo

FAST_DRIFT = {"window_s": 6, "interval_s": 2, "consecutive": 2, "min_samples": 40, "min_device_samples": 10,
              "baseline_samples": 20}


def demo(*args: str, python: str = sys.executable, cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lab.demo", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, **kw)


# --------------------------------------------------------------------------- make demo on a fresh clone


@pytest.mark.parametrize("state", ["fresh clone", "after make venv", "after make venv-train"])
def test_make_demo_installs_the_train_extra_before_it_runs_the_demo(tmp_path, state):
    for name in ("Makefile", "pyproject.toml", "devices/boards/constraints-edge.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    if state != "fresh clone":
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / ".stamp-edge-bridge-dev").touch()
        if state == "after make venv-train":
            (tmp_path / ".venv" / ".stamp-train").touch()
    plan = subprocess.run(["make", "-n", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    run = next(i for i, line in enumerate(lines) if "-m lab.demo" in line)
    # The train extra is installed (or, when the stamp says it was, checked and repaired) before the demo.
    train = [i for i, line in enumerate(lines) if "pip install" in line and "train]" in line]
    assert train and min(train) < run, plan.stdout
    if state == "after make venv-train":
        check = next(i for i, line in enumerate(lines) if 'find_spec("tensorflow")' in line)
        assert check < run


# --------------------------------------------------------------------------- preflight


@pytest.fixture(scope="module")
def venv_without_tensorflow(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The checkout installed with the edge and bridge extras (what the demo needs but ``train``),
    and lab/ importable through a .pth file (it is not installed; the repo comes after site-packages)."""
    venv = Venv.install(tmp_path_factory.mktemp("no-tf") / "venv", REPO, "edge,bridge")  # pip builds the checkout
    assert not venv.has_module("tensorflow") and venv.has_module("influxdb_client")
    site = Path(venv.python_json("import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))"))
    (site / "edgeloop-checkout-lab.pth").write_text(str(REPO) + "\n")
    return venv


# The venv's pip install (from pip's cache) is most of it: 4 min on a loaded 2-core box.
@pytest.mark.timeout(900)
def test_without_tensorflow_the_demo_says_what_is_missing_before_it_starts_anything(venv_without_tensorflow):
    venv = venv_without_tensorflow
    result = venv.run([venv.python, "-m", "lab.demo"])
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err and result.stdout == ""  # no work dir, no server: nothing was started
    assert "cannot start, missing" in err and "'train' extra" in err and "tensorflow" in err, err
    assert "make venv-train" in err and "-e '.[train]'" in err and "--no-drift" in err, err
    assert "'edge' extra" not in err and "'bridge' extra" not in err  # only what is missing
    # The ingest demo trains nothing: ready in the same venv.
    ready = venv.run([venv.python, "-m", "lab.demo", "--no-drift", "--check"])
    assert ready.returncode == 0 and "ingest demo: ready" in ready.stdout, ready.stdout + ready.stderr


def test_the_demo_is_ready_in_the_make_venv():
    result = demo("--check")
    assert result.returncode == 0 and "closed-loop demo: ready" in result.stdout, result.stdout + result.stderr


def test_duration_is_refused_for_the_closed_loop_demo():
    result = demo("--duration", "30")
    assert result.returncode == 2 and "--duration sets the ingest demo's length" in result.stderr, result.stderr
    assert "about 4 min" in result.stderr and result.stdout == ""


# --------------------------------------------------------------------------- ending when the loop cannot


@pytest.mark.timeout(400)
def test_a_refused_retrain_is_shown_at_once_and_ends_the_demo(tmp_path, capsys):
    result = run_drift_demo(
        devices=4, drift_at_s=12, max_s=120, stop=threading.Event(), workdir=tmp_path, drift=FAST_DRIFT,
        retrain={"min_train_samples": 50_000, "max_train_samples": 50_000, "wait_for_samples_s": 0},
    )
    out = capsys.readouterr().out
    failure = result["failure"]
    assert failure is not None and failure.startswith("retrain refused: only ") and "(need 50000)" in failure, out
    assert result["new_version"] is None and result["delays_s"]["detection_s"] is not None
    # Live: the refusal line comes before the scorecard (printed after everything has stopped).
    assert out.index(f"s  {failure}") < out.index("drift detected")
    assert result["edge_exit_code"] == 0 and not result["interrupted"]
    code, message = verdict(result)
    assert code == 1 and message.strip().startswith(f"DEMO FAILED: {failure}") and str(tmp_path) in message


@pytest.mark.timeout(300)
def test_without_drift_the_demo_gives_up_after_max_s(tmp_path, capsys):
    result = run_drift_demo(devices=2, drift_at_s=100, max_s=15, stop=threading.Event(), workdir=tmp_path,
                            drift={"min_samples": 1_000_000})
    assert result["failure"] == "no new model on the edge after 15 s of publishing (loop: no drift detected)"
    code, message = verdict(result)
    assert code == 1 and "DEMO FAILED: no new model on the edge" in message
    assert "drift detected" in (out := capsys.readouterr().out) and "did not happen" in out  # the scorecard
