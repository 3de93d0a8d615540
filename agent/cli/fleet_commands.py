"""`edge-agent fleet list|status|cmd|config` and `mqtt-check`: the operator's side of the broker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.common import config_or_exit


def cmd_mqtt_check(args: argparse.Namespace) -> int:
    from agent.device.identity import resolve_device_id
    from agent.sync.mqtt_link import check_connection

    config = config_or_exit(args.config)
    if config.mqtt is None:
        print(f"{args.config}: no mqtt section, nothing to check", file=sys.stderr)
        return 2
    ok, message = check_connection(config.mqtt, resolve_device_id(config.device.id, config.storage.path),
                                   args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


FLEET_NO_ANSWER = 3  # exit code: the device did not answer in time


def _fleet_client(args: argparse.Namespace):
    from pydantic import ValidationError

    from agent.config import MqttConfig
    from agent.fleet.fleet import FleetClient, FleetError

    if args.config:
        mqtt = config_or_exit(args.config).mqtt
        if mqtt is None:
            print(f"{args.config}: no mqtt section", file=sys.stderr)
            raise SystemExit(2)
    else:
        settings = {"host": args.host, "port": args.port, "username": args.username,
                    "password_file": args.password_file}
        if args.ca_file or args.cert_file:
            settings["tls"] = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
        try:
            mqtt = MqttConfig(**settings)
        except ValidationError as exc:
            print(f"invalid broker settings: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    try:
        return FleetClient(mqtt, args.prefix, timeout=min(args.timeout, 30.0))
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _when(ms: int | None) -> str:
    import datetime

    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_fleet_list(args: argparse.Namespace) -> int:
    fleet = _fleet_client(args)
    try:
        rows = fleet.devices(args.timeout)
    finally:
        fleet.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'DEVICE':<24} {'STATE':<8} {'SESSION':>7}  {'VERSION':<10} LAST SEEN")
    for r in rows:
        print(f"{r['device']:<24} {'online' if r['online'] else 'offline':<8} {r['session'] or '-':>7}  "
              f"{r['version'] or '-':<10} {_when(r['last_seen_ms'])}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    fleet = _fleet_client(args)
    try:
        reading = fleet.telemetry(args.device, args.timeout)
    finally:
        fleet.close()
    if reading is None:
        print(f"no telemetry from {args.device} (unknown device, or none sent yet)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reading))
        return 0
    system, store, sync = reading.get("system", {}), reading.get("store", {}), reading.get("sync") or {}
    print(f"{args.device} at {_when(reading.get('ts_ms'))}")
    print(f"  cpu {system.get('cpu_percent')}%  memory {system.get('memory_used_percent')}%  "
          f"disk free {system.get('disk_free_mb')} MB")
    for name, cam in (reading.get("cameras") or {}).items():
        print(f"  camera {name}: {cam.get('state')}, {cam.get('fps')} fps, dropped {cam.get('frames_dropped')}, "
              f"reconnects {cam.get('reconnects')}" + (f", {cam['last_error']}" if cam.get("last_error") else ""))
    print(f"  store: {store.get('committed_rows')} detections stored this run, outbox "
          f"{store.get('outbox_pending')} pending, {store.get('outbox_dead')} dead")
    print(f"  sync: acked {sync.get('rows_acked')}, last error {sync.get('last_error') or '-'}")
    if reading.get("model_error"):
        print(f"  model error: {reading['model_error']}")
    return 0


def _parse_fleet_args(pairs: list[str]) -> dict:
    """k=v pairs; a dotted key nests (settings.fps=5); a value is JSON when it parses, else text."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            print(f"--arg {pair!r}: expected KEY=VALUE", file=sys.stderr)
            raise SystemExit(2)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def cmd_fleet_cmd(args: argparse.Namespace) -> int:
    import base64

    fleet = _fleet_client(args)
    try:
        answer = fleet.command(args.device, args.name, _parse_fleet_args(args.arg or []), args.timeout)
    finally:
        fleet.close()
    if answer is None:
        print(f"no answer from {args.device} within {args.timeout:g}s (offline? the command expires unanswered)",
              file=sys.stderr)
        return FLEET_NO_ANSWER
    result = answer.get("result")
    if args.save_jpeg and isinstance(result, dict) and "jpeg_base64" in result:
        Path(args.save_jpeg).write_bytes(base64.b64decode(result.pop("jpeg_base64")))
        result["saved_to"] = args.save_jpeg
    print(json.dumps(answer, indent=None if args.json else 2))
    return 0 if answer.get("ok") else 1


