"""Room climate sensors behind a Sparkplug B edge node, encoded by a third-party library (pysparkplug).

    python -m lab.sparkplug_climate --broker mqtt://127.0.0.1:1883 [--devices 3] [--count 40]

Why here and with pysparkplug: issue 10 asks for Sparkplug messages built by a Sparkplug library from
PyPI, not by edgeloop's own encoder, so the codec is shown to read what other implementations write.
(pysparkplug is installed without its dependencies: ``make venv``; only its payload and topic classes
are used, the MQTT connection is paho's, as lab.mqtt makes it.)

One edge node ``--node`` in group ``--group`` publishes NBIRTH (bdSeq, ``Node Control/Rebirth``),
then one DBIRTH per device (``temperature``, ``humidity``, ``pressure`` as Double metrics with aliases
and their first values), then DDATA by alias only, one per 30 s reading (a backfill ending now, flat
out), ``seq`` 0..255 across the node's messages as the specification says. Devices are named like the
other examples' rooms (``living_room`` ...); the values come from edgeloop.devices.climate. Prints a
JSON summary (``device_ids``, ``sent_by_device``: readings per device, the DBIRTH's included).
"""

from __future__ import annotations

import argparse
import json
import time
from urllib.parse import urlsplit

import pysparkplug as spb

from edgeloop.devices.climate import CHANNELS, ClimateSimulator
from lab.mqtt import connect, publish_all

DT = spb.DataType
ALIASES = {name: 10 + i for i, name in enumerate(CHANNELS)}


def messages(group: str, node: str, devices: int, count: int, seed: int = 1,
             anomaly_rate: float = 0.0) -> tuple[list[tuple[str, bytes]], ClimateSimulator]:
    """Every (topic, payload) of the run, in publishing order."""
    sim = ClimateSimulator(devices, seed, anomaly_rate)
    blocks = [sim.block(i, 0, count) for i in range(devices)]
    t0 = round((time.time() - sim.interval_s * (count - 1)) * 1000)
    seq = iter(range(10**9))

    def topic(kind: str, device: str | None = None) -> str:
        return str(spb.Topic(group_id=group, message_type=spb.MessageType(kind), edge_node_id=node,
                             device_id=device))

    out = [(topic("NBIRTH"), spb.NBirth(timestamp=t0, seq=next(seq) % 256, metrics=(
        spb.Metric(timestamp=t0, name="bdSeq", datatype=DT.INT64, value=0),
        spb.Metric(timestamp=t0, name="Node Control/Rebirth", datatype=DT.BOOLEAN, value=False),
    )).encode())]
    for i, name in enumerate(sim.names):
        values = blocks[i].values[0]
        out.append((topic("DBIRTH", name), spb.DBirth(timestamp=t0, seq=next(seq) % 256, metrics=tuple(
            spb.Metric(timestamp=t0, name=ch, alias=ALIASES[ch], datatype=DT.DOUBLE, value=float(values[c]))
            for c, ch in enumerate(CHANNELS))).encode()))
    for k in range(1, count):
        ts = t0 + round(k * sim.interval_s * 1000)
        for i, name in enumerate(sim.names):
            values = blocks[i].values[k]
            out.append((topic("DDATA", name), spb.DData(timestamp=ts, seq=next(seq) % 256, metrics=tuple(
                spb.Metric(timestamp=ts, name=None, alias=ALIASES[ch], datatype=DT.DOUBLE, value=float(values[c]))
                for c, ch in enumerate(CHANNELS))).encode()))
    return out, sim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.sparkplug_climate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--group", default="building1")
    parser.add_argument("--node", default="climate-gw")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--count", type=int, default=40, help="readings per device (the DBIRTH's is the first)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--anomaly-rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    url = urlsplit(args.broker)
    msgs, sim = messages(args.group, args.node, args.devices, args.count, args.seed, args.anomaly_rate)
    client = connect(url.port or 1883, host=url.hostname or "127.0.0.1")
    try:
        publish_all(client, msgs, qos=1, timeout=60)
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"sent": len(msgs), "device_ids": sim.names,
                      "sent_by_device": {name: args.count for name in sim.names}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
