"""Home Assistant MQTT discovery, and the retained per-camera object counts its entities read.

One retained device-based payload (`<prefix>/device/<id>/config`, Home Assistant 2024.11+) or,
for older Home Assistant, one retained payload per entity (`<prefix>/<platform>/<id>/<object>/config`).
Availability follows the agent's own birth and Last Will (`<base>/status`, `online` true/false),
so Home Assistant greys the device out when it drops off. Entities per camera: object count
sensors and occupancy binary sensors per label (read from `<base>/objects/<camera>/counts`,
published on change: when an event starts or ends, never per frame), fps and inference-latency
diagnostic sensors (read from the retained telemetry), a switch that enables the camera (the
`camera` command); one select for the quality level (the `quality` command). `default_entity_id`
names entities (the old `object_id` is ignored since 2026.4); the device is never its own
`via_device`. Sent again on every connect and whenever Home Assistant says `online` on
`<prefix>/status`; disabling publishes empty retained payloads, which removes the entities.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from agent import __version__
from agent.config import AgentConfig
from agent.sync.mqtt_link import MqttLink

log = logging.getLogger(__name__)

MAX_DEFAULT_LABELS = 20
# a unique id per press: commands with an id already answered are not run again (agent.control.command_channel)
COMMAND_ID = "ha-{{ now().timestamp() }}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


def components(config: AgentConfig, device_id: str, base: str, labels: list[str],
               quality_levels: list[str]) -> dict[str, dict]:
    """Every entity's discovery config, by object id (platform in `p`)."""
    out: dict[str, dict] = {}
    telemetry = f"{base}/telemetry"
    dev = _slug(device_id)

    def add(object_id: str, platform: str, name: str, **fields) -> None:
        out[object_id] = {"p": platform, "name": name, "unique_id": f"{device_id}_{object_id}",
                          "default_entity_id": f"{platform}.{dev}_{_slug(object_id)}", **fields}

    for camera in config.cameras:
        cam = camera.name
        counts = f"{base}/objects/{cam}/counts"
        for label in labels:
            key = json.dumps(label)
            add(f"{cam}_{label}_count", "sensor", f"{cam} {label} count", state_topic=counts,
                value_template=f"{{{{ value_json[{key}] | default(0) }}}}", state_class="measurement",
                unit_of_measurement="objects", icon="mdi:counter")
            add(f"{cam}_{label}_occupancy", "binary_sensor", f"{cam} {label} occupancy", state_topic=counts,
                device_class="occupancy",
                value_template=f"{{{{ 'ON' if (value_json[{key}] | default(0)) > 0 else 'OFF' }}}}")
        cam_key = json.dumps(cam)
        this = f"(value_json.telemetry.cameras.get({cam_key}) or {{}})"  # a stopped camera is not in telemetry
        add(f"{cam}_fps", "sensor", f"{cam} fps", state_topic=telemetry, entity_category="diagnostic",
            value_template=f"{{{{ {this}.get('fps', 0) }}}}",
            unit_of_measurement="fps", state_class="measurement", suggested_display_precision=1)
        add(f"{cam}_inference_ms", "sensor", f"{cam} inference latency", state_topic=telemetry,
            entity_category="diagnostic", unit_of_measurement="ms", device_class="duration",
            state_class="measurement", suggested_display_precision=1,
            value_template=f"{{{{ (({this}.get('stages') or {{}}).get('infer') or {{}}).get('p50_ms') }}}}")
        args_on = json.dumps({"action": "enable", "name": cam})
        args_off = json.dumps({"action": "disable", "name": cam})
        add(f"{cam}_enabled", "switch", f"{cam} enabled", entity_category="config",
            command_topic=f"{base}/cmd/camera", payload_on="ON", payload_off="OFF",
            command_template=(f'{{"id":"{COMMAND_ID}","args":{{% if value == "ON" %}}{args_on}'
                              f'{{% else %}}{args_off}{{% endif %}}}}'),
            state_topic=telemetry,
            value_template=f"{{{{ 'ON' if {cam_key} in value_json.telemetry.cameras else 'OFF' }}}}")
    if quality_levels:
        add("quality_level", "select", "quality level", entity_category="config", command_topic=f"{base}/cmd/quality",
            options=["auto", *quality_levels], state_topic=telemetry,
            command_template=(f'{{"id":"{COMMAND_ID}","args":{{% if value == "auto" %}}{{"mode":"auto"}}'
                              f'{{% else %}}{{"mode":"fixed","level":"{{{{ value }}}}"}}{{% endif %}}}}'),
            value_template=("{{ 'auto' if value_json.telemetry.quality.mode == 'auto' "
                            "else value_json.telemetry.quality.level }}"))
    return out


def device_block(device_id: str, base: str) -> dict:
    return {
        "dev": {"ids": [f"edge-agent_{device_id}"], "name": f"edge-agent {device_id}", "mf": "edge-agent",
                "mdl": "camera analytics appliance", "sw": __version__},
        "o": {"name": "edge-agent", "sw": __version__},
        "avty": [{"topic": f"{base}/status",
                  "value_template": "{{ 'online' if value_json.online else 'offline' }}"}],
        "qos": 1,
    }


