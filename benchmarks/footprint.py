"""``python -m benchmarks.footprint [--quick]``: what an edge install costs, ``[edge]`` vs ``[edge,vision]``.

Measured on the install users get: ``make dist``'s wheel, installed with the tested constraints
(devices/boards/constraints-edge.txt) into two fresh venvs (lab/installs.py).

- **Disk**: bytes of every installed distribution (the files in its RECORD, bytecode
  included), and the venv's site-packages less pip and setuptools.
- **Import cost**: VmRSS of a fresh interpreter of that venv before and after one import
  (numpy, pydantic, paho, LiteRT on top of numpy, OpenCV on top of numpy, the whole sensor edge).
- **The edge**: ``edgeloop edge run`` (the venv's console script) against mosquitto with the
  bundled model: VmRSS at idle once it is online, then under a paced load (``benchmarks.harness``
  C publishers, realistic readings at QoS 1): the highest VmRSS sampled during the load and
  VmHWM at the end. Three runs: ``[edge]``; ``[edge,vision]`` with no camera configured
  (OpenCV installed but never imported); ``[edge,vision]`` with a camera configured (the
  bundled int8 classifier built and OpenCV loaded; no frames sent -- frame throughput is
  ``python -m benchmarks.vision``).

Writes ``benchmarks/results/footprint.json`` and prints a Markdown summary (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.harness import EdgeProcess, PacedFeed, ReadingSource, bench_broker, machine_facts
from lab.installs import CONSTRAINTS, Venv, build_dist
from lab.procs import peak_rss_mb

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
INSTALLS = {"edge": "edge", "edge+vision": "edge,vision"}
#: (label, set-up statement not counted, the measured statement)
IMPORTS = [
    ("numpy", "", "import numpy"),
    ("pydantic (BaseModel)", "", "from pydantic import BaseModel"),
    ("paho-mqtt", "", "import paho.mqtt.client"),
    ("LiteRT, numpy already loaded", "import numpy", "from ai_edge_litert.interpreter import Interpreter"),
    ("OpenCV, numpy already loaded", "import numpy", "import cv2"),
    ("the sensor edge (edgeloop.edge.app)", "", "import edgeloop.edge.app"),
]
_RSS = "def rss():\n    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) / 1024\n"


def vm_rss_mb(pid: int) -> float:
    """Resident set size now (``VmRSS`` in /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def disk(venv: Venv) -> dict:
    """Installed bytes per distribution (from RECORD) and site-packages without the venv's own pip/setuptools."""
    code = (
        "import importlib.metadata as m, json, os\n"
        "out = {}\n"
        "for d in m.distributions():\n"
        "    out[d.metadata['Name']] = sum(os.path.getsize(d.locate_file(f)) for f in d.files or [] if os.path.isfile(d.locate_file(f)))\n"
        "print(json.dumps(out))\n"
    )
    per_dist: dict[str, int] = venv.python_json(code)  # type: ignore[assignment]
    tools = {"pip", "setuptools"}
    total = sum(size for name, size in per_dist.items() if name.lower() not in tools)
    top = dict(sorted(((n, round(s / MB, 1)) for n, s in per_dist.items() if n.lower() not in tools), key=lambda kv: -kv[1]))
    return {"total_mb": round(total / MB, 1), "per_distribution_mb": top, "versions": venv.distributions()}


def import_costs(venv: Venv, repeats: int) -> dict:
    """MB of VmRSS each import adds in a fresh interpreter (median of ``repeats``), and a bare interpreter's."""
    out = {"bare_interpreter_mb": _median([venv.python_json(_RSS + "import json\nprint(json.dumps(rss()))")
                                           for _ in range(repeats)])}
    for label, setup, statement in IMPORTS:
        module = statement.split()[1]
        if not venv.has_module(module.split(".")[0]):
            continue
        code = f"{_RSS}import json\n{setup}\nbefore = rss()\n{statement}\nprint(json.dumps(rss() - before))\n"
        out[label] = _median([venv.python_json(code) for _ in range(repeats)])
    return out


def edge_run(venv: Venv, broker, workdir: Path, tag: str, config: dict | None, quick: bool) -> dict:  # noqa: ANN001
    """RSS of the installed edge: idle once online, under a paced sensor load, peak."""
    devices, rate, duration = (10, 500.0, 5.0) if quick else (20, 1000.0, 20.0)
    edge = EdgeProcess(broker, workdir, node_id=f"footprint-{tag}", config=config, program=[str(venv.bin("edgeloop"))])
    edge.start()
    try:
        time.sleep(1.0 if quick else 3.0)  # settle: the first status, the outbox, the interpreter's arenas
        idle = vm_rss_mb(edge.proc.pid)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                samples.append(vm_rss_mb(edge.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        feed = PacedFeed(broker, ReadingSource(devices), devices, qos=1)
        sampler.start()
        try:
            feed.run(rate, duration)
            time.sleep(2.0)  # the edge finishes what is queued
        finally:
            done.set()
            sampler.join()
            feed.close()
        peak = peak_rss_mb(edge.proc.pid)
        after = vm_rss_mb(edge.proc.pid)
    except BaseException:
        edge.kill()
        raise
    counters = edge.stop()
    return {
        "idle_rss_mb": round(idle, 1),
        "load_rss_mb_max": round(max(samples, default=after), 1),
        "after_load_rss_mb": round(after, 1),
        "peak_hwm_mb": round(peak, 1),
        "load": {"devices": devices, "readings_per_s": rate, "seconds": duration,
                 "readings_processed": counters.get("readings_in", 0), "results": counters.get("results_out", 0)},
    }


def run(workdir: Path, quick: bool = False) -> dict:
    progress("building the wheel (make dist)")
    wheel, _ = build_dist(workdir / "dist")
    venvs = {}
    for name, extras in INSTALLS.items():
        progress(f"installing {wheel.name}[{extras}] -c {CONSTRAINTS.name} into a fresh venv")
        venvs[name] = Venv.install(workdir / f"venv-{name}", wheel, extras)
    out: dict = {"machine": machine_facts(), "wheel": wheel.name, "constraints": str(CONSTRAINTS.relative_to(CONSTRAINTS.parents[2]))}
    for name, venv in venvs.items():
        progress(f"{name}: disk and import costs")
        out[name] = {"disk": disk(venv), "imports_mb": import_costs(venv, 1 if quick else 3)}
    runs = [("edge", "sensor", None), ("edge+vision", "sensor", None),
            ("edge+vision", "camera", {"vision": {"cameras": [{"camera": "belt"}]}})]
    with bench_broker(workdir) as broker:
        for name, tag, config in runs:
            progress(f"{name}, {tag} config: the edge at idle and under load")
            out[name][f"edge_{tag}"] = edge_run(venvs[name], broker, workdir, f"{name.replace('+', '-')}-{tag}", config, quick)
    return out


def markdown(result: dict) -> str:
    e, v = result["edge"], result["edge+vision"]
    lines = [
        "| install | installed | edge idle RSS | under load: max RSS | peak (VmHWM) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, data, key in [("`[edge]`", e, "edge_sensor"), ("`[edge,vision]`, no camera configured", v, "edge_sensor"),
                             ("`[edge,vision]`, a camera configured", v, "edge_camera")]:
        run_ = data[key]
        lines.append(f"| {label} | {data['disk']['total_mb']:.0f} MB | {run_['idle_rss_mb']:.0f} MB | "
                     f"{run_['load_rss_mb_max']:.0f} MB | {run_['peak_hwm_mb']:.0f} MB |")
    load = e["edge_sensor"]["load"]
    lines += ["", f"Load: {load['readings_per_s']:,.0f} readings/s over {load['devices']} devices for {load['seconds']:.0f} s "
              f"(QoS 1; {load['readings_processed']:,} readings processed by `[edge]`).", "",
              "| distribution | installed (MB) |", "|---|---:|"]
    lines += [f"| {name} | {size} |" for name, size in list(v["disk"]["per_distribution_mb"].items())[:10]]
    imports = dict(v["imports_mb"])
    lines += ["", f"| import in a fresh interpreter ({imports.pop('bare_interpreter_mb'):.1f} MB before any) | RSS added (MB) |",
              "|---|---:|"]
    lines += [f"| {label} | {mb:.1f} |" for label, mb in imports.items()]
    return "\n".join(lines)


def _median(values: list) -> float:
    values = sorted(float(x) for x in values)
    return round(values[len(values) // 2], 1)


def progress(msg: str) -> None:
    print(f"[footprint {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "footprint.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeloop-footprint-") as tmp:
        result = run(Path(tmp), args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    progress(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
