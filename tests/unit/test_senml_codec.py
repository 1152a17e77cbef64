"""The senml codec against RFC 8428's own examples (sections 5.1.x, and the CBOR pack of section 6),
each reject reason, and a property test: arbitrary bytes and near-miss packs never crash it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
import yaml

from edgeloop.errors import PayloadError
from edgeloop.edge.ingest.codec import Decoded
from edgeloop.edge.ingest.senml import CBOR_LABELS, SenmlInput
from docblocks import fenced
from fuzzing import fuzz, json_bytes, json_values, near_miss, tally

README = Path(__file__).resolve().parents[2] / "README.md"

NOW = 1_764_460_800.0  # 2025-11-30, the arrival time handed to decode

# RFC 8428 section 5.1.1, single datapoint
RFC_5_1_1 = b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'
# section 5.1.2, multiple datapoints (first example: "now")
RFC_5_1_2A = b"""[
  {"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
  {"n":"current","u":"A","v":1.2}
]"""
# section 5.1.2, third example: current each second for 5 s before Tue Jun 8 18:01:16.001 UTC 2010
RFC_5_1_2C = b"""[
  {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
   "bu":"A","bver":5,
   "n":"voltage","u":"V","v":120.1},
  {"n":"current","t":-5,"v":1.2},
  {"n":"current","t":-4,"v":1.3},
  {"n":"current","t":-3,"v":1.4},
  {"n":"current","t":-2,"v":1.5},
  {"n":"current","t":-1,"v":1.6},
  {"n":"current","v":1.7}
]"""
# section 5.1.3, multiple measurements told apart by unit (humidity, position, battery)
RFC_5_1_3 = b"""[
  {"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,
   "bu":"%RH","v":20},
  {"u":"lon","v":24.30621},
  {"u":"lat","v":60.07965},
  {"t":60,"v":20.3},
  {"u":"lon","t":60,"v":24.30622},
  {"u":"lat","t":60,"v":60.07965},
  {"t":120,"v":20.7},
  {"u":"lon","t":120,"v":24.30623},
  {"u":"lat","t":120,"v":60.07966},
  {"u":"%EL","t":150,"v":98},
  {"t":180,"v":21.2},
  {"u":"lon","t":180,"v":24.30628},
  {"u":"lat","t":180,"v":60.07967}
]"""
# section 5.1.4, the same in resolved form
RFC_5_1_4 = b"""[
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,"v":20},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,"v":24.30621},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,"v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067524e+09,"v":20.3},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067524e+09,"v":24.30622},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067524e+09,"v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067584e+09,"v":20.7},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067584e+09,"v":24.30623},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067584e+09,"v":60.07966},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,"v":98},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067644e+09,"v":21.2},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067644e+09,"v":24.30628},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067644e+09,"v":60.07967}
]"""
# section 5.1.5, multiple data types
RFC_5_1_5 = b"""[
  {"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
  {"n":"label","vs":"Machine Room"},
  {"n":"open","vb":false},
  {"n":"nfc-reader","vd":"aGkgCg"}
]"""
# section 5.1.6, collection of resources: two devices in one pack
RFC_5_1_6 = b"""[
  {"bn":"2001:db8::2/","bt":1.320078429e+09,
   "n":"temperature","u":"Cel","v":25.2},
  {"n":"humidity","u":"%RH","v":30},
  {"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},
  {"n":"humidity","u":"%RH","v":67}
]"""
# section 5.1.7, setting an actuator: a record of base fields only, then the values
RFC_5_1_7 = b"""[
  {"bn":"urn:dev:ow:10e2073a01080063:"},
  {"n":"temp","u":"Cel","v":23.1},
  {"n":"heat","u":"/","v":1},
  {"n":"fan","u":"/","v":0}
]"""
# section 6: the CBOR representation of the 5.1.2 third example (integer labels, one half-float 1.5)
RFC_6_CBOR = bytes.fromhex(
    "87a721781b75726e3a6465763a6f773a3130653230373361303130383030363a22fb41d303a15b00106223614120050067"
    "766f6c7461676501615602fb405e066666666666a3006763757272656e74062402fb3ff3333333333333a300676375727265"
    "6e74062302fb3ff4cccccccccccda3006763757272656e74062202fb3ff6666666666666a3006763757272656e74062102f9"
    "3e00a3006763757272656e74062002fb3ff999999999999aa3006763757272656e74060002fb3ffb333333333333"
)


def codec(**settings):
    return SenmlInput(codec="senml", **settings).build()


def decode(c, payload, device="dev1", arrival=NOW) -> Decoded:
    return c.decode("senml/" + device, {"device": device}, payload, arrival)


def rows(decoded: Decoded) -> list[tuple[str, float, list[float]]]:
    return [(r.device, r.ts, [round(float(x), 5) for x in r.samples[0]]) for r in decoded.readings]


def reject(c, payload, **kw) -> PayloadError:
    with pytest.raises(PayloadError) as err:
        decode(c, payload, **kw)
    return err.value


# ---------------------------------------------------------------------- RFC 8428 examples


def test_single_datapoint_without_time_is_now():
    out = rows(decode(codec(channels=[{"name": "urn:dev:ow:10e2073a01080063", "unit": "Cel"}]), RFC_5_1_1))
    assert out == [("dev1", NOW, [23.1])]


def test_base_name_is_prefixed_and_channels_match_by_suffix():
    c = codec(channels=[{"name": "voltage", "unit": "V"}, {"name": "current", "unit": "A"}])
    assert rows(decode(c, RFC_5_1_2A)) == [("dev1", NOW, [120.1, 1.2])]
    exact = codec(channels=["urn:dev:ow:10e2073a01080063:voltage", "urn:dev:ow:10e2073a01080063:current"],
                  match="exact")
    assert rows(decode(exact, RFC_5_1_2A)) == [("dev1", NOW, [120.1, 1.2])]
    assert reject(codec(channels=["voltage", "current"], match="exact"), RFC_5_1_2A).reason == "missing_channel"


def test_base_time_plus_relative_times_give_one_row_per_second():
    c = codec(channels=[{"name": "current", "unit": "A"}])  # bu "A" applies to every record without u
    out = rows(decode(c, RFC_5_1_2C))
    assert [v for _, _, v in out] == [[1.2], [1.3], [1.4], [1.5], [1.6], [1.7]]
    assert [ts for _, ts, _ in out] == pytest.approx([1276020071.001 + i for i in range(6)], abs=1e-6)


def test_cbor_pack_of_section_6_decodes_like_its_json_twin():
    c = codec(channels=[{"name": "current", "unit": "A"}])
    assert rows(decode(c, RFC_6_CBOR)) == rows(decode(c, RFC_5_1_2C))
    assert rows(decode(codec(channels=["current"], format="cbor"), RFC_6_CBOR)) == rows(decode(c, RFC_5_1_2C))
    tagged = cbor2.dumps(cbor2.CBORTag(55799, cbor2.loads(RFC_6_CBOR)))  # self-described CBOR
    assert tagged[:3] == b"\xd9\xd9\xf7" and rows(decode(c, tagged)) == rows(decode(c, RFC_5_1_2C))
    with pytest.raises(PayloadError) as err:
        decode(codec(channels=["current"], format="json"), RFC_6_CBOR)
    assert err.value.reason == "invalid_json"


def test_cbor_label_table_is_rfc_8428_table_4():
    assert CBOR_LABELS == {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs", 0: "n", 1: "u",
                           2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}


def test_partial_rows_are_rejected_not_guessed():
    # voltage exists only at t=0, current at t=-5..0: five rows without voltage
    err = reject(codec(channels=["voltage", "current"]), RFC_5_1_2C)
    assert err.reason == "missing_channel" and "'voltage'" in str(err)


@pytest.mark.parametrize("pack", [RFC_5_1_3, RFC_5_1_4], ids=["5.1.3", "5.1.4 resolved"])
def test_channels_told_apart_by_unit(pack):
    c = codec(channels=[{"unit": "%RH"}, {"unit": "lon"}, {"unit": "lat"}])
    out = rows(decode(c, pack))
    assert [ts for _, ts, _ in out] == [1320067464.0, 1320067524.0, 1320067584.0, 1320067644.0]
    assert out[0][2] == [20.0, 24.30621, 60.07965] and out[-1][2] == [21.2, 24.30628, 60.07967]
    # the battery (%EL) record at t=150 is no configured channel: ignored, not a partial row


def test_boolean_values_are_channels_and_string_values_are_not():
    c = codec(channels=[{"name": "temp", "unit": "Cel"}, "open"])
    assert rows(decode(c, RFC_5_1_5)) == [("dev1", NOW, [23.1, 0.0])]  # label/nfc-reader ignored
    for name in ("label", "nfc-reader"):
        err = reject(codec(channels=["temp", name]), RFC_5_1_5)
        assert err.reason == "not_a_number" and name in str(err)


def test_device_from_base_name_splits_a_collection_of_resources():
    c = codec(channels=[{"name": "temperature", "unit": "Cel"}, {"name": "humidity", "unit": "%RH"}],
              device="base_name")
    out = rows(decode(c, RFC_5_1_6))
    assert sorted(out) == [("2001:db8::1", 1320078429.0, [12.3, 67.0]), ("2001:db8::2", 1320078429.0, [25.2, 30.0])]
    # from the topic, both resources are one device: two temperatures at one time
    err = reject(codec(channels=["temperature", "humidity"]), RFC_5_1_6)
    assert err.reason == "duplicate_record"


def test_records_of_base_fields_only_are_skipped():
    c = codec(channels=[{"name": "temp", "unit": "Cel"}, {"name": "heat", "unit": "/"}, {"name": "fan", "unit": "/"}])
    assert rows(decode(c, RFC_5_1_7)) == [("dev1", NOW, [23.1, 1.0, 0.0])]


def test_the_readme_example_is_what_it_says():
    settings = yaml.safe_load(fenced(README, "yaml senml-config")[0])["input"]
    [pack] = fenced(README, "json senml-pack")
    assert rows(decode(SenmlInput(**settings).build(), pack.encode())) == [("dev1", NOW, [120.1, 1.2])]


# ---------------------------------------------------------------------- resolution details


def test_base_value_base_sum_and_sum_only_records():
    pack = [{"bn": "m:", "bv": 100, "bs": 1000, "n": "a", "v": 1.5}, {"n": "b", "s": 20}, {"n": "c", "v": -1}]
    assert rows(decode(codec(channels=["a", "b", "c"]), json.dumps(pack).encode())) == [("dev1", NOW, [101.5, 1020.0, 99.0])]


def test_absolute_and_relative_times_mix_per_rfc():
    pack = [{"n": "a", "t": 1.7e9, "v": 1}, {"n": "a", "t": -10, "v": 2}, {"n": "a", "t": 5, "v": 3}]
    out = rows(decode(codec(channels=["a"]), json.dumps(pack).encode()))
    assert out == [("dev1", 1.7e9, [1.0]), ("dev1", NOW - 10, [2.0]), ("dev1", NOW + 5, [3.0])]


def test_wrong_unit_is_rejected_and_a_missing_unit_accepted():
    c = codec(channels=[{"name": "temp", "unit": "Cel"}])
    assert reject(c, b'[{"n":"temp","u":"K","v":296.2}]').reason == "wrong_unit"
    assert reject(c, b'[{"bu":"K","n":"temp","v":296.2}]').reason == "wrong_unit"
    assert rows(decode(c, b'[{"n":"temp","v":23.1}]')) == [("dev1", NOW, [23.1])]


@pytest.mark.parametrize("payload, reason", [
    (b"", "invalid_json"),
    (b"{", "invalid_json"),
    (b'[{"n":"a","v":NaN}]', "invalid_json"),
    (b'{"n":"a","v":1}', "invalid_senml"),
    (b"[]", "invalid_senml"),
    (b"[1]", "invalid_senml"),
    (b'[{"n":"a","v":"1"}]', "invalid_senml"),
    (b'[{"n":1,"v":1}]', "invalid_senml"),
    (b'[{"n":"a","vb":1}]', "invalid_senml"),
    (b'[{"n":"a","v":true}]', "invalid_senml"),
    (b'[{"bver":11,"n":"a","v":1}]', "unsupported_version"),
    (b'[{"bver":0,"n":"a","v":1}]', "invalid_senml"),
    (b'[{"n":"a","v":1,"foo_":2}]', "must_understand"),
    (b'[{"n":"a","v":1e300}]', "non_finite"),
    (b'[{"n":"a","v":1' + b"0" * 400 + b"}]", "non_finite"),
    (b'[{"n":"a","t":1' + b"0" * 400 + b',"v":1}]', "bad_timestamp"),
    (b'[{"n":"a","t":946684700,"v":1}]', "bad_timestamp"),
    (b'[{"n":"a"}]', "missing_value"),
    (b'[{"n":"b","v":1}]', "missing_channel"),
    (b'[{"n":"a","v":1},{"n":"a","v":2}]', "duplicate_record"),
    (b"\x81\xff", "invalid_cbor"),
    (b"\x81\xa1\x19\x01\x00\x01", "invalid_senml"),  # unknown integer label 256
], ids=lambda v: v if isinstance(v, str) else None)
def test_reject_reasons(payload, reason):
    assert reject(codec(channels=["a"]), payload).reason == reason


def test_unknown_fields_without_underscore_are_ignored():
    assert rows(decode(codec(channels=["a"]), b'[{"n":"a","v":1,"ut":30,"extra":{"x":1}}]')) == [("dev1", NOW, [1.0])]


def test_device_from_base_name_needs_one():
    assert reject(codec(channels=["a"], device="base_name"), b'[{"n":"a","v":1}]').reason == "missing_device"


def test_settings_are_checked():
    with pytest.raises(ValidationError, match="name, a unit or both"):
        SenmlInput(codec="senml", channels=[{}])
    with pytest.raises(ValidationError, match="same record name"):
        SenmlInput(codec="senml", channels=["a", {"name": "a", "unit": "V"}])
    with pytest.raises(ValidationError, match="extra"):
        SenmlInput(codec="senml", channels=["a"], units="x")
    assert SenmlInput(codec="senml", channels=["a", {"unit": "V"}]).n_channels == 2


# ---------------------------------------------------------------------- property tests

VALID = json.loads(RFC_5_1_2C)
FUZZ_CODEC = codec(channels=[{"name": "current", "unit": "A"}, "voltage"])


def _never_crashes(payload: bytes) -> None:
    try:
        out = decode(FUZZ_CODEC, payload)
    except PayloadError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    for reading in out.readings:
        assert reading.samples.shape == (1, 2) and bool(math.isfinite(reading.ts))


@fuzz
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(payload):
    tally("senml.bytes")
    _never_crashes(payload)


@fuzz
@given(near_miss(VALID, extra_keys=["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s",
                                    "t", "ut", "x_"]))
def test_near_miss_json_packs_never_crash(pack):
    tally("senml.json")
    _never_crashes(json_bytes(pack))


def _cbor_pack(pack):
    labels = {v: k for k, v in CBOR_LABELS.items()}
    if isinstance(pack, list):
        return [{labels.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in pack]
    return pack


@fuzz
@given(near_miss(VALID, values=json_values | st.binary(max_size=8)), st.integers(0, 40))
def test_near_miss_cbor_packs_never_crash(pack, cut):
    tally("senml.cbor")
    payload = cbor2.dumps(_cbor_pack(pack))
    _never_crashes(payload)
    _never_crashes(payload[: max(1, len(payload) - cut)])  # truncated CBOR
