"""`edge-agent run`, `check` and `demo-clip`: running the agent and checking what it will run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from agent.cli.common import config_or_exit

log = logging.getLogger("edge-agent")

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
    from agent.sync.mqtt_link import ClientSetupError

    config = config_or_exit(args.config)
    if args.data_dir:
        config.storage.path = Path(args.data_dir).expanduser()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runtime = Runtime(config)
        runtime.start()
    except (OSError, ClientSetupError) as exc:  # data dir not writable; MQTT credentials or TLS files unreadable
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    if runtime.web is not None and runtime.web.url:
        print(f"health page: {runtime.web.url}", flush=True)
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


def cmd_check(args: argparse.Namespace) -> int:
    config = config_or_exit(args.config)
    print(f"{args.config}: valid ({len(config.cameras)} camera(s), model {config.model.path})")
    return 0


def cmd_demo_clip(args: argparse.Namespace) -> int:
    from agent.demo.clips import sidecar_path, write_clip

    out = write_clip(Path(args.out), args.seconds, args.seed)
    print(f"wrote {out} and {sidecar_path(out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
