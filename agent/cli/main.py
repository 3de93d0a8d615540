"""`edge-agent` command line: run, check, detect, eval, demo-clip, store, bench."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config
from engines.config import ENGINE_PRESETS
from engines.gpu import DEFAULT_BUDGET_MB

log = logging.getLogger("edge-agent")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run of every job


def _config_or_exit(path: Path | None) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid config {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir).expanduser()
    return _config_or_exit(getattr(args, "config", None)).storage.path.expanduser()


# -- run ------------------------------------------------------------------------------
SIGNAL_POLL_S = 0.2


def _wait_for_stop(stop: threading.Event, duration: float | None) -> None:
    """Wait for `stop` or `duration`, waking every SIGNAL_POLL_S.

    The kernel may hand SIGTERM to any thread (ONNX Runtime's, OpenCV's); Python then only runs the
    handler when the main thread next wakes, and an untimed wait never wakes: the agent would ignore
    systemd's stop until it is killed.
    """
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.wait(SIGNAL_POLL_S):
        if deadline is not None and time.monotonic() >= deadline:
            return


def cmd_run(args: argparse.Namespace) -> int:
    from agent.cli.console import StatusPrinter
    from agent.runtime import Runtime

    config = _config_or_exit(args.config)
    if args.data_dir:
        config.storage.path = Path(args.data_dir).expanduser()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from agent.sync.mqtt_link import ClientSetupError

    try:
        runtime = Runtime(config)
        runtime.start()
    except (OSError, ClientSetupError) as exc:  # data dir not writable; MQTT credentials or TLS files unreadable
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    printer = None if args.quiet else StatusPrinter(runtime.status, config.console.interval_s)
    if printer:
        for handler in logging.getLogger().handlers:
            handler.addFilter(printer.log_filter)
        printer.start()
    _wait_for_stop(stop, args.duration)
    if printer:
        printer.stop()
    runtime.stop()
    status = runtime.status()
    produced = sum(c["detections"] for c in status["cameras"].values())
    log.info("stopped; %d detections produced, %d committed, %d frames of results dropped",
             produced, status["store"]["committed_rows"], status["store"]["dropped"])
    return 0


# -- check ----------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    config = _config_or_exit(args.config)
    print(f"{args.config}: valid ({len(config.cameras)} camera(s), model {config.model.path})")
    return 0


# -- demo-clip ------------------------------------------------------------------------
def cmd_demo_clip(args: argparse.Namespace) -> int:
    from agent.demo.clips import sidecar_path, write_clip

    out = write_clip(Path(args.out), args.seconds, args.seed)
    print(f"wrote {out} and {sidecar_path(out)}")
    return 0


# -- detect / eval --------------------------------------------------------------------
def _detector(args: argparse.Namespace):
    from engines import BackendUnavailable, DetectorConfig, ModelError, load_detector

    settings: dict = {"path": args.model}
    if getattr(args, "labels", None):
        settings["labels"] = args.labels
    if getattr(args, "score_threshold", None) is not None:
        settings["score_threshold"] = args.score_threshold
    try:
        return load_detector(DetectorConfig(**settings))
    except (ModelError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    detector = _detector(args)
    status = 0
    for image_path in args.images:
        image = cv2.imread(image_path)
        if image is None:
            print(f"error: cannot read image {image_path}", file=sys.stderr)
            status = 1
            continue
        detections = detector.detect([image])[0]
        if args.json:
            print(json.dumps({"image": image_path, "detections": [d.to_dict() for d in detections]}))
        else:
            print(f"{image_path}: {len(detections)} detection(s)")
            for d in detections:
                print(f"  {d.label:<12} {d.score:.2f}  " + " ".join(f"{v:.0f}" for v in d.box))
    return status


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from agent.demo.clips import write_clip
    from agent.demo.evaluate import evaluate_clip

    detector = _detector(args)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(args.clip) if args.clip else write_clip(Path(tmp) / "held-out.mp4", args.seconds, args.seed)
        result = evaluate_clip(detector, clip)
    names = detector.labels
    report = {
        "model": detector.info.model_path,
        "clip": args.clip or f"generated (seed {args.seed}, {args.seconds:g}s)",
        "frames": result.frames,
        "truths": result.map50.truths,
        "map50": round(result.map50.map, 4),
        "map50_at_score_threshold": round(result.map50_at_operating.map, 4),
        "score_threshold": detector.score_threshold,
        "per_class_ap50": {names[c] if c < len(names) else str(c): round(ap, 4)
                           for c, ap in result.map50.per_class.items()},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"mAP@0.5 {report['map50']:.3f} on {report['frames']} frames ({report['truths']} objects); "
              f"{report['map50_at_score_threshold']:.3f} counting only scores ≥ {detector.score_threshold}")
        for name, ap in report["per_class_ap50"].items():
            print(f"  {name:<12} AP50 {ap:.3f}")
    return 0


# -- store ----------------------------------------------------------------------------
def cmd_store_stats(args: argparse.Namespace) -> int:
    from agent.store import store

    try:
        result = store.stats(_data_dir(args))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_store_export(args: argparse.Namespace) -> int:
    from agent.store import store

    try:
        for row in store.export_detections(_data_dir(args)):
            sys.stdout.write(json.dumps(row) + "\n")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# -- mqtt-check -----------------------------------------------------------------------
def cmd_mqtt_check(args: argparse.Namespace) -> int:
    from agent.device.identity import resolve_device_id
    from agent.sync.mqtt_link import check_connection

    config = _config_or_exit(args.config)
    if config.mqtt is None:
        print(f"{args.config}: no mqtt section, nothing to check", file=sys.stderr)
        return 2
    ok, message = check_connection(config.mqtt, resolve_device_id(config.device.id, config.storage.path),
                                   args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


# -- fleet ----------------------------------------------------------------------------
FLEET_NO_ANSWER = 3  # exit code: the device did not answer in time


def _fleet_client(args: argparse.Namespace):
    from pydantic import ValidationError

    from agent.config import MqttConfig
    from agent.fleet.fleet import FleetClient, FleetError

    if args.config:
        mqtt = _config_or_exit(args.config).mqtt
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
    print(f"  store: {store.get('detections')} detections, outbox {store.get('outbox_pending')} pending, "
          f"{store.get('outbox_dead')} dead")
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


# -- bench ----------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from agent.cli.bench import run_bench
    from engines import GpuResources

    report = run_bench(args.model, args.cameras, args.seconds, args.threads, args.engine,
                       GpuResources(args.gpu_budget_mb))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from agent.cli.bench_sync import run_sync_bench

    report = run_sync_bench(args.host, args.port, args.detections, args.seconds)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="Camera analytics agent for edge devices.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the agent (no config: the built-in demo)")
    s.add_argument("--config", type=Path)
    s.add_argument("--data-dir", help="overrides storage.path")
    s.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
    s.add_argument("--quiet", action="store_true", help="no status lines")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", help="validate a config file")
    s.add_argument("--config", type=Path, required=True)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("demo-clip", help="write a generated demo clip and its ground truth (FILE.json)")
    s.add_argument("--out", required=True)
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=cmd_demo_clip)

    s = sub.add_parser("detect", help="detect objects in images")
    s.add_argument("--model", default="demo", help="ONNX file, or 'demo'")
    s.add_argument("--labels", type=Path)
    s.add_argument("--score-threshold", type=float)
    s.add_argument("--json", action="store_true")
    s.add_argument("images", nargs="+")
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("eval", help="mAP@0.5 of a model on a clip with ground truth")
    s.add_argument("--model", default="demo")
    s.add_argument("--clip", help="a clip with a FILE.json sidecar (default: a generated held-out clip)")
    s.add_argument("--seed", type=int, default=1000, help="seed of the generated clip")
    s.add_argument("--seconds", type=float, default=60.0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("store", help="inspect the local store")
    store_sub = s.add_subparsers(dest="store_command", required=True)
    for name, func, help_text in (("stats", cmd_store_stats, "counts and sizes"),
                                  ("export", cmd_store_export, "JSON lines, one per row")):
        t = store_sub.add_parser(name, help=help_text)
        t.add_argument("--data-dir")
        t.add_argument("--config", type=Path)
        if name == "stats":
            t.add_argument("--json", action="store_true")
        else:
            t.add_argument("--kind", choices=["detections"], default="detections")
        t.set_defaults(func=func)

    s = sub.add_parser("bench-sync", help="outbox drain rate and capture→PUBACK latency against a broker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--detections", type=int, default=100_000)
    s.add_argument("--seconds", type=float, default=30.0, help="length of the live demo run")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench_sync)

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
    t.add_argument("name", help="ping, get_config, set_config, camera, snapshot, restart_pipeline, get_stats")
    t.add_argument("--arg", action="append", metavar="KEY=VALUE", help="argument; dotted keys nest; JSON values")
    t.add_argument("--save-jpeg", help="snapshot: write the JPEG here instead of printing it")
    t.set_defaults(func=cmd_fleet_cmd)
    t = fleet_sub.add_parser("config", parents=[broker], help="publish a desired config and wait for the report")
    target = t.add_mutually_exclusive_group(required=True)
    target.add_argument("device", nargs="?")
    target.add_argument("--all", action="store_true", help="every device with a retained status")
    t.add_argument("file", help="YAML: the settings to change (a partial config)")
    t.set_defaults(func=cmd_fleet_config)

    s = sub.add_parser("bench", help="bare engine vs full pipeline throughput")
    s.add_argument("--model", default="demo", help="ONNX file (FP32 or INT8), or 'demo'")
    s.add_argument("--engine", default="onnxruntime-cpu", choices=list(ENGINE_PRESETS))
    s.add_argument("--gpu-budget-mb", type=int, default=DEFAULT_BUDGET_MB, help="GPU memory budget for GPU engines")
    s.add_argument("--cameras", type=int, default=1)
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    from agent.cli import model_commands

    model_commands.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
