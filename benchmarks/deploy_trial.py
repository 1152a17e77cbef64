"""``python -m benchmarks.deploy_trial``: what trying a model in a child process adds to a deployment.

Beside the product (the edge's trial, ``edgeloop.edge.model_trial``, and the
cloud's, ``edgeloop.bridge.training.selftest.tried_selftest``) it times the
old path (load and self-test in process) and the floor of any child (a bare
``python -c pass``), in the same run: this machine is shared and noisy, so
compare within one run. The bundled model, 7 repetitions each, median (min, max).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from edgeloop.bridge.training.selftest import make_selftest, tried_selftest
from edgeloop.deploy_contract import ModelManifest, chunk_count
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.model_trial import run_selftest, trial
from edgeloop.modelfile import load_model_files

REPEAT = 7


def _times(fn) -> tuple[float, float, float]:  # noqa: ANN001
    out = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return statistics.median(out), min(out), max(out)


def main() -> None:
    content, meta = load_model_files(BUNDLED_MODEL)
    manifest = ModelManifest(model=meta.name, version=meta.version, sha256=meta.sha256, size=len(content),
                             chunk_size=65536, chunks=chunk_count(len(content), 65536), targets=["*"],
                             deploy_id="ab" * 8, seq=1, created=time.time(), metadata=meta,
                             selftest=make_selftest(content, meta))

    def in_process() -> None:
        run_selftest(TfliteModel.from_bytes(content, meta, max_batch=128), manifest)

    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, fn in [
        ("in-process load + self-test (no trial)", in_process),
        ("edge trial child (3 loads, batches 1..128, self-test)",
         lambda: trial(content, manifest, num_threads=None, max_batch=128, timeout_s=120)),
        ("cloud trial child (tried_selftest)", lambda: tried_selftest(content, meta, 120)),
        ("bare child (python -c pass)", lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)),
    ]:
        median, low, high = _times(fn)
        print(f"{name:<56} median {median:7.0f} ms  (min {low:.0f}, max {high:.0f})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
