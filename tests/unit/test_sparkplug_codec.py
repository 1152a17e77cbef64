"""The Sparkplug B codec against messages built by a third-party Sparkplug library (pysparkplug).

Why pysparkplug and not edgeloop's own protobuf classes: a codec tested only with
its own encoder agrees with itself, not with the devices. pysparkplug encodes
Int8 -5 as 251 and leaves datatypes out of DATA metrics, as real nodes may.
"""

from __future__ import annotations

import pytest
import pysparkplug as spb
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeloop.edge.ingest.codec import Decoded, RejectWithReplies
from edgeloop.edge.ingest.sparkplug import REBIRTH_METRIC, SparkplugInput
from edgeloop.errors import PayloadError
from tests.fuzzing import fuzz, tally

DT = spb.DataType
GROUP, NODE, DEVICE = "plant1", "gateway7", "boiler3"
T0 = 1_700_000_000_000  # ms


def settings(**over) -> SparkplugInput:
    return SparkplugInput(**{"codec": "sparkplug", "metrics": ["Temperature", "Pressure", "Running"], **over})


def topic(mtype: str, device: str | None = DEVICE, node: str = NODE, group: str = GROUP) -> str:
    return str(spb.Topic(group_id=group, message_type=spb.MessageType(mtype), edge_node_id=node, device_id=device))


def nbirth(seq: int = 0, bd_seq: int = 1) -> bytes:
    return spb.NBirth(timestamp=T0, seq=seq, metrics=(
        spb.Metric(timestamp=T0, name="bdSeq", datatype=DT.INT64, value=bd_seq),
        spb.Metric(timestamp=T0, name=REBIRTH_METRIC, datatype=DT.BOOLEAN, value=False, alias=1),
    )).encode()


def dbirth(seq: int = 1, temperature: float | None = 20.0) -> bytes:
    return spb.DBirth(timestamp=T0, seq=seq, metrics=(
        spb.Metric(timestamp=T0, name="Temperature", datatype=DT.DOUBLE, value=temperature, alias=10),
        spb.Metric(timestamp=T0, name="Pressure", datatype=DT.INT8, value=-5, alias=11),
        spb.Metric(timestamp=T0, name="Running", datatype=DT.BOOLEAN, value=True, alias=12),
        spb.Metric(timestamp=T0, name="Label", datatype=DT.STRING, value="north", alias=13),
    )).encode()


def ddata(seq: int, *metrics: tuple[int, DT, object], ts: int = T0 + 1000) -> bytes:
    return spb.DData(timestamp=ts, seq=seq, metrics=tuple(
        spb.Metric(timestamp=ts, name=None, alias=alias, datatype=dt, value=value) for alias, dt, value in metrics
    )).encode()


def ddeath(seq: int) -> bytes:
    return spb.DDeath(timestamp=T0, seq=seq).encode()


def ndeath(bd_seq: int) -> bytes:
    return spb.NDeath(timestamp=T0, bd_seq_metric=spb.Metric(timestamp=T0, name="bdSeq", datatype=DT.INT64,
                                                             value=bd_seq)).encode()


def born(codec=None, **over):
    """A codec that has seen NBIRTH (seq 0, bdSeq 1) and DBIRTH (seq 1) for GROUP/NODE/DEVICE."""
    codec = codec or settings(**over).build()
    codec.decode(topic("NBIRTH", None), {}, nbirth(), 1.0)
    first = codec.decode(topic("DBIRTH"), {}, dbirth(), 1.0)
    return codec, first


def refused(codec, mtopic: str, payload: bytes, arrival: float) -> RejectWithReplies:
    """The codec's refusal of a message it cannot place (the engine counts and dead-letters it)."""
    with pytest.raises(RejectWithReplies) as err:
        codec.decode(mtopic, {}, payload, arrival)
    return err.value


def is_rebirth(out: Decoded | RejectWithReplies, node: str = NODE) -> bool:
    [(reply_topic, payload)] = out.replies
    cmd = spb.NCmd.decode(payload)  # the third-party library reads what the edge sends
    [metric] = cmd.metrics
    return reply_topic == f"spBv1.0/{GROUP}/NCMD/{node}" and metric.name == REBIRTH_METRIC and metric.value is True


# ----------------------------------------------------------------------------- births and data