def cmd_fleet_config(args: argparse.Namespace) -> int:
    import yaml

    try:
        patch = yaml.safe_load(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(patch, dict):
        print(f"{args.file}: expected a mapping of settings", file=sys.stderr)
        return 2
    fleet = _fleet_client(args)
    try:
        devices = [r["device"] for r in fleet.devices(args.timeout)] if args.all else [args.device]
        worst = 0
        for device in devices:
            version, report = fleet.publish_desired(device, patch, args.timeout)
            if report is None:
                print(f"{device}: version {version} published; no report within {args.timeout:g}s "
                      "(offline devices apply it when they connect)")
                worst = max(worst, FLEET_NO_ANSWER)
            elif report.get("status") == "applied":
                print(f"{device}: version {version} applied" +
                      (f" ({', '.join(report['changes'])})" if report.get("changes") else ""))
            else:
                print(f"{device}: version {version} rejected; still running version {report.get('applied_version')}")
                for err in report.get("errors", []):
                    print(f"  {err.get('path')}: {err.get('message')}")
                worst = max(worst, 1)
    finally:
        fleet.close()
    return worst


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("mqtt-check", help="connect to the configured broker once and report")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(func=cmd_mqtt_check)

    s = sub.add_parser("fleet", help="operate devices through the broker: list, status, cmd, config")
    fleet_sub = s.add_subparsers(dest="fleet_command", required=True)
    broker = argparse.ArgumentParser(add_help=False)
    conn = broker.add_argument_group("broker (or --config FILE with an mqtt section)")
    conn.add_argument("--config", type=Path, help="YAML with an mqtt section, as the agent's")
    conn.add_argument("--host", default="127.0.0.1")
    conn.add_argument("--port", type=int, default=1883)
    conn.add_argument("--username")
    conn.add_argument("--password-file", type=Path)
    conn.add_argument("--ca-file", type=Path)
    conn.add_argument("--cert-file", type=Path, help="operator client certificate (mutual TLS)")
    conn.add_argument("--key-file", type=Path)
    conn.add_argument("--prefix", help="topic prefix (default: edge)")
    conn.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for answers")
    conn.add_argument("--json", action="store_true")
    t = fleet_sub.add_parser("list", parents=[broker], help="devices with a retained status")
    t.set_defaults(func=cmd_fleet_list)
    t = fleet_sub.add_parser("status", parents=[broker], help="a device's latest telemetry")
    t.add_argument("device")
    t.set_defaults(func=cmd_fleet_status)
    t = fleet_sub.add_parser("cmd", parents=[broker], help="send a command and print its answer")
    t.add_argument("device")
    t.add_argument("name", help="ping, get_config, set_config, camera, snapshot, restart_pipeline, get_stats, "
                                "requeue_dead_letters")
    t.add_argument("--arg", action="append", metavar="KEY=VALUE", help="argument; dotted keys nest; JSON values")
    t.add_argument("--save-jpeg", help="snapshot: write the JPEG here instead of printing it")
    t.set_defaults(func=cmd_fleet_cmd)
    t = fleet_sub.add_parser("config", parents=[broker], help="publish a desired config and wait for the report")
    target = t.add_mutually_exclusive_group(required=True)
    target.add_argument("device", nargs="?")
    target.add_argument("--all", action="store_true", help="every device with a retained status")
    t.add_argument("file", help="YAML: the fleet's whole overlay (a partial config); it replaces the previous one")
    t.set_defaults(func=cmd_fleet_config)
