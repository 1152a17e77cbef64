"""Edge and bridge configs for the rigs: a base, then overrides deep-merged in order.

Every rig (tests, demos, fault rigs, benchmarks) builds the dict an
``edge.yaml`` / ``bridge.yaml`` holds here, so a field renamed in the product
is renamed once in the workshop. Presets are plain dicts to merge in;
``write_config`` writes one for ``edgeloop ... -c FILE`` (JSON is YAML).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

#: Notice a lost broker within seconds and come back quickly (fault rigs, short tests).
FAST_RECONNECT = {"mqtt": {"keepalive_s": 5, "reconnect_min_s": 0.5, "reconnect_max_s": 2}}


def merge(base: dict, *overrides: dict) -> dict:
    """A new dict: ``base`` with each override merged in, nested dicts key by key, anything else replaced
    (the arguments, presets included, are never modified nor shared with the result)."""
    out = copy.deepcopy(base)
    for over in overrides:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


#: Bridge override for tests and benchmarks that publish synthetic results (fixed timestamps, versions no
#: edge announces in a status): the store's known-version check off and the past window at its maximum.
#: Production keeps both (docs/security.md, "What a device can and cannot do to the store and the loop").
SYNTHETIC_RESULTS = {"store": {"known_versions": "off", "max_past_s": 10 * 365 * 86_400.0}}


def edge_config(node: str, broker_url: str, *overrides: dict) -> dict:
    """An edge config: node id and broker, then ``overrides``."""
    return merge({"node_id": node, "mqtt": {"url": broker_url}}, *overrides)


def bridge_config(broker_url: str, influx_url: str, db: str, *overrides: dict) -> dict:
    """A bridge config writing to an InfluxDB 1.x database (flushed every 200 ms), then ``overrides``."""
    base = {"mqtt": {"url": broker_url},
            "influx": {"api": "v1", "url": influx_url, "db": db, "flush_interval_ms": 200}}
    return merge(base, *overrides)


def signed_deploy(public_key: Path, state_dir: Path, **settings: Any) -> dict:
    """Edge override: signed over-the-air deployment on, verified with ``public_key``."""
    return {"deploy": {"enabled": True, "public_key_file": str(public_key), "state_dir": str(state_dir), **settings}}


def closed_loop(workdir: Path, signing_key: Path, drift: dict | None = None, retrain: dict | None = None) -> dict:
    """Bridge override: sample store, drift monitor and retrain worker on, their files under ``workdir``."""
    return {
        # The lab's fleets run up to 10x real time with a large sampling fraction: budgets to match.
        "samples": {"enabled": True, "dir": str(workdir / "samples"), "flush_interval_s": 0.5,
                    "device_budget_rows": 1_000_000, "device_budget_bytes": 1024**3},
        "drift": {"enabled": True, **(drift or {})},
        "retrain": {"enabled": True, "registry": str(workdir / "registry"), "signing_key_file": str(signing_key),
                    **(retrain or {})},
    }


def write_config(path: Path, cfg: dict) -> Path:
    """Write ``cfg`` for ``-c path`` (JSON is YAML; paths become strings)."""
    path.write_text(json.dumps(cfg, indent=2, default=str))
    return path
