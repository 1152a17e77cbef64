"""SenML packs and line protocol through a real ``edgeloop edge run`` process and a real mosquitto.

RFC 8428's own packs (section 5.1.3 in JSON, and the same pack in CBOR with the integer labels of
section 6) and Telegraf-style line-protocol batches (plus lines written by influxdb-client's
encoder) come out as results on ``results/{device}/{model}`` under the device's own name -- the
SenML base name, the line's ``host`` tag -- and bad payloads are dead-lettered with the codec's
reason on ``deadletter/edge``.
"""

from __future__ import annotations

import json

import cbor2
from influxdb_client import Point, WritePrecision

from edgeloop.contract import DeadLetter
from edgeloop.edge.ingest.senml import CBOR_LABELS
from lab import configs
from lab.mqtt import Watcher, close, connect, publish_all
from lab.procs import CliProcess, logs
from lab.servers import eventually

#: Windows of 8 consecutive samples over 3 channels on the bundled model (its features do not depend
#: on the window size; the scores mean nothing here, the path does).
SMALL_WINDOW = [
    {"type": "window", "size": 8, "hop": 8},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]

# RFC 8428 section 5.1.3: a mobile device's humidity and position, told apart by unit; four rows
# (the battery record at t=150 is no channel here and is ignored).
RFC_PACK = [
    {"bn": "urn:dev:ow:10e2073a01080063", "bt": 1.320067464e+09, "bu": "%RH", "v": 20},
    {"u": "lon", "v": 24.30621},
    {"u": "lat", "v": 60.07965},
    {"t": 60, "v": 20.3},
    {"u": "lon", "t": 60, "v": 24.30622},
    {"u": "lat", "t": 60, "v": 60.07965},
    {"t": 120, "v": 20.7},
    {"u": "lon", "t": 120, "v": 24.30623},
    {"u": "lat", "t": 120, "v": 60.07966},
    {"u": "%EL", "t": 150, "v": 98},
    {"t": 180, "v": 21.2},
    {"u": "lon", "t": 180, "v": 24.30628},
    {"u": "lat", "t": 180, "v": 60.07967},
]
SENML_DEVICE = "urn:dev:ow:10e2073a01080063"


def cbor_pack(pack: list[dict], shift_s: float) -> bytes:
    """The pack in SenML CBOR (integer labels), its base time moved by ``shift_s``."""
    labels = {name: label for label, name in CBOR_LABELS.items()}
    moved = [{**r, "bt": r["bt"] + shift_s} if "bt" in r else r for r in pack]
    return cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in moved])


def telegraf_batch(host: str, start_s: int, n: int) -> bytes:
    """What Telegraf's MQTT output publishes with ``batch = true``: one metric per line, ns timestamps."""
    return "".join(
        f"environment,host={host},location=greenhouse\\ north temperature={21 + 0.25 * i},humidity={45 + i}i,"
        f'pressure={1013.25 - i / 10},heater=false,status="ok" {(start_s + i) * 10**9}\n'
        for i in range(n)).encode()


def point(host: str, i: int) -> Point:
    return (Point("environment").tag("host", host).tag("location", "north, a=b c").field("temperature", 18.5 + i)
            .field("humidity", 50 + i).field("pressure", 990.0).field("note", 'say "hi"')
            .time((1_764_460_900 + i) * 10**9, WritePrecision.NS))


