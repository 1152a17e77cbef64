"""The password variant of the broker (docker/mosquitto/mosquitto-passwords.conf): TLS with server
authentication, username/password, the same ACL -- against a real mosquitto.

The client side is MqttLink with ``password_file`` and a CA file: the password travels only
inside TLS, comes from a file, and never shows up in a log line, even when it is refused.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid

import pytest
from certs import TestCA
from securebroker import OBSERVER, secure_broker
from lab.servers import eventually

from edgeloop.errors import TransientError
from edgeloop.mqtt import MqttLink, MqttSettings, TlsSettings

PASSWORD = "Tq7-device-password-never-logged"


def mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    return found


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("password-broker")
    ca = TestCA(d / "pki")
    passwords = d / "passwords"
    subprocess.run([mosquitto_passwd(), "-b", "-c", str(passwords), "dev-1", PASSWORD], check=True)
    subprocess.run([mosquitto_passwd(), "-b", str(passwords), OBSERVER, PASSWORD + "-obs"], check=True)
    with secure_broker(d / "broker", ca.ca_file, ca.server(), passwords=passwords, fleet="device dev-1\n") as b:
        yield b, ca


def settings(port: int, ca: TestCA, tmp_path, username: str | None, password: str | None) -> MqttSettings:
    extra = {}
    if password is not None:
        pw = tmp_path / f"pw-{uuid.uuid4().hex[:6]}"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        extra["password_file"] = pw
    return MqttSettings(url=f"mqtts://127.0.0.1:{port}", username=username, tls=TlsSettings(ca_file=ca.ca_file),
                        reconnect_min_s=30, **extra)


def test_right_password_gets_in_and_the_acl_applies_to_the_username(broker, tmp_path, caplog):
    b, ca = broker
    got: list[tuple[str, bytes]] = []
    observer = MqttLink(settings(b.port, ca, tmp_path, OBSERVER, PASSWORD + "-obs"), "obs",
                        subscriptions=[("#", 1)], on_message=lambda m: got.append((m.topic, m.payload)))
    with caplog.at_level(logging.DEBUG):
        device = MqttLink(settings(b.port, ca, tmp_path, "dev-1", PASSWORD), "dev-1-client")
        observer.start(wait_s=10)
        device.start(wait_s=10)
        assert observer.subscribed.wait(10)
        try:
            # The ACL applies to the username: dev-1 may not write into dev-2's topics.
            for topic in ("sensors/dev-2/vibration", "models/m/deploy", "status/dev-1", "sensors/dev-1/vibration",
                          "sensors/dev-1/fence"):
                device.publish(topic, topic.encode(), qos=1).wait(10)
            eventually(lambda: ("sensors/dev-1/fence", b"sensors/dev-1/fence") in got)  # the fence: published last
        finally:
            device.stop()
            observer.stop()
    assert [t for t, _ in got if t != "sensors/dev-1/fence"] == ["sensors/dev-1/vibration"]
    assert PASSWORD not in caplog.text


def test_the_username_is_the_client_id(broker, tmp_path):
    """use_username_as_clientid in the password variant too: two connections with dev-1's password but
    different client ids are one client; the second logs the first off (no one else's session is reachable)."""
    b, ca = broker
    first = MqttLink(settings(b.port, ca, tmp_path, "dev-1", PASSWORD), "dev-1-a")
    first.start(wait_s=10)
    second = MqttLink(settings(b.port, ca, tmp_path, "dev-1", PASSWORD), "somebody-else")
    try:
        second.start(wait_s=10)
        eventually(lambda: not first.connected.is_set(), message="the first dev-1 connection was not replaced")
    finally:
        second.stop()
        first.stop()
    assert "Client dev-1 already connected, closing old connection." in b.log_path.read_text()


@pytest.mark.parametrize(("username", "password"), [("dev-1", "wrong"), ("dev-1", None), ("nobody", PASSWORD)])
def test_wrong_or_missing_credentials_are_refused_and_never_logged(broker, tmp_path, caplog, username, password):
    b, ca = broker
    with caplog.at_level(logging.DEBUG):
        link = MqttLink(settings(b.port, ca, tmp_path, username, password), f"x-{uuid.uuid4().hex[:6]}")
        with pytest.raises(TransientError) as info:
            link.start(wait_s=1)
    assert "broker refused the connection" in str(info.value)
    assert "Not authorized" in str(info.value) or "Bad user name or password" in str(info.value)
    assert "refused connection" in caplog.text
    assert PASSWORD not in caplog.text and "wrong" not in caplog.text