def test_birth_then_data_with_aliases_gives_values_in_channel_order():
    codec, first = born()
    [birth] = first.readings  # the DBIRTH's current values are the stream's first reading
    assert birth.samples.tolist() == [[20.0, -5.0, 1.0]] and birth.seq == 0 and birth.ts == T0 / 1000
    out = codec.decode(topic("DDATA"), {}, ddata(2, (10, DT.DOUBLE, 21.5), (12, DT.BOOLEAN, False)), 2.0)
    [reading] = out.readings
    # Pressure was not in the DATA (report by exception): its last value is held.
    assert reading.samples.tolist() == [[21.5, -5.0, 0.0]]
    assert reading.device == DEVICE and dict(reading.tags) == {"group": GROUP, "edge_node": NODE}
    assert reading.ts == (T0 + 1000) / 1000 and reading.seq == 1
    assert out.replies == [] and out.ended == []


def test_data_with_only_unconfigured_metrics_is_no_reading_and_no_error():
    codec, _ = born()
    assert codec.decode(topic("DDATA"), {}, ddata(2, (13, DT.STRING, "south")), 2.0) == Decoded()


def test_ndata_is_the_edge_nodes_own_stream():
    codec = settings().build()
    birth = spb.NBirth(timestamp=T0, seq=7, metrics=(
        spb.Metric(timestamp=T0, name="bdSeq", datatype=DT.INT64, value=0),
        spb.Metric(timestamp=T0, name="Temperature", datatype=DT.FLOAT, value=1.5, alias=1),
        spb.Metric(timestamp=T0, name="Pressure", datatype=DT.UINT32, value=4_000_000_000, alias=2),
        spb.Metric(timestamp=T0, name="Running", datatype=DT.BOOLEAN, value=False, alias=3),
    )).encode()
    codec.decode(topic("NBIRTH", None), {}, birth, 1.0)
    data = spb.NData(timestamp=T0, seq=8, metrics=(spb.Metric(timestamp=None, name=None, alias=1,
                                                              datatype=DT.FLOAT, value=2.5),)).encode()
    [reading] = codec.decode(topic("NDATA", None), {}, data, 2.0).readings
    assert reading.device == NODE and reading.samples.tolist() == [[2.5, 4e9, 0.0]]
    assert reading.ts == T0 / 1000  # no metric timestamp: the payload's


def test_a_channel_the_birth_does_not_define_rejects_the_reading():
    codec = settings(metrics=["Temperature", "Humidity"]).build()
    codec.decode(topic("NBIRTH", None), {}, nbirth(), 1.0)
    assert codec.decode(topic("DBIRTH"), {}, dbirth(), 1.0).readings == []
    with pytest.raises(PayloadError) as err:
        codec.decode(topic("DDATA"), {}, ddata(2, (10, DT.DOUBLE, 1.0)), 2.0)
    assert err.value.reason == "missing_metric" and "Humidity" in str(err.value)


def test_a_null_value_leaves_the_channel_without_a_value():
    codec2 = settings().build()
    codec2.decode(topic("NBIRTH", None), {}, nbirth(), 1.0)
    assert codec2.decode(topic("DBIRTH"), {}, dbirth(temperature=None), 1.0).readings == []
    [reading] = codec2.decode(topic("DDATA"), {}, ddata(2, (10, DT.DOUBLE, 3.0)), 2.0).readings
    assert reading.samples.tolist() == [[3.0, -5.0, 1.0]]


# ----------------------------------------------------------------------------- rebirth


def test_unknown_alias_asks_for_a_rebirth_and_skips_the_data():
    codec, _ = born()
    out = refused(codec, topic("DDATA"), ddata(2, (99, DT.DOUBLE, 1.0)), 2.0)
    assert is_rebirth(out) and out.reason == "unknown_alias"
    # Until the node is born again its data is refused; the request is not repeated within the interval.
    out = refused(codec, topic("DDATA"), ddata(3, (10, DT.DOUBLE, 1.0)), 3.0)
    assert out.reason == "awaiting_rebirth" and out.replies == []
    # After the interval it is asked again (NCMD is QoS 0 and may be lost).
    assert is_rebirth(refused(codec, topic("DDATA"), ddata(4, (10, DT.DOUBLE, 1.0)), 7.0))
    # The rebirth: NBIRTH (any seq) then DBIRTH; the old streams end, data flows again.
    rebirth = codec.decode(topic("NBIRTH", None), {}, nbirth(seq=200, bd_seq=2), 8.0)
    assert rebirth.ended == [NODE, DEVICE]
    assert codec.decode(topic("DBIRTH"), {}, dbirth(seq=201), 8.0).readings[0].seq == 0
    [reading] = codec.decode(topic("DDATA"), {}, ddata(202, (10, DT.DOUBLE, 30.0)), 9.0).readings
    assert reading.samples[0, 0] == 30.0 and reading.seq == 1