def test_senml_and_line_protocol_reach_results_under_the_devices_own_names(mosquitto, tmp_path, unique_id):
    node = f"edge-{unique_id}"
    gateway = f"gw-{unique_id}"
    host = f"greenhouse-{unique_id}"
    shed = f"shed-{unique_id}"
    cfg = configs.edge_config(node, mosquitto.url, {
        "input": {"qos": 1}, "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "sampling": {"enabled": False},
        "pipelines": [
            {"sensor": "position", "stages": SMALL_WINDOW,
             "input": {"codec": "senml", "topic": "senml/{device}", "device": "base_name",
                       "channels": [{"unit": "%RH"}, {"unit": "lon"}, {"unit": "lat"}]}},
            {"sensor": "climate", "stages": SMALL_WINDOW,
             "input": {"codec": "influx", "topic": "telegraf/{device}", "measurement": "environment",
                       "fields": ["temperature", "humidity", "pressure"], "device_tag": "host", "precision": "ns"}},
        ],
    })
    edge = CliProcess(["edge", "run", "-c", str(configs.write_config(tmp_path / "edge.yaml", cfg))],
                      tmp_path / "edge.log").start()
    watcher = Watcher(mosquitto.port, ["status/#", "results/#", "deadletter/edge"])
    device = connect(mosquitto.port)
    try:
        watcher.wait_online(node, proc=edge)
        rfc_json = json.dumps(RFC_PACK).encode()
        publish_all(device, [
            # 4 rows in JSON + 4 in CBOR (4 min later) = one window of 8 for the SenML device
            (f"senml/{gateway}", rfc_json),
            (f"senml/{gateway}", cbor_pack(RFC_PACK, 240.0)),
            # 8 Telegraf lines in two batches = one window for the greenhouse host
            (f"telegraf/{gateway}", telegraf_batch(host, 1_764_460_800, 5)),
            (f"telegraf/{gateway}", telegraf_batch(host, 1_764_460_805, 3)),
            # 8 lines written by influxdb-client's encoder, with a tag value it must escape
            (f"telegraf/{gateway}", "\n".join(point(shed, i).to_line_protocol() for i in range(8)).encode()),
            # a host tag that is no valid device name (a space and a comma): refused by the engine, not renamed
            (f"telegraf/{gateway}", point("shed, west", 0).to_line_protocol().encode()),
            # bad input: a pack in kelvin (no channel is: nothing to fill the row), a truncated CBOR pack,
            # a field that is a string, an unquoted word, a timestamp in seconds where ns are configured
            (f"senml/{gateway}", json.dumps([{"bn": "urn:dev:ow:bad", "bu": "K", "v": 293.1}]).encode()),
            (f"senml/{gateway}", cbor_pack(RFC_PACK, 0.0)[:-3]),
            (f"telegraf/{gateway}", f'environment,host={host} temperature="warm",humidity=1i,pressure=2\n'.encode()),
            (f"telegraf/{gateway}", f"environment,host={host} temperature=warm,humidity=1i,pressure=2\n".encode()),
            (f"telegraf/{gateway}", b"environment,host=x temperature=1,humidity=2,pressure=3 1700000000\n"),
        ], qos=1)

        eventually(lambda: len(watcher.on("deadletter/edge")) >= 6, timeout=60, alive=[edge],
                   message=f"dead letters: {watcher.on('deadletter/edge')}\n{logs(edge)}")
        eventually(lambda: {r.device for r in watcher.results(node)} >= {SENML_DEVICE, host, shed}, timeout=60,
                   alive=[edge], message=f"results: {watcher.results(node)}\n{logs(edge)}")
        watcher.sync("deadletter/edge")

        results = watcher.results(node)
        by_device = {(r.device, r.sensor) for r in results}
        assert by_device == {(SENML_DEVICE, "position"), (host, "climate"), (shed, "climate")}
        senml = [r for r in results if r.device == SENML_DEVICE]
        assert len(senml) == 1 and senml[0].ts == 1.320067464e+09 + 240 + 180  # the window's last row
        topics = {m.topic for m in watcher.messages("results/")}
        assert topics == {f"results/{r.device}/{r.model}" for r in results}

        letters = [DeadLetter.model_validate_json(p) for p in watcher.on("deadletter/edge")]
        reasons = sorted((d.reason, d.topic) for d in letters)
        assert reasons == sorted([
            ("bad_device", f"telegraf/{gateway}"),
            ("bad_line", f"telegraf/{gateway}"),
            ("bad_timestamp", f"telegraf/{gateway}"),
            ("invalid_cbor", f"senml/{gateway}"),
            ("missing_channel", f"senml/{gateway}"),
            ("not_a_number", f"telegraf/{gateway}"),
        ]), reasons
    finally:
        edge.terminate()
        watcher.close()
        close(device)
