"""A TCP forwarder on 127.0.0.1 that can go silent, like a pulled cable (for fault tests).

Why not close the sockets: a closed connection is noticed at once (FIN/RST);
an outage that only the MQTT keepalive can detect is the harder, realistic case.
"""

from __future__ import annotations

import select
import socket
import threading

from lab.servers import HOST


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. ``cut()`` stops forwarding without closing sockets
    (neither side sees FIN or RST, only silence, so keepalives must notice) and refuses new
    connections; ``cut(uplink_only=True)`` stops only client -> target, so the client still
    receives but nothing it sends (publishes, acks) arrives; ``restore()`` drops the stale
    connections and forwards again.

    ``mqtt_frames=True`` (plain MQTT only, not TLS) splits what clients send into MQTT packets, so
    ``drop_publishes()`` can drop exactly their PUBLISH packets (counted in ``dropped_publishes``)
    while everything else they send -- the PUBACKs for messages they receive, PINGREQ -- passes:
    their acks get through, their own messages never arrive and are never acknowledged."""

    def __init__(self, target_port: int, target_host: str = HOST, *, mqtt_frames: bool = False) -> None:
        self.target = (target_host, target_port)
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind((HOST, 0))
        self._listen.listen(64)
        self._listen.setblocking(False)
        self.port = self._listen.getsockname()[1]
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._up = True
        self._uplink = True
        self._closing = False
        self._frames = mqtt_frames
        self._pending: dict[socket.socket, bytearray] = {}  # client bytes after the last complete packet
        self._drop_publish = False
        self.dropped_publishes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def cut(self, uplink_only: bool = False) -> None:
        with self._lock:
            if uplink_only:
                self._uplink = False
            else:
                self._up = False

    def drop_publishes(self) -> None:
        if not self._frames:
            raise RuntimeError("drop_publishes() needs TcpProxy(..., mqtt_frames=True)")
        with self._lock:
            self._drop_publish = True

    def restore(self) -> None:
        with self._lock:
            self._up = self._uplink = True
            self._drop_publish = False
            self._pending.clear()
            stale = list(self._peers)
            self._peers.clear()
            self._clients.clear()
        for s in stale:
            _close(s)

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        self.restore()
        _close(self._listen)

    def _run(self) -> None:
        while not self._closing:
            with self._lock:
                up = self._up
                socks = [p for p in self._peers if self._uplink or p not in self._clients] if up else []
            readable, _, _ = select.select([self._listen, *socks], [], [], 0.05)
            for s in readable:
                if s is self._listen:
                    self._accept(up)
                else:
                    self._forward(s)

    def _accept(self, up: bool) -> None:
        try:
            conn, _ = self._listen.accept()
        except OSError:
            return
        if not up:
            _close(conn)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            _close(conn)
            return
        with self._lock:
            self._peers[conn] = upstream
            self._peers[upstream] = conn
            self._clients.add(conn)

    def _forward(self, s: socket.socket) -> None:
        with self._lock:
            peer = self._peers.get(s)
            from_client = s in self._clients
        if peer is None:
            return
        try:
            data = s.recv(65536)
            if data:
                if self._frames and from_client:
                    data = self._filter(s, data)
                if data:
                    peer.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            self._peers.pop(s, None)
            self._peers.pop(peer, None)
            self._clients.discard(s)
            self._clients.discard(peer)
            self._pending.pop(s, None)
            self._pending.pop(peer, None)
        _close(s)
        _close(peer)

    def _filter(self, s: socket.socket, data: bytes) -> bytes:
        """The complete MQTT packets in what ``s`` sent so far, minus PUBLISH while dropping; the rest waits."""
        buf = self._pending.setdefault(s, bytearray())
        buf += data
        out = bytearray()
        at = 0
        while (size := _packet_size(buf, at)) is not None:
            if self._drop_publish and buf[at] >> 4 == 3:  # PUBLISH
                self.dropped_publishes += 1
            else:
                out += buf[at : at + size]
            at += size
        del buf[:at]
        return bytes(out)


def _packet_size(buf: bytearray, at: int) -> int | None:
    """Bytes of the MQTT packet starting at ``at`` (fixed header + remaining length), None if incomplete."""
    remaining, shift, i = 0, 0, at + 1
    while True:
        if i >= len(buf) or shift > 21:
            return None
        byte = buf[i]
        remaining |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    size = i - at + remaining
    return size if len(buf) - at >= size else None


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass
