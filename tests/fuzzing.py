"""Shared pieces of the property-based tests at the parsing boundaries (tests/unit/test_fuzz_*.py).

``EDGELOOP_FUZZ_EXAMPLES`` sets the number of generated inputs per boundary (default 300, the
figure ``make test`` runs); a deeper run for the figures in docs/security.md:

    EDGELOOP_FUZZ_EXAMPLES=5000 EDGELOOP_FUZZ_REPORT=fuzz.json .venv/bin/pytest -q tests/unit/test_fuzz_*.py

Strategies aim at what a peer can actually send: random bytes, random JSON, and "near misses"
-- a valid document with one leaf replaced, removed or added -- which get past the first checks
and reach the deep validators, where the interesting bugs live.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("EDGELOOP_FUZZ_EXAMPLES", "300"))

#: Inputs tried per boundary in this process; written as JSON to $EDGELOOP_FUZZ_REPORT at exit.
TALLY: Counter[str] = Counter()


def tally(boundary: str, n: int = 1) -> None:
    TALLY[boundary] += n


def _write_report() -> None:
    path = os.environ.get("EDGELOOP_FUZZ_REPORT")
    if path and TALLY:
        with open(path, "w") as fh:
            json.dump({"examples_per_test": FUZZ_EXAMPLES, "inputs": dict(TALLY)}, fh, indent=2)


atexit.register(_write_report)

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

#: Strings that break naive parsers: separators, wildcards, escapes, control and non-BMP characters.
NASTY_TEXT = [
    "", " ", "/", "+", "#", "$SYS", "a/b", "dev/+/#", "\x00", "\n", "\r\n", "\\", '"', "'", "=", ",", "\t",
    "é", "\u2028", "\ud7ff", "🙂", "${HOME}", "${UNSET_EDGELOOP_VAR}", "%u", "%c", "null", "NaN", "Infinity",
    "-0", "1e309", "0x10", "9" * 40, "a" * 300,
]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**40, 0.0, -0.0, 1e-320, 5e-324,
                 1.7976931348623157e308, -1.7976931348623157e308, 3.5e38, -3.5e38, 1e30, 0.1]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_NUMBERS),
    st.text(max_size=24),
    st.sampled_from(NASTY_TEXT),
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


def json_bytes(value: Any) -> bytes:
    """JSON as a peer may send it: NaN/Infinity literals allowed (they are a classic attack)."""
    return json.dumps(value, allow_nan=True).encode()


def leaf_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a value inside ``doc``, containers included."""
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += leaf_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            paths += leaf_paths(value, (*prefix, i))
    return paths


def _replace(doc: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        out = dict(doc)
        if delete and not rest:
            out.pop(head, None)
        else:
            out[head] = _replace(doc[head], rest, value, delete)
        return out
    out = list(doc)
    if delete and not rest:
        del out[head]
    else:
        out[head] = _replace(doc[head], rest, value, delete)
    return out


@st.composite
def near_miss(draw: st.DrawFn, valid: Any, values: st.SearchStrategy = json_values,
              extra_keys: list[str] | None = None) -> Any:
    """``valid`` with one change: a value replaced, a key removed, or a key added."""
    paths = leaf_paths(valid)
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    if action == "delete" and path:
        return _replace(valid, path, None, delete=True)
    if action == "add":
        containers = [p for p in paths if isinstance(_get(valid, p), dict)]
        if containers:
            where = draw(st.sampled_from(containers))
            key = draw(st.sampled_from(extra_keys) if extra_keys else st.text(min_size=1, max_size=10))
            target = dict(_get(valid, where))
            target[key] = draw(values)
            return _replace(valid, where, target)
    return _replace(valid, path, draw(values))


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc
