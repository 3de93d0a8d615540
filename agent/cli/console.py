"""The live one-line-per-camera status on the terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO


def _ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.1f}"


def status_lines(status: dict) -> list[str]:
    lines = []
    for name, cam in status["cameras"].items():
        infer = cam["stages"]["infer"]["p50_ms"]
        lines.append(
            f"{name:<16} {cam['state']:<12} fps {cam['fps']:5.1f}  infer {_ms(infer)} ms  "
            f"detections {cam['detections']:>8}  drops {cam['frames_dropped']:>6}  "
            f"reconnects {cam['reconnects']:>3}"
            + (f"  ({cam['last_error']})" if cam["last_error"] and cam["state"] != "running" else "")
        )
    if status.get("model_error"):
        lines.append(f"model error: {status['model_error']}")
    store = status["store"]
    if store["dropped"] or store["write_errors"]:
        lines.append(f"store: {store['dropped']} frames of results dropped, {store['write_errors']} write errors")
    return lines


class StatusPrinter:
    """Prints status lines every `interval_s`; redraws in place on a terminal."""

    def __init__(self, snapshot: Callable[[], dict], interval_s: float, out: TextIO = sys.stdout) -> None:
        self._snapshot = snapshot
        # A log file or journal gets a block every 10 s at most, a terminal a live view.
        self._interval = interval_s if out.isatty() else max(interval_s, 10.0)
        self._out = out
        self._tty = out.isatty()
        self._drawn = 0
        self._closed = False  # the reader of our output went away (`edge-agent run | head`)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, leaving the final figures on screen (or in the log)."""
        self._stop.set()
        self._thread.join(2)
        self.print_once()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.print_once()

    def note_other_output(self) -> None:
        """Something else (a log line) was written below the block: draw afresh next time."""
        with self._lock:
            self._drawn = 0

    def log_filter(self, _record: object) -> bool:
        """A logging filter that keeps the redrawn block intact around log lines."""
        self.note_other_output()
        return True

    def print_once(self) -> None:
        if self._closed:
            return
        lines = status_lines(self._snapshot())
        with self._lock:
            try:
                self._write(lines)
            except BrokenPipeError:  # nobody reads the status any more; the agent runs on without it
                self._closed = True
                self._stop.set()

    def _write(self, lines: list[str]) -> None:
        if self._tty:
            if self._drawn:
                self._out.write(f"\x1b[{self._drawn}F")
            self._out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self._drawn = len(lines)
        else:
            self._out.write("".join(f"{line}\n" for line in lines))
        self._out.flush()
