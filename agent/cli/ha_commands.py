"""`edge-agent homeassistant clear`: remove this device from Home Assistant (install.sh --uninstall runs it).

Whatever discovery config is retained for this device id, device-based or per entity, is found by
subscribing (the broker hands retained messages over at once) and cleared with an empty retained
message, so it works whatever labels or cameras the config had when they were published.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from agent.cli.common import config_or_exit


def clear_discovery(args: argparse.Namespace) -> int:
    from paho.mqtt.enums import MQTTErrorCode

    from agent.device.identity import resolve_device_id
    from agent.sync.mqtt_link import ClientSetupError, describe_connect_error, new_client

    config = config_or_exit(args.config)
    if config.mqtt is None:
        print("no mqtt section in the config: nothing to clear")
        return 0
    device_id = resolve_device_id(config.device.id, config.storage.path.expanduser())
    prefix = config.homeassistant.prefix
    filters = [f"{prefix}/device/{device_id}/config", f"{prefix}/+/{device_id}/+/config"]
    found: set[str] = set()
    subscribed = threading.Event()
    try:
        client = new_client(config.mqtt, f"{device_id}-ha-clear")
    except ClientSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe([(f, 1) for f in filters])
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = lambda _c, _u, msg: found.add(msg.topic) if msg.retain and msg.payload else None
    try:
        client.connect(config.mqtt.host, config.mqtt.port, config.mqtt.keepalive)
    except (OSError, ValueError) as exc:
        print(f"error: {config.mqtt.host}:{config.mqtt.port}: {describe_connect_error(exc)}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        if not subscribed.wait(args.timeout):
            print("error: the broker did not answer the subscription", file=sys.stderr)
            return 1
        time.sleep(min(1.0, args.timeout))  # retained messages follow the SUBACK at once; give them a moment
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(found)]
        deadline = time.monotonic() + args.timeout
        while any(not i.is_published() for i in infos) and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = [i for i in infos if i.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not i.is_published()]
    finally:
        client.disconnect()
        client.loop_stop()
    print(f"cleared {len(infos) - len(failed)} Home Assistant discovery config(s) of {device_id}")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("homeassistant", help="Home Assistant discovery")
    ha_sub = h.add_subparsers(dest="ha_command", required=True)
    c = ha_sub.add_parser("clear", help="remove this device's retained discovery configs from the broker")
    c.add_argument("--config", type=Path)
    c.add_argument("--timeout", type=float, default=5.0)
    c.set_defaults(func=clear_discovery)
