"""Property: any config file gives a valid config or a ConfigError naming the file -- never another
exception, and never a secret in the error, the log or ``config check`` output.

Inputs: random text, random YAML documents, and near misses of complete edge and bridge configs
(one value replaced, removed or added) whose values include real and broken certificate files,
directories, ${ENV} references, wildcards and huge numbers; the file is sometimes world-readable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

import pytest
import yaml
from certs import TestCA
from fuzzing import NASTY_TEXT, fuzz, json_values, near_miss, tally
from hypothesis import event, given
from hypothesis import strategies as st

from edgeloop.bridge.config import BridgeConfig, load_bridge_config
from edgeloop.cli import main as cli_main
from edgeloop.configfile import redacted
from edgeloop.errors import ConfigError
from edgeloop.edge.config import DEFAULT_VIBRATION_STAGES, EdgeConfig, load_edge_config

SECRET = "Fz9-secret-value-never-shown"
ENV_SECRET = "EDGELOOP_FUZZ_SECRET"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real files a config may point at: certificates, a key password, garbage, a directory."""
    d = tmp_path_factory.mktemp("cfgfiles")
    ca = TestCA(d)
    client = ca.client("dev-1")
    enc = ca.client("dev-enc", key_password=SECRET.encode())
    (d / "keypw").write_text(SECRET)
    (d / "keypw").chmod(0o600)
    (d / "token").write_text(SECRET + "\n")
    (d / "garbage").write_bytes(b"\x00\xffnot pem")
    (d / "empty").write_text("")
    os.environ[ENV_SECRET] = SECRET
    return {
        "dir": d, "ca": str(ca.ca_file), "cert": str(client.cert), "key": str(client.key), "enc_cert": str(enc.cert),
        "enc_key": str(enc.key), "keypw": str(d / "keypw"), "token": str(d / "token"),
        "paths": [str(ca.ca_file), str(client.cert), str(client.key), str(enc.key), str(d / "garbage"),
                  str(d / "empty"), str(d), str(d / "missing"), "/dev/null", "relative/x.pem", "", "a" * 300,
                  "/proc/self/fd/0", str(ca.ca_file) + "/x"],
    }


def edge_doc(f: dict) -> dict:
    return {
        "node_id": "edge-1",
        "site": "plant-a",
        "mqtt": {"url": "mqtts://127.0.0.1:8883", "username": "edge-1", "password": SECRET, "protocol": "5",
                 "keepalive_s": 30, "tls": {"ca_file": f["ca"], "cert_file": f["enc_cert"], "key_file": f["enc_key"],
                                            "key_password_file": f["keypw"], "min_version": "1.2"}},
        "pipelines": [{"sensor": "vibration", "topic": "sensors/+/vibration", "in_channels": 3,
                       "stages": [dict(s) for s in DEFAULT_VIBRATION_STAGES], "model": {"num_threads": 1}}],
        "batching": {"max_batch": 64, "max_latency_ms": 20.0, "flush_when_idle": True},
        "input": {"qos": 0, "queue_size": 100, "max_payload_bytes": 4096},
        "output": {"qos": 1, "batch_results": False, "deadletter": True},
        "status_interval_s": 30.0,
    }


def bridge_doc(f: dict) -> dict:
    return {
        "node_id": "edgeloop-bridge",
        "mqtt": {"url": "mqtts://b:${" + ENV_SECRET + "}@127.0.0.1:8883",
                 "tls": {"ca_file": f["ca"], "cert_file": f["cert"], "key_file": f["key"]}},
        "subscribe": ["results/+/+", "status/+"],
        "qos": 1,
        "max_payload_bytes": 65536,
        "influx": {"api": "v2", "url": "http://127.0.0.1:8086", "bucket": "b", "org": "o", "token": SECRET,
                   "batch_size": 100, "flush_interval_ms": 500, "tags": {"env": "test"},
                   "measurements": {"results": "inference", "status": "node_status"}},
    }


def config_values(f: dict) -> st.SearchStrategy:
    return st.one_of(
        json_values,
        st.sampled_from(f["paths"]),
        st.sampled_from(NASTY_TEXT),
        # (The secret itself only ever sits in secret fields: a secret typed into node_id is shown, rightly.)
        st.sampled_from(["${UNSET_EDGELOOP_VAR}", "${X:-mqtts://h}", "mqtt://h:99999", "http://h:8086", "v1", "v2",
                         "3.1.1", 5, 1.2, 1.3, "1.3", "sensors/+/x"]),
    )


KEYS = sorted({*EdgeConfig.model_fields, *BridgeConfig.model_fields, "url", "tls", "ca_file", "cert_file", "key_file",
               "key_password", "key_password_file", "password_file", "token_file", "token", "api", "stages", "type",
               "size", "hop", "from_model", "min_version", "insecure_skip_verify"})


@st.composite
def config_texts(draw, f: dict) -> str:
    kind = draw(st.sampled_from(["edge", "edge", "bridge", "bridge", "yaml", "text"]))
    event(f"input {kind}")
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "yaml":
        doc = draw(st.dictionaries(st.sampled_from(KEYS), config_values(f), max_size=6))
    else:
        base = edge_doc(f) if kind == "edge" else bridge_doc(f)
        doc = draw(near_miss(base, values=config_values(f), extra_keys=KEYS))
    try:
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    except yaml.YAMLError:
        return str(doc)


@fuzz
@given(data=st.data())
def test_any_config_file_is_valid_or_a_config_error_naming_the_file(files, data):
    text = data.draw(config_texts(files))
    mode = data.draw(st.sampled_from([0o600, 0o644]))
    path = files["dir"] / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates too: not valid UTF-8
    path.chmod(mode)
    tally("config file -> edge + bridge loaders + config check")
    records = _Capture()
    logging.getLogger().addHandler(records)
    try:
        for loader in (load_edge_config, load_bridge_config):
            try:
                cfg = loader(path)
            except ConfigError as exc:
                assert exc.source == str(path) and exc.problems and all(isinstance(p, str) for p in exc.problems)
                assert SECRET not in str(exc)
                event(f"{loader.__name__}: ConfigError")
            else:
                shown = repr(cfg) + str(redacted(cfg))
                assert SECRET not in shown
                event(f"{loader.__name__}: valid")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["config", "check", str(path)])
        assert code in (0, 2), err.getvalue()
        assert SECRET not in out.getvalue() + err.getvalue()
    finally:
        logging.getLogger().removeHandler(records)
    assert SECRET not in "\n".join(records.lines)


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert str(path) in str(info.value)


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("node_id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_edge_config(path)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
