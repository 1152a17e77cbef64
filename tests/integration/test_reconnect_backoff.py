"""Reconnect backoff against real listeners (edgeloop/backoff.py, edgeloop/mqtt.py).

Before: a broker that accepted TCP and then refused the CONNECT (bad password, CONNACK 0x86/0x87)
or closed it got a retry a second forever, because the delay was reset on every disconnect.
Now every refused attempt grows the full-jitter window up to the cap, and only a connection that
stayed up ``reconnect_stable_s`` resets it. The link's policy is seeded here, so the delays it
draws are known; the assertions only use lower bounds on time (waits can be longer, never shorter).
"""

from __future__ import annotations

import logging
import random
import re
import socket
import subprocess
import threading
import time

from lab.servers import Mosquitto, eventually, free_port

from edgeloop.backoff import ReconnectBackoff
from edgeloop.mqtt import MqttLink, MqttSettings

PASSWORD = "right-password-7Qx"
BASE_S, CAP_S, STABLE_S = 1.0, 8.0, 1.0


def password_file(path, **users: str):
    path.unlink(missing_ok=True)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", *([] if path.exists() else ["-c"]), str(path), user, password],
                       check=True, capture_output=True)
    path.chmod(0o600)
    return path


def new_connections(broker: Mosquitto) -> int:
    """What the broker saw, independently of the link: one log line per TCP connection it accepted."""
    return broker.log_path.read_text(errors="replace").count("New connection from") if broker.log_path.exists() else 0


def assert_refused_attempts_grow(policy: ReconnectBackoff) -> None:
    draws = list(policy.history)
    assert [d.attempt for d in draws] == list(range(len(draws))), "the attempt count was reset while refused"
    assert [d.ceiling_s for d in draws] == [min(CAP_S, BASE_S * 2**k) for k in range(len(draws))]
    for before, after in zip(draws, draws[1:]):
        assert after.at - before.at >= before.delay_s  # the link waited what the policy drew


def test_refused_password_backs_off_without_reset_until_a_stable_connection(tmp_path, caplog):
    passwords = password_file(tmp_path / "passwords", someone_else=PASSWORD)
    listener = f"listener {{port}} {{host}}\nallow_anonymous false\npassword_file {passwords}"
    caplog.set_level(logging.WARNING, logger="edgeloop.mqtt")
    with Mosquitto(tmp_path / "broker", port=free_port(), listener_conf=listener) as broker:
        settings = MqttSettings(url=broker.url, username="dev-1", password=PASSWORD,
                                reconnect_min_s=BASE_S, reconnect_max_s=CAP_S, reconnect_stable_s=STABLE_S)
        policy = ReconnectBackoff(BASE_S, CAP_S, STABLE_S, rng=random.Random(0))
        link = MqttLink(settings, "dev-1", backoff=policy)
        seen_before = new_connections(broker)
        link.start(wait_s=None)
        try:
            # Refused: every attempt gets a CONNACK failure, and the window keeps growing.
            eventually(lambda: policy.attempt >= 6, timeout=120, message="fewer refused attempts than expected")
            assert "Not authorized" in (link.last_failure or "") or "Bad user name" in (link.last_failure or "")
            assert not link.connected.is_set() and policy.resets == 0
            assert_refused_attempts_grow(policy)
            draws = list(policy.history)[:6]
            elapsed = draws[-1].at - draws[0].at
            # Six attempts, five waits: far slower than the one attempt a second this replaced (a lower
            # bound on time that follows from the seeded delays: 0.84 + 1.52 + 1.68 + 2.07 + 4.09 s).
            assert elapsed >= sum(d.delay_s for d in draws[:-1]) >= 10.0
            eventually(lambda: new_connections(broker) - seen_before >= 6, message="the broker did not see them")
            # docs/operations.md, "Wrong password": what the log says (and never the password).
            assert re.search(r"refused connection: (Not authorized|Bad user name or password); retrying in "
                             r"\d+\.\ds \(attempt \d+\)", caplog.text)
            assert PASSWORD not in caplog.text

            # The password becomes valid; the broker restarts on the same port (TCP refused meanwhile).
            password_file(passwords, **{"dev-1": PASSWORD})
            broker.restart()
            eventually(link.connected.is_set, timeout=60, message="no connection with the right password")
            up_since = time.monotonic()
            assert policy.resets == 0 and policy.attempt >= 6  # the restart's TCP failures grew it too
            assert_refused_attempts_grow(policy)
            eventually(lambda: time.monotonic() - up_since >= STABLE_S, timeout=STABLE_S + 5)

            # A stable connection lost: the next wait starts again from the smallest window.
            broker.kill()
            eventually(lambda: policy.resets == 1, timeout=10, message="a stable connection did not reset")
            assert policy.history[-1].attempt == 0 and policy.history[-1].ceiling_s == BASE_S
        finally:
            link.stop()


def test_a_listener_that_closes_every_connection_before_connack_backs_off_too(caplog):
    """A broker (or a proxy in front of one) that accepts TCP and closes it at once."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[float] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    base, cap = 0.05, 0.4
    policy = ReconnectBackoff(base, cap, 1.0, rng=random.Random(1))
    caplog.set_level(logging.WARNING, logger="edgeloop.mqtt")
    link = MqttLink(MqttSettings(url=f"mqtt://127.0.0.1:{server.getsockname()[1]}"), "closed", backoff=policy)
    link.start(wait_s=None)
    try:
        eventually(lambda: policy.attempt >= 8, timeout=60)
        draws = list(policy.history)
        assert [d.attempt for d in draws] == list(range(len(draws)))
        assert [d.ceiling_s for d in draws][:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
        assert "closed before CONNACK" in (link.last_failure or "")
        # docs/operations.md, "Broker unreachable": what the log says.
        assert re.search(r"cannot connect to broker mqtt://127\.0\.0\.1:\d+ \(connection closed before CONNACK.*\); "
                         r"retrying in \d+\.\ds \(attempt \d+\)", caplog.text)
        assert len(accepted) >= 8  # the listener saw each attempt
    finally:
        link.stop()
        stop.set()
        thread.join(5)
        server.close()
