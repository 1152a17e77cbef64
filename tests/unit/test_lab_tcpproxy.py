"""The fault proxy's MQTT framing (lab/tcpproxy.py): it drops exactly the client's PUBLISH packets,
however TCP splits the stream, and passes everything else byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.tcpproxy import TcpProxy, _packet_size


def packet(kind: int, body: bytes) -> bytes:
    """A raw MQTT packet: type nibble, flags 0 (2 for PUBLISH: QoS 1), varint remaining length."""
    n, length = len(body), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([kind << 4 | (2 if kind == 3 else 0)]) + bytes(length) + body


PACKETS = st.lists(
    st.tuples(st.sampled_from([3, 4, 12, 8]), st.binary(max_size=400)),  # PUBLISH, PUBACK, PINGREQ, SUBSCRIBE
    min_size=1, max_size=12,
)


def test_packet_size_reads_the_variable_length_header():
    assert _packet_size(bytearray(packet(4, b"\x00\x01")), 0) == 4
    big = packet(3, b"x" * 200)  # two-byte remaining length
    assert _packet_size(bytearray(big), 0) == len(big) == 203
    assert _packet_size(bytearray(big[:-1]), 0) is None and _packet_size(bytearray(big[:1]), 0) is None


@settings(max_examples=50, deadline=None)
@given(PACKETS, st.data())
def test_only_publish_packets_are_dropped_whatever_the_split(packets, data):
    stream = b"".join(packet(k, b) for k, b in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    proxy = TcpProxy(1, mqtt_frames=True)  # never connects: only the framing is exercised
    try:
        proxy.drop_publishes()
        client = object()
        out = b"".join(proxy._filter(client, piece) for piece in pieces)
        assert out == b"".join(packet(k, b) for k, b in packets if k != 3)
        assert proxy.dropped_publishes == sum(k == 3 for k, _ in packets)
        proxy.restore()
        assert b"".join(proxy._filter(client, piece) for piece in pieces) == stream  # restored: all passes
    finally:
        proxy.close()
