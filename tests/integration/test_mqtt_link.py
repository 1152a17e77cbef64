"""The MQTT link's promises (edgeloop/mqtt.py) against a real mosquitto.

- Subscriptions belong to the link: one added after connecting (as the deploy manager adds chunk
  filters) is made again after the broker restarts and the session is clean; one removed stays removed.
- A handler that raises for one message does not stop later messages, and that message is not
  acknowledged: the broker sends it again when the session resumes.
- publish(properties=) carries user properties and a content type to an MQTT v5 subscriber.
- A QoS 1 message published while the broker is away is held and acknowledged after the reconnect.
"""

from __future__ import annotations

import threading

from lab.servers import Mosquitto, eventually, free_port

from edgeloop.mqtt import Message, MqttLink, MqttSettings, PublishProperties, wait_for_all


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    def __call__(self, msg: Message) -> None:
        with self._lock:
            self.messages.append(msg)

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.messages]


def link(url: str, client_id: str, **kwargs) -> MqttLink:
    # Fast retries while the broker restarts; the policy itself is tested in test_reconnect_backoff.py.
    settings = MqttSettings(url=url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    return MqttLink(settings, client_id, **kwargs)


def test_subscriptions_added_after_connect_are_restored_after_a_clean_session_restart(mosquitto, unique_id):
    inbox = Inbox()
    sub = link(mosquitto.url, f"sub-{unique_id}", on_message=inbox, subscriptions=[(f"{unique_id}/status/+", 1)])
    pub = link(mosquitto.url, f"pub-{unique_id}")
    sub.start(wait_s=10)
    pub.start(wait_s=10)
    try:
        # Added at run time, connected: what the deploy manager does with models/{m}/{v}/chunk/+.
        sub.subscribe(f"{unique_id}/models/m/1/chunk/+", 1)
        sub.subscribe(f"{unique_id}/gone/#", 1)
        sub.unsubscribe(f"{unique_id}/gone/#")
        assert sub.barrier(5)
        mosquitto.restart()  # no persistence: every session, subscription and retained message is gone
        eventually(lambda: sub.reconnects >= 1 and sub.subscribed.is_set() and pub.connected.is_set(),
                   timeout=30, message="no reconnect")
        assert not sub.session_present
        for topic in ("gone/x", "models/m/1/chunk/0", "status/dev"):  # the last one is the fence
            assert pub.publish(f"{unique_id}/{topic}", topic.encode(), qos=1).wait(10)
        eventually(lambda: b"status/dev" in inbox.payloads(), message="fence not received")
        assert inbox.payloads() == [b"models/m/1/chunk/0", b"status/dev"]
    finally:
        sub.stop()
        pub.stop()


def test_a_handler_that_raises_does_not_stop_later_messages_and_its_message_comes_back(mosquitto, unique_id, caplog):
    topic = f"{unique_id}/in"
    inbox = Inbox()

    def fragile(msg: Message) -> None:
        if msg.payload == b"poison":
            raise ValueError("a bug in the handler")
        inbox(msg)

    session = {"clean_start": False, "session_expiry_s": 300, "subscriptions": [(topic, 1)]}
    first = link(mosquitto.url, f"c-{unique_id}", on_message=fragile, **session)
    pub = link(mosquitto.url, f"pub-{unique_id}")
    first.start(wait_s=10)
    pub.start(wait_s=10)
    try:
        assert first.barrier(5)
        assert wait_for_all([pub.publish(topic, p, qos=1) for p in (b"a", b"poison", b"b", b"c")], 10)
        eventually(lambda: inbox.payloads() == [b"a", b"b", b"c"], message="later messages stopped")
        assert first.handler_errors == 1
        assert first.connected.is_set()  # the network thread lives on
        # docs/operations.md, "A message handler failed": the log line, with the traceback.
        assert f"message handler failed on '{topic}': ValueError('a bug in the handler'); the message is not " \
               "acknowledged" in caplog.text
        assert "Traceback" in caplog.text
    finally:
        first.stop()
    # Same client id, session resumed: the broker sends again what was never acknowledged -- only that.
    again = Inbox()
    second = link(mosquitto.url, f"c-{unique_id}", on_message=again, **session)
    second.start(wait_s=10)
    try:
        assert second.session_present
        assert pub.publish(topic, b"fence", qos=1).wait(10)
        eventually(lambda: b"fence" in again.payloads(), message="fence not received")
        assert again.payloads() == [b"poison", b"fence"]
        assert again.messages[0].qos == 1
    finally:
        second.stop()
        pub.stop()


def test_user_properties_and_content_type_reach_a_v5_subscriber(mosquitto, unique_id):
    inbox = Inbox()
    sub = link(mosquitto.url, f"sub-{unique_id}", on_message=inbox, subscriptions=[(f"frames/{unique_id}/+", 1)])
    pub = link(mosquitto.url, f"pub-{unique_id}")
    sub.start(wait_s=10)
    pub.start(wait_s=10)
    try:
        assert sub.subscribed.wait(10)
        props = PublishProperties(user_properties=(("v", "1"), ("ts", "1761000000.25"), ("seq", "42"), ("seq", "dup")),
                                  content_type="image/jpeg")
        assert pub.publish(f"frames/{unique_id}/belt", b"\xff\xd8jpeg", qos=1, properties=props).wait(10)
        assert pub.publish(f"frames/{unique_id}/plain", b"no properties", qos=1).wait(10)
        eventually(lambda: len(inbox.messages) == 2)
        framed, plain = inbox.messages
        assert framed.user_properties == (("v", "1"), ("ts", "1761000000.25"), ("seq", "42"), ("seq", "dup"))
        assert framed.content_type == "image/jpeg" and framed.payload == b"\xff\xd8jpeg"
        assert plain.user_properties == () and plain.content_type is None
    finally:
        sub.stop()
        pub.stop()


def test_a_qos1_publish_made_while_the_broker_is_down_is_acknowledged_after_the_reconnect(tmp_path, unique_id):
    # A fixed port (stop, then start again on it) and persistence (the subscriber's session survives).
    with Mosquitto(tmp_path / "broker", port=free_port(), persistence=True) as broker:
        inbox = Inbox()
        sub = link(broker.url, f"sub-{unique_id}", on_message=inbox, subscriptions=[(f"{unique_id}/#", 1)],
                   clean_start=False, session_expiry_s=300)
        pub = link(broker.url, f"pub-{unique_id}")
        sub.start(wait_s=10)
        pub.start(wait_s=10)
        try:
            assert sub.barrier(5)
            broker.stop()
            eventually(lambda: not pub.connected.is_set())
            held = pub.publish(f"{unique_id}/x", b"held", qos=1)
            assert held.error is not None and not held.is_published()  # not sent yet, but kept
            broker.start()
            assert held.wait(30)
            eventually(lambda: b"held" in inbox.payloads(), timeout=30)
        finally:
            sub.stop()
            pub.stop()
