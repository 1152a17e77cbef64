"""What each import costs the edge's memory, in this interpreter (``make bench``'s ``imports``).

Why in ``make bench``: the sensor-only edge's peak RSS goal (issue 12) is mostly imports, so
the run that reports the peak says what numpy, pydantic, paho and LiteRT each add. VmRSS of a
fresh interpreter before and after one statement, median of three; ``benchmarks.footprint``
does the same in the venvs a user installs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from benchmarks.footprint import _RSS

#: (label, set-up statement not counted, the measured statement)
IMPORTS = [
    ("numpy", "", "import numpy"),
    ("pydantic (BaseModel)", "", "from pydantic import BaseModel"),
    ("paho-mqtt", "", "import paho.mqtt.client"),
    ("LiteRT, numpy already loaded", "import numpy", "from ai_edge_litert.interpreter import Interpreter"),
    ("the wire contract (edgeloop.contract)", "", "import edgeloop.contract"),
    ("the sensor edge (edgeloop.edge.app)", "", "import edgeloop.edge.app"),
]


def _measure(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run(quick: bool) -> dict:
    repeats = 1 if quick else 3
    out = {"bare_interpreter_mb": round(statistics.median(
        _measure(_RSS + "import json\nprint(json.dumps(rss()))") for _ in range(repeats)), 1)}
    for label, setup, statement in IMPORTS:
        code = f"{_RSS}import json\n{setup}\nbefore = rss()\n{statement}\nprint(json.dumps(rss() - before))\n"
        try:
            out[label] = round(statistics.median(_measure(code) for _ in range(repeats)), 1)
        except subprocess.CalledProcessError:  # e.g. no LiteRT on this platform
            out[label] = None
    return out
