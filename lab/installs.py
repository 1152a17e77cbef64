"""The install as a user gets it: build the wheel, install it with some extras into a fresh venv.

Used by the wheel tests (tests/integration/test_wheel.py, tests/e2e/test_wheel_install.py) and
the footprint benchmark (``python -m benchmarks.footprint``), so what they check and measure is
what ``make dist`` builds and the README tells users to install: the built wheel, never the
checkout, with the tested constraints file. pip's cache keeps a fresh edge venv at about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The tested upper bounds of an edge install (README, "Installing on a device").
CONSTRAINTS = REPO / "devices" / "boards" / "constraints-edge.txt"


def build_dist(outdir: Path) -> tuple[Path, Path]:
    """``python -m build`` of the checkout, as ``make dist`` runs it: (wheel, sdist) in ``outdir``.

    The wheel is built from the sdist, so a file the sdist misses fails here too.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(outdir), str(REPO)],
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"python -m build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (wheel,) = outdir.glob("edgeloop-*.whl")
    (sdist,) = outdir.glob("edgeloop-*.tar.gz")
    return wheel, sdist


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


class Venv:
    """A virtualenv that sees nothing of the checkout: commands run from ``path``, without PYTHONPATH."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"

    @classmethod
    def install(cls, path: Path, wheel: Path, extras: str, constraints: Path | None = CONSTRAINTS) -> Venv:
        """A new venv at ``path`` with ``wheel[extras]`` (and ``-c constraints``) installed."""
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True, capture_output=True, timeout=120)
        venv = cls(path)
        pin = ["-c", str(constraints)] if constraints is not None else []
        result = venv.run([venv.bin("pip"), "install", "--disable-pip-version-check", *pin, f"{wheel}[{extras}]"], timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"pip install into {path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return venv

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return {**env, "PYTHONUNBUFFERED": "1", **extra}

    def run(self, cmd: list[str | Path], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], cwd=self.path, env=self.env(**env), capture_output=True,
                              text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL)

    def edgeloop(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """``edgeloop ARGS`` through the installed console script."""
        return self.run([self.bin("edgeloop"), *args], timeout=timeout, **env)

    def python_json(self, code: str, timeout: float = 120) -> object:
        """Run ``code`` in the venv's interpreter; it prints one JSON document as its last line."""
        result = self.run([self.python, "-c", code], timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{code[:80]!r} failed in {self.path}:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def distributions(self) -> dict[str, str]:
        """Installed distribution name -> version."""
        code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
        return self.python_json(code)  # type: ignore[return-value]

    def has_module(self, name: str) -> bool:
        code = f"import importlib.util, json; print(json.dumps(importlib.util.find_spec({name!r}) is not None))"
        return bool(self.python_json(code))
