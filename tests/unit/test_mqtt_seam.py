"""The MQTT seam is sealed: only edgeloop/mqtt.py imports paho, and nobody reaches into a link's client.

Also the link's side of the seam without a broker: what a handler receives (edgeloop's Message, not
paho's), and when the link acknowledges. The same promises against a real mosquitto:
tests/integration/test_mqtt_link.py.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.mqtt import Message, MqttLink, MqttSettings, PublishProperties

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("edgeloop", "runtime", "cloud_bridge", "devices")
SEAM = REPO / "edgeloop" / "mqtt.py"


def product_files():
    for folder in PRODUCT:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_only_the_link_imports_paho():
    offenders = []
    for path in product_files():
        if path == SEAM:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "paho"]
    assert offenders == []


def test_nobody_touches_the_client_of_a_link():
    """``x.link.client``, ``self._link._client`` ...: any ``client``/``_client`` attribute of something named *link*."""
    offenders = []
    for path in product_files():
        if path == SEAM:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("client", "_client"):
                owner = ast.unparse(node.value)
                if "link" in owner.lower():
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_the_seam_test_would_catch_an_offender():
    # Guard against the two tests above passing vacuously (e.g. a wrong folder list).
    assert len(list(product_files())) > 50
    tree = ast.parse("import paho.mqtt.client as paho\nself._link.client.subscribe('x')\n")
    assert any(isinstance(n, ast.Import) and n.names[0].name.startswith("paho") for n in ast.walk(tree))
    assert any(isinstance(n, ast.Attribute) and n.attr == "client" and "link" in ast.unparse(n.value)
               for n in ast.walk(tree))


# ----------------------------------------------------------------------------- messages and acks


class Recorder:
    """Stands in for the client's ack() so the link's ack decisions can be seen without a broker."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def paho_message(topic: bytes, payload: bytes, mid: int = 7, qos: int = 1, props: Properties | None = None):
    m = MQTTMessage(mid=mid, topic=topic)
    m.payload, m.qos, m.properties = payload, qos, props
    return m


def deliver(link: MqttLink, message: MQTTMessage) -> Recorder:
    recorder = Recorder()
    link._deliver(recorder, None, message)
    return recorder


def test_handlers_get_edgeloops_frozen_message_with_user_properties():
    got: list[Message] = []
    link = MqttLink(MqttSettings(), "t", on_message=got.append)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("ts", "1.5"), ("seq", "3")]
    props.ContentType = "image/jpeg"
    deliver(link, paho_message(b"frames/cam/belt", b"\xff\xd8", props=props))
    empty = Properties(PacketTypes.PUBLISH)  # v5 without properties: what paho hands over for most messages
    deliver(link, paho_message(b"sensors/d/s", b"{}", mid=8, qos=0, props=empty))
    deliver(link, paho_message(b"results/\xff/x", b"{}", mid=9, props=None))  # 3.1.1; topic not UTF-8
    assert got == [
        Message("frames/cam/belt", b"\xff\xd8", 1, False, 7, (("ts", "1.5"), ("seq", "3")), "image/jpeg"),
        Message("sensors/d/s", b"{}", 0, False, 8),
        Message("results/\ufffd/x", b"{}", 1, False, 9),
    ]
    assert all(type(m) is Message for m in got)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[0].topic = "other"  # type: ignore[misc]


def test_a_message_is_acked_after_its_handler_returned_and_not_when_it_raised():
    def handler(msg: Message) -> None:
        if msg.payload == b"poison":
            raise RuntimeError("bug in a handler")

    link = MqttLink(MqttSettings(), "t", on_message=handler)
    assert deliver(link, paho_message(b"a/b", b"ok", mid=1)).acks == [(1, 1)]
    assert deliver(link, paho_message(b"a/b", b"poison", mid=2)).acks == []  # not acked: redelivered later
    assert deliver(link, paho_message(b"a/b", b"ok", mid=3, qos=0)).acks == []  # QoS 0 has no ack
    assert link.handler_errors == 1


def test_with_manual_ack_the_owner_acks_and_the_link_never_does():
    link = MqttLink(MqttSettings(), "t", on_message=lambda m: None, manual_ack=True)
    assert deliver(link, paho_message(b"a/b", b"x", mid=1)).acks == []
    link_auto = MqttLink(MqttSettings(), "u", on_message=lambda m: None)
    assert link_auto.ack(1, 1, link_auto.generation) is False  # the link acks by itself: no double ack


def test_subscriptions_can_change_before_connecting():
    link = MqttLink(MqttSettings(), "t", subscriptions=[("a/#", 1)])
    link.subscribe("models/m/1/chunk/+", 1)
    link.subscribe("b/+", 0)
    link.unsubscribe("b/+")
    link.unsubscribe("never/subscribed")
    assert link.subscriptions == [("a/#", 1), ("models/m/1/chunk/+", 1)]
    with pytest.raises(ValueError):
        link.subscribe("", 1)
    with pytest.raises(ValueError):
        link.subscribe("a/b", 3)


def test_message_properties_need_mqtt5():
    link = MqttLink(MqttSettings(protocol="3.1.1"), "t")
    with pytest.raises(ValueError, match="MQTT 5"):
        link.publish("frames/c/b", b"x", qos=0, properties=PublishProperties(user_properties=(("seq", "1"),)))


def test_publish_properties_are_frozen_string_pairs():
    props = PublishProperties(user_properties=[("seq", 1)], content_type="image/jpeg")  # type: ignore[list-item]
    assert props.user_properties == (("seq", "1"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        props.content_type = "x"  # type: ignore[misc]


def test_handler_errors_show_in_the_edge_counters_and_the_bridge_stats():
    from edgeloop.bridge.app import Bridge
    from edgeloop.bridge.config import BridgeConfig
    from edgeloop.edge.app import EdgeApp
    from edgeloop.edge.config import load_edge_config

    def boom(msg: Message) -> None:
        raise KeyError(msg.topic)

    edge = EdgeApp(load_edge_config(None, {"outbox": {"enabled": False}}))
    bridge = Bridge(BridgeConfig())
    for link in (edge.link, bridge._link):
        link._on_message = boom  # stands in for a bug in the component's handler
        deliver(link, paho_message(b"sensors/d/vibration", b"{}"))
    assert edge.counters()["mqtt_handler_errors"] == 1  # also in its retained status (integer counters)
    assert bridge.stats()["mqtt_handler_errors"] == 1