def test_data_before_any_birth_asks_for_a_rebirth():
    codec = settings().build()
    out = refused(codec, topic("DDATA"), ddata(5, (10, DT.DOUBLE, 1.0)), 1.0)
    assert is_rebirth(out) and out.reason == "no_birth"
    codec.decode(topic("NBIRTH", None), {}, nbirth(), 10.0)
    # A device that never sent its DBIRTH.
    out = refused(codec, topic("DDATA", "other"), ddata(1, (10, DT.DOUBLE, 1.0)), 11.0)
    assert is_rebirth(out) and out.reason == "no_birth"


@pytest.mark.parametrize("seq", [3, 1, 0, 255])
def test_a_broken_seq_asks_for_a_rebirth(seq):
    codec, _ = born()  # NBIRTH 0, DBIRTH 1: 2 is due
    out = refused(codec, topic("DDATA"), ddata(seq, (10, DT.DOUBLE, 1.0)), 2.0)
    assert is_rebirth(out) and out.reason == "bad_seq"


def test_seq_wraps_from_255_to_0():
    codec = settings().build()
    codec.decode(topic("NBIRTH", None), {}, nbirth(seq=254), 1.0)
    codec.decode(topic("DBIRTH"), {}, dbirth(seq=255), 1.0)
    [reading] = codec.decode(topic("DDATA"), {}, ddata(0, (10, DT.DOUBLE, 5.0)), 2.0).readings
    assert reading.samples[0, 0] == 5.0


def test_rebirth_requests_are_rate_limited_per_node_and_overall():
    codec = settings(rebirth_interval_s=5.0, max_rebirths_per_s=3).build()
    asked = [refused(codec, topic("DDATA"), ddata(1, (10, DT.DOUBLE, 1.0)), 1.0 + i * 0.1) for i in range(20)]
    assert sum(bool(out.replies) for out in asked) == 1
    # 50 made-up nodes in one second get 3 requests, not 50.
    flood = [refused(codec, topic("NDATA", None, node=f"n{i}"), ddata(1), 10.0) for i in range(50)]
    assert sum(bool(out.replies) for out in flood) == 3 and codec.rebirths_sent == 4


# ----------------------------------------------------------------------------- deaths


def test_a_ddeath_with_a_broken_seq_still_ends_the_device_and_asks_for_a_rebirth():
    codec, _ = born()
    out = codec.decode(topic("DDEATH"), {}, ddeath(9), 2.0)
    assert out.ended == [DEVICE] and is_rebirth(out)


def test_ddeath_ends_the_device_stream():
    codec, _ = born()
    assert codec.decode(topic("DDEATH"), {}, ddeath(2), 2.0).ended == [DEVICE]
    assert codec.n_devices == 0
    # Its data afterwards needs a new DBIRTH.
    assert is_rebirth(refused(codec, topic("DDATA"), ddata(3, (10, DT.DOUBLE, 1.0)), 3.0))


def test_ndeath_with_the_births_bdseq_ends_the_node_and_its_devices():
    codec, _ = born()
    assert codec.decode(topic("NDEATH", None), {}, ndeath(1), 2.0).ended == [NODE, DEVICE]
    assert codec.nodes == {} and codec.n_devices == 0


def test_a_stale_ndeath_is_ignored():
    codec, _ = born()
    with pytest.raises(PayloadError) as err:  # the LWT of an earlier session, delivered late
        codec.decode(topic("NDEATH", None), {}, ndeath(0), 2.0)
    assert err.value.reason == "stale_death"
    [reading] = codec.decode(topic("DDATA"), {}, ddata(2, (10, DT.DOUBLE, 2.0)), 3.0).readings
    assert reading.samples[0, 0] == 2.0


def test_commands_and_host_state_on_the_subscription_are_not_data():
    codec, _ = born()
    cmd = spb.NCmd(timestamp=T0, metrics=(spb.Metric(timestamp=T0, name=REBIRTH_METRIC, datatype=DT.BOOLEAN,
                                                     value=True),)).encode()
    assert codec.decode(topic("NCMD", None), {}, cmd, 2.0) == Decoded()
    assert codec.decode("spBv1.0/STATE/scada1", {}, b'{"online": true, "timestamp": 1}', 2.0) == Decoded()


