"""Sparkplug B into a real ``edgeloop edge run`` through a real mosquitto (issue 10).

The messages are built by a third-party library (pysparkplug), as an edge node
would publish them: NBIRTH (bdSeq) -> DBIRTH (names, aliases, datatypes) ->
DDATA with aliases only and only the metrics that changed -> results under the
Sparkplug device's own name -> a DDATA with an alias no BIRTH defined -> the
edge's Rebirth request (NCMD) seen on the broker, the message dead-lettered ->
the node's rebirth (NBIRTH, DBIRTH) -> data again -> DDEATH ends the stream.
"""

from __future__ import annotations

import json

import pysparkplug as spb
import pytest

from edgeloop.edge.ingest.sparkplug import REBIRTH_METRIC
from lab import configs
from lab.mqtt import Watcher, close, connect, publish_all
from lab.procs import CliProcess, logs
from lab.servers import eventually

DT = spb.DataType
WINDOW = 8
STAGES = [
    {"type": "select", "channels": [0, 1, 2]},
    {"type": "window", "size": WINDOW, "hop": WINDOW},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]


@pytest.mark.parametrize("workers", [1, 2])
def test_birth_data_unknown_alias_rebirth_and_death_against_a_real_broker(mosquitto, tmp_path, unique_id, workers):
    """With ``workers: 2`` the node's NBIRTH and its device's DBIRTH/DDATA (different topics) must meet in one
    worker (runtime/workers.py partitions Sparkplug by group/edge_node); the rebirth request and the dead
    letter come back from the worker and leave through the edge's connection."""
    node_id, group, gateway, device = f"edge-{unique_id}", f"plant-{unique_id}", "gw-7", f"boiler-{unique_id}"
    cfg = configs.edge_config(node_id, mosquitto.url, {"workers": workers}, {
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "sampling": {"enabled": False}, "status_interval_s": 1.0,
        "pipelines": [{"sensor": "boiler", "in_channels": 3, "stages": STAGES,
                       "input": {"codec": "sparkplug", "group": group,
                                 "metrics": ["Temperature", "Pressure", "Running"]}}],
    })
    edge = CliProcess(["edge", "run", "-c", str(configs.write_config(tmp_path / "edge.yaml", cfg))],
                      tmp_path / "edge.log").start()
    watcher = Watcher(mosquitto.port, ["status/#", "results/#", "deadletter/edge", "spBv1.0/+/NCMD/+"])
    node = connect(mosquitto.port)
    topic = lambda mtype, dev=device: str(spb.Topic(  # noqa: E731
        group_id=group, message_type=spb.MessageType(mtype), edge_node_id=gateway, device_id=dev))
    seq = iter(range(1, 10_000))
    try:
        watcher.wait_online(node_id, edge)
        now = spb.get_current_timestamp()
        birth_of_node = spb.NBirth(timestamp=now, seq=0, metrics=(
            spb.Metric(timestamp=now, name="bdSeq", datatype=DT.INT64, value=3),
            spb.Metric(timestamp=now, name=REBIRTH_METRIC, datatype=DT.BOOLEAN, value=False, alias=1),
        )).encode()

        def birth_of_device(seq_: int) -> bytes:
            return spb.DBirth(timestamp=now, seq=seq_, metrics=(
                spb.Metric(timestamp=now, name="Temperature", datatype=DT.DOUBLE, value=60.0, alias=10),
                spb.Metric(timestamp=now, name="Pressure", datatype=DT.FLOAT, value=2.5, alias=11),
                spb.Metric(timestamp=now, name="Running", datatype=DT.BOOLEAN, value=True, alias=12),
                spb.Metric(timestamp=now, name="Firmware", datatype=DT.STRING, value="1.4.2", alias=13),
            )).encode()

        publish_all(node, [(topic("NBIRTH", None), birth_of_node), (topic("DBIRTH"), birth_of_device(next(seq)))],
                    qos=0)
        # Report by exception: each DDATA carries only what changed, by alias.
        data = []
        for i in range(2 * WINDOW - 1):
            ts = now + 1000 * (i + 1)
            changed = [spb.Metric(timestamp=ts, name=None, alias=10, datatype=DT.DOUBLE, value=60.0 + i * 0.1)]
            if i % 3 == 0:
                changed.append(spb.Metric(timestamp=ts, name=None, alias=11, datatype=DT.FLOAT, value=2.5 + i * 0.01))
            data.append((topic("DDATA"), spb.DData(timestamp=ts, seq=next(seq), metrics=tuple(changed)).encode()))
        publish_all(node, data, qos=0)
        eventually(lambda: len([r for r in watcher.results(node_id) if r.device == device]) == 2, timeout=60,
                   message=f"no results for {device}\n{logs(edge)}")
        [first, second] = [r for r in watcher.results(node_id) if r.device == device]
        assert first.sensor == "boiler" and first.tags == {"group": group, "edge_node": gateway}
        assert watcher.messages(f"results/{device}/")  # under the Sparkplug device's own name
        assert watcher.on("spBv1.0/") == []  # nothing was unclear: no rebirth asked

        # An alias no BIRTH defined: the edge does not guess, it asks the node for a rebirth.
        unknown = spb.DData(timestamp=now, seq=next(seq), metrics=(
            spb.Metric(timestamp=now, name=None, alias=99, datatype=DT.DOUBLE, value=1.0),)).encode()
        publish_all(node, [(topic("DDATA"), unknown)], qos=0)
        eventually(lambda: watcher.messages("spBv1.0/"), timeout=30, message=f"no NCMD\n{logs(edge)}")
        [ncmd] = watcher.messages("spBv1.0/")
        assert ncmd.topic == f"spBv1.0/{group}/NCMD/{gateway}" and ncmd.qos == 0
        [metric] = spb.NCmd.decode(ncmd.payload).metrics
        assert (metric.name, metric.value) == (REBIRTH_METRIC, True)
        eventually(lambda: any(json.loads(p)["reason"] == "unknown_alias" for p in watcher.on("deadletter/edge")),
                   timeout=30, message=f"no dead letter\n{logs(edge)}")

        # The node answers as Sparkplug says: NBIRTH (same bdSeq, seq 0) and DBIRTH again; data flows again.
        births = [(topic("NBIRTH", None), birth_of_node), (topic("DBIRTH"), birth_of_device(1))]
        more = [(topic("DDATA"), spb.DData(timestamp=now, seq=2 + i, metrics=(spb.Metric(
            timestamp=now + 1000 * (30 + i), name=None, alias=10, datatype=DT.DOUBLE, value=61.0),)).encode())
            for i in range(WINDOW - 1)]
        publish_all(node, births + more, qos=0)
        eventually(lambda: len([r for r in watcher.results(node_id) if r.device == device]) == 3, timeout=60,
                   message=f"no result after the rebirth\n{logs(edge)}")
        ended = lambda: (watcher.status(node_id).counters or {}).get("streams_ended", 0)  # noqa: E731
        eventually(lambda: ended() == 1, timeout=30, message=f"the rebirth did not end the old stream\n{logs(edge)}")

        # DDEATH ends the stream; the edge's own NCMD, seen on its spBv1.0 subscription, was not data.
        publish_all(node, [(topic("DDEATH"), spb.DDeath(timestamp=now, seq=2 + WINDOW - 1).encode())], qos=0)
        eventually(lambda: ended() == 2, timeout=30, message=f"DDEATH did not end the stream\n{logs(edge)}")
        reasons = [json.loads(p)["reason"] for p in watcher.on("deadletter/edge")]
        assert reasons == ["unknown_alias"], reasons
        assert len(watcher.messages("spBv1.0/")) == 1  # one request, not a storm
    finally:
        close(node)
        edge.terminate()
        watcher.close()