class HomeAssistant:
    """Publishes (and clears) discovery; keeps and republishes the object counts."""

    def __init__(self, link: MqttLink, config: AgentConfig, labels: Callable[[], list[str]],
                 quality_levels: Callable[[], list[str]]) -> None:
        self.link = link
        self.config = config.homeassistant
        self._agent_config = config
        self._labels = labels  # the model's, when neither homeassistant.labels nor tracking.labels is set
        self._levels = quality_levels
        self._lock = threading.Lock()
        self._counts: dict[str, str] = {}  # camera → latest counts payload (bounded by the cameras)
        self._published: dict[str, str] = {}  # discovery topic → the retained config we left there
        self.publishes = 0
        self.cleared = 0
        # disabled: what an earlier run with discovery on left retained is cleared at the first connect
        self._clear_at_connect = not self.config.enabled
        self.status_topic = f"{self.config.prefix}/status"
        link.routes[self.status_topic] = self._on_ha_status
        link.subscriptions.append(self.status_topic)
        link.on_connected.append(self._on_connected)

    # -- what Home Assistant sees ---------------------------------------------------------
    def labels(self) -> list[str]:
        if self.config.labels is not None:
            return list(self.config.labels)
        if self._agent_config.tracking.labels:
            return list(self._agent_config.tracking.labels)
        return list(self._labels())[:MAX_DEFAULT_LABELS]

    def payloads(self) -> dict[str, str]:
        """Discovery topic → retained payload, for the current config."""
        device_id, base = self.link.device_id, self.link.base
        cmps = components(self._agent_config, device_id, base, self.labels(), self._levels())
        block = device_block(device_id, base)
        if self.config.discovery == "device":
            return {f"{self.config.prefix}/device/{device_id}/config": json.dumps({**block, "cmps": cmps})}
        out = {}
        for object_id, cmp in cmps.items():
            single = {k: v for k, v in cmp.items() if k != "p"}
            single.update(device=block["dev"], origin=block["o"], availability=block["avty"], qos=1)
            out[f"{self.config.prefix}/{cmp['p']}/{device_id}/{object_id}/config"] = json.dumps(single)
        return out

    # -- publishing -----------------------------------------------------------------------
    def configure(self, config: AgentConfig) -> None:
        """A new config: entities no longer wanted are cleared, the rest published again."""
        with self._lock:
            self._agent_config = config
            self.config = config.homeassistant
        if self.link.connected.is_set():
            self.publish_discovery(changed_only=True)

    def publish_discovery(self, changed_only: bool = False) -> None:
        """Every config (on connect, on Home Assistant's birth), or only those a config change changed."""
        wanted = self.payloads() if self.config.enabled else {}
        with self._lock:
            published = dict(self._published)
        for topic in set(published) - set(wanted):
            self._retain(topic, "")
            self.cleared += 1
        for topic, payload in wanted.items():
            if not (changed_only and published.get(topic) == payload):
                self._retain(topic, payload)
        with self._lock:
            self._published = wanted

    def clear(self) -> None:
        """Remove every entity this config would publish (uninstall, or disabling)."""
        topics = set(self.payloads()) | set(self._published)
        for topic in topics:
            self._retain(topic, "")
        self.cleared += len(topics)
        self._published = {}

    def publish_counts(self, camera: str, counts: dict[str, int]) -> None:
        """The objects with an open event, per label (every label Home Assistant shows, zeros too)."""
        payload = json.dumps({**dict.fromkeys(self.labels(), 0), **counts}, separators=(",", ":"))
        with self._lock:
            self._counts[camera] = payload
        if self.link.connected.is_set():
            self._retain(f"{self.link.base}/objects/{camera}/counts", payload)

    def _on_connected(self) -> None:
        if self.config.enabled:
            self.publish_discovery()
        elif self._clear_at_connect:
            self._clear_at_connect = False
            self.clear()
        with self._lock:
            counts = dict(self._counts)
        for camera, payload in counts.items():
            self._retain(f"{self.link.base}/objects/{camera}/counts", payload)

    def _on_ha_status(self, message) -> None:
        if message.payload.strip().lower() == b"online":
            log.info("homeassistant: %s online; discovery sent again", self.status_topic)
            self.publish_discovery()

    def _retain(self, topic: str, payload: str) -> None:
        try:
            if self.link.publish(topic, payload, retain=True) is not None:
                self.publishes += 1
        except Exception as exc:  # too large for the broker: said, never fatal
            log.error("homeassistant: cannot publish %s: %s", topic, exc)

    def stats(self) -> dict:
        return {"enabled": self.config.enabled, "discovery": self.config.discovery,
                "entities": len(components(self._agent_config, self.link.device_id, self.link.base, self.labels(),
                                           self._levels())) if self.config.enabled else 0,
                "publishes": self.publishes, "cleared": self.cleared}