# ----------------------------------------------------------------------------- bounds and settings


def test_state_is_bounded():
    codec = settings(max_nodes=2, max_devices=3, max_metrics=4).build()
    for i in range(2):
        codec.decode(topic("NBIRTH", None, node=f"n{i}"), {}, nbirth(), 1.0)
    with pytest.raises(PayloadError) as err:
        codec.decode(topic("NBIRTH", None, node="n2"), {}, nbirth(), 1.0)
    assert err.value.reason == "too_many_nodes"
    codec.decode(topic("NBIRTH", None, node="n0"), {}, nbirth(), 1.0)  # a known node may be born again
    for i in range(3):
        codec.decode(topic("DBIRTH", f"d{i}", node="n0"), {}, dbirth(seq=i + 1), 1.0)
    with pytest.raises(PayloadError) as err:
        codec.decode(topic("DBIRTH", "d3", node="n0"), {}, dbirth(seq=4), 1.0)
    assert err.value.reason == "too_many_devices"
    big = spb.DBirth(timestamp=T0, seq=5, metrics=tuple(
        spb.Metric(timestamp=T0, name=f"m{i}", datatype=DT.DOUBLE, value=1.0, alias=i) for i in range(5))).encode()
    with pytest.raises(PayloadError) as err:
        codec.decode(topic("DBIRTH", "d0", node="n0"), {}, big, 1.0)  # a known device: only the metric cap
    assert err.value.reason == "too_many_metrics"
    assert len(codec.nodes) == 2 and codec.n_devices == 3


def test_a_configured_metric_of_a_non_numeric_type_is_rejected_with_a_reason():
    codec = settings(metrics=["Label"]).build()
    codec.decode(topic("NBIRTH", None), {}, nbirth(), 1.0)
    with pytest.raises(PayloadError) as err:
        codec.decode(topic("DBIRTH"), {}, dbirth(), 1.0)
    assert err.value.reason == "unsupported_datatype"


@pytest.mark.parametrize("bad_topic", ["spBv1.0/g/DDATA/n", "spBv1.0/g/NDATA/n/d", "spBv1.0/g/XDATA/n",
                                       "spAv1.0/g/NDATA/n", "spBv1.0//NDATA/n", "spBv1.0/g/DDATA/n/d/e", "x"])
def test_bad_topics_are_rejected(bad_topic):
    with pytest.raises(PayloadError) as err:
        settings().build().decode(bad_topic, {}, nbirth(), 1.0)
    assert err.value.reason == "bad_topic"


def test_settings():
    assert settings().n_channels == 3 and settings().topic is None
    assert settings(group="plant1").topic == "spBv1.0/plant1/#"
    for bad in ({"group": "a/b"}, {"group": "+"}, {"topic": "sensors/#"}, {"group": "g", "topic": "spBv1.0/g/#"}):
        with pytest.raises(ValidationError):
            settings(**bad)
    with pytest.raises(ValidationError):
        SparkplugInput(codec="sparkplug", metrics=["a", "a"])


# ----------------------------------------------------------------------------- property


TOPICS = st.one_of(
    st.builds(lambda t, d: topic(t, d if t.startswith("D") else None),
              st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD"]),
              st.sampled_from([DEVICE, "other"])),
    st.text(max_size=40).map(lambda s: "spBv1.0/" + s),
)


def _mutate(valid: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[i:i + data.draw(st.integers(1, 8))]
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    return bytes(buf)


VALID = [nbirth(), dbirth(), ddata(2, (10, DT.DOUBLE, 1.0), (11, DT.INT8, -1)), ddeath(3), ndeath(1)]


@fuzz
@given(data=st.data(), mtopic=TOPICS)
def test_arbitrary_and_mutated_payloads_never_crash(data, mtopic):
    tally("sparkplug")
    codec, _ = born()
    payload = data.draw(st.one_of(st.binary(max_size=300), st.sampled_from(VALID).flatmap(
        lambda v: st.just(v) if data.draw(st.booleans()) else st.just(_mutate(v, data)))))
    try:
        out = codec.decode(mtopic, {}, payload, 5.0)
    except PayloadError as exc:
        assert exc.reason and str(exc)
    else:
        assert isinstance(out, Decoded)
        for reading in out.readings:
            assert reading.samples.shape == (1, 3) and reading.samples.dtype.name == "float32"
