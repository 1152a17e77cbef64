"""Home Assistant MQTT discovery: each (device, model) the edge scores appears in Home Assistant.

Why on the edge: the edge is the one that knows which devices and models exist
(a device appears when its first result is published), and its status topic is
what says whether the results are live. Off unless ``homeassistant.enabled``.

For the first result of each (device, model) the edge publishes two retained
discovery configs, following Home Assistant's documented convention
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``:

  binary_sensor  the anomaly flag (device_class ``problem``), ``value_json.anomaly``
  sensor         the anomaly score (state_class ``measurement``), ``value_json.score``

both reading ``results/{device}/{model}`` (the last element when
``output.batch_results`` publishes arrays), with a ``unique_id``, a ``device``
block (one Home Assistant device per edgeloop device) and availability tied to
the edge's retained ``status/{node}`` (birth ``{"state": "online", ...}``, LWT
and clean exit ``{"state": "offline", ...}``): the template reads ``value_json.state``.

Device names come from devices, so they are untrusted: the ids in topics and
``unique_id`` keep only ``[A-Za-z0-9_-]`` (what Home Assistant accepts), with a
short hash of the original appended when anything was replaced, so two names
cannot collapse into one entity; at most ``max_entities`` (device, model) pairs
are announced, the rest counted (``ha_discovery_skipped``) and logged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgeloop import __version__
from edgeloop.contract import status_topic

log = logging.getLogger("edgeloop.edge.ha")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"


class HomeAssistantSettings(BaseModel):
    """``homeassistant:`` -- MQTT discovery of the edge's results (docs/home-assistant.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="publish retained discovery configs for each (device, model)")
    discovery_prefix: Annotated[str, Field(pattern=_PREFIX, max_length=128)] = Field(
        default="homeassistant", description="Home Assistant's discovery prefix (its MQTT integration's setting)")
    max_entities: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=1000, description="(device, model) pairs announced at most; further ones are counted, not announced")


def object_id(*parts: str) -> str:
    """An id Home Assistant accepts in a discovery topic: ``[A-Za-z0-9_-]``, unique per input."""
    raw = "_".join(parts)
    safe = _UNSAFE.sub("_", raw)
    if safe != raw:
        safe += "_" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return safe


class HaDiscovery:
    """Announces each (device, model) once; ``publish(topic, payload)`` sends retained at QoS 1."""

    def __init__(self, settings: HomeAssistantSettings, node: str, publish: Callable[[str, bytes], object],
                 *, batch_results: bool = False) -> None:
        self.settings = settings
        self.node = node
        self._publish = publish
        self._value = "value_json[-1]" if batch_results else "value_json"
        self._node_id = object_id(node)
        self.announced: set[tuple[str, str]] = set()
        self.skipped = 0

    def seen(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Called with what the edge publishes; announces result topics it has not announced yet."""
        for topic, _ in messages:
            if not topic.startswith("results/"):
                continue
            parts = topic.split("/")
            if len(parts) != 3 or (parts[1], parts[2]) in self.announced:
                continue
            self.announce(parts[1], parts[2])

    def announce(self, device: str, model: str) -> None:
        if len(self.announced) >= self.settings.max_entities:
            if self.skipped == 0:
                log.warning("homeassistant: %d (device, model) pairs announced, the limit; further ones are not",
                            self.settings.max_entities)
            self.skipped += 1
            return
        self.announced.add((device, model))
        for topic, config in self.configs(device, model):
            self._publish(topic, json.dumps(config, separators=(",", ":")).encode())

    def configs(self, device: str, model: str) -> list[tuple[str, dict]]:
        """The (topic, payload) of both discovery configs of one (device, model)."""
        prefix, v = self.settings.discovery_prefix, self._value
        common = {
            "state_topic": f"results/{device}/{model}",
            "availability": [{
                "topic": status_topic(self.node),
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }],
            "device": {
                "identifiers": [object_id("edgeloop", self.node, device)],
                "name": device,
                "manufacturer": "edgeloop",
                "model": "edgeloop edge runtime",
                "sw_version": __version__,
            },
            "origin": {"name": "edgeloop", "sw_version": __version__},
            "qos": 1,
        }
        out = []
        for component, kind, extra in (
            ("binary_sensor", "anomaly", {
                "name": f"{model} anomaly", "device_class": "problem",
                "value_template": f"{{{{ 'ON' if {v}.anomaly else 'OFF' }}}}",
                "payload_on": "ON", "payload_off": "OFF",
            }),
            ("sensor", "score", {
                "name": f"{model} score", "state_class": "measurement",
                "value_template": f"{{{{ {v}.score }}}}",
            }),
        ):
            oid = object_id(device, model, kind)
            config = {**extra, **common, "unique_id": object_id("edgeloop", self.node, device, model, kind)}
            out.append((f"{prefix}/{component}/{self._node_id}/{oid}/config", config))
        return out
