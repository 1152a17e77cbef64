"""edgeloop benchmarks: ``make bench`` (``python -m benchmarks``); not part of ``make test``.

Each figure is reported beside the physical limit and a naive baseline
measured in the same run (see docs/benchmarks.md and benchmarks/RESULTS.md).
"""
