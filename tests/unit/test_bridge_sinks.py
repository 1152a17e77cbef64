"""HTTP outcome -> typed sink error, table-driven from what influxd 1.6.7 and VictoriaMetrics answer."""

from __future__ import annotations

import socket

import pytest

from edgeloop.bridge.config import InfluxSettings
from edgeloop.bridge.errors import Misconfigured, PartialWrite, SinkError, Throttled, TooLarge, Unavailable
from edgeloop.bridge.sinks import InfluxV1Sink, InfluxV2Sink, classify, make_sink
from edgeloop.errors import EdgeloopError, TransientError


@pytest.mark.parametrize("status", [200, 204])
def test_success(status):
    assert classify(status, b"") is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "dropped"),
    [
        (
            400,
            b'{"error":"partial write: field type conflict: input field \\"x\\" on measurement \\"m\\" '
            b'is type string, already exists as type float dropped=2"}',
            PartialWrite,
            2,
        ),
        (400, b'{"error":"partial write: unable to parse \'m x= 7\': missing field value dropped=0"}', PartialWrite, 0),
        (400, b'{"error":"unable to parse \'m x=\': missing field value"}', PartialWrite, None),
        (400, b'{"code":"invalid","message":"unable to parse points"}', PartialWrite, None),
        (401, b'{"error":"authorization failed"}', Misconfigured, "unauthorized"),
        (403, b"", Misconfigured, "forbidden"),
        (404, b'{"error":"database not found: \\"nope\\""}', Misconfigured, "not_found"),
        (404, b"404 page not found\n", Misconfigured, "no_endpoint"),
        (405, b"", Misconfigured, "no_endpoint"),
        (413, b"", TooLarge, None),
        (500, b'{"error":"retention policy not found: nope"}', Misconfigured, "retention_policy"),
        (500, b'{"error":"timeout"}', Unavailable, None),
        (502, b"<html>bad gateway</html>", Unavailable, None),
        (429, b"", Throttled, None),
        (503, b'{"message":"too busy"}', Throttled, None),
        (418, b"", Misconfigured, "http_418"),
    ],
)
def test_http_errors_are_typed(status, body, kind, dropped):
    """``dropped``: the server's count for a PartialWrite, the cause for a Misconfigured."""
    error = classify(status, body)
    assert type(error) is kind and isinstance(error, SinkError) and isinstance(error, EdgeloopError)
    assert error.status == status
    if kind is Misconfigured:
        assert error.cause == dropped and error.fix
    if kind is PartialWrite:
        assert error.dropped == dropped
        assert error.none_written == error.reason.startswith("unable to parse")
        assert "partial write" not in error.reason or error.reason.startswith("partial write")
    assert isinstance(error, TransientError) == (kind in (Throttled, Unavailable))


V1 = InfluxSettings(api="v1", db="edgeloop", username="writer", password="pw")
V2 = InfluxSettings(api="v2", bucket="b1", org="o1", token="t")


@pytest.mark.parametrize(
    ("status", "body", "influx", "fix"),
    [
        (404, b'{"error":"database not found: \\"edgeloop\\""}', V1, "CREATE DATABASE edgeloop"),
        (404, b'{"error":"database not found: \\"edgeloop\\""}', V1, "--influx-create-db"),
        (404, b'{"error":"database not found"}', InfluxSettings(api="v1", db="my-db"), 'CREATE DATABASE "my-db"'),
        (404, b"404 page not found\n", V2, "--influx-api v1"),
        (404, b"404 page not found\n", V1, "this server has no /write: check influx.url"),
        (500, b'{"error":"retention policy not found: week"}', InfluxSettings(api="v1", rp="week"),
         "create retention policy 'week'"),
        (404, b'{"code":"not found","message":"bucket \\"b1\\" not found"}', V2, "influx bucket create -n b1 -o o1"),
        (401, b'{"error":"authorization failed"}', V1, "influx.username / influx.password"),
        (401, b'{"error":"unable to parse authentication credentials"}', InfluxSettings(api="v1"),
         "set influx.username and influx.password"),
        (403, b'{"error":"not authorized"}', V1, "GRANT WRITE ON edgeloop TO writer"),
        (401, b"", V2, "API token"),
        (401, b"", InfluxSettings(api="v2"), "--influx-token-file"),
        (403, b"", V2, "write permission on bucket 'b1'"),
    ],
)
def test_the_fix_is_worded_for_the_config(status, body, influx, fix):
    error = classify(status, body, None, influx)
    assert isinstance(error, Misconfigured) and fix in error.fix


def test_server_message_is_kept():
    error = classify(404, b'{"error":"database not found: \\"nope\\""}')
    assert 'database not found: "nope"' in str(error)


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.5", 0.5), (None, None), ("soon", None)])
def test_retry_after(header, seconds):
    error = classify(429, b"", header)
    assert error.retry_after == seconds


def test_retry_after_http_date_is_in_the_future_or_zero():
    error = classify(503, b"", "Wed, 21 Oct 2015 07:28:00 GMT")
    assert error.retry_after == 0.0


def test_factory_and_urls():
    v1 = make_sink(InfluxSettings(api="v1", url="http://db:8086/", db="my db", rp="week"))
    assert isinstance(v1, InfluxV1Sink)
    assert v1.url == "http://db:8086/write?db=my+db&precision=ns&rp=week"
    v1.close()
    v2 = make_sink(InfluxSettings(api="v2", token="t"))
    assert isinstance(v2, InfluxV2Sink)
    v2.close()


def test_v1_basic_auth_header_is_set_and_secret_not_in_url():
    sink = InfluxV1Sink(InfluxSettings(api="v1", username="writer", password="pw"))
    assert sink._headers["Authorization"] == "Basic d3JpdGVyOnB3"
    assert "pw" not in sink.url
    sink.close()


def test_connection_refused_is_unavailable():
    # Port 9 (discard) on loopback: nothing listens there on a test machine.
    for api in ("v1", "v2"):
        sink = make_sink(InfluxSettings(api=api, url="http://127.0.0.1:9", token="t", timeout_s=2))
        with pytest.raises(Unavailable) as info:
            sink.write(["m x=1.0 1"])
        assert info.value.__cause__ is not None
        sink.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_an_empty_batch_sends_no_request(api):
    # A socket that listens but never accepts: any request would be a connection waiting in its backlog.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        sink = make_sink(InfluxSettings(api=api, url=f"http://127.0.0.1:{server.getsockname()[1]}", token="t",
                                        timeout_s=2))
        try:
            assert sink.write([]) is None
            with pytest.raises(BlockingIOError):  # nobody connected
                server.accept()
            with pytest.raises(Unavailable):  # while a batch with a line does reach the server (and times out)
                sink.write(["m x=1.0 1"])
            conn, _ = server.accept()
            conn.close()
        finally:
            sink.close()
