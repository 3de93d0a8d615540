"""systemd's notify protocol against a real AF_UNIX datagram socket the test binds, as systemd would."""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import validate_config
from agent.device.sd_notify import Notifier, Supervision
from agent.runtime import Runtime
from tests.helpers import wait_for


class NotifySocket:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.received.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, f) for t, f in self.drain() if key in f]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[NotifySocket, dict[str, str]]]:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path)
    yield sock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    sock.sock.close()


def test_ready_then_watchdog_at_half_the_period_only_while_alive(notify) -> None:
    sock, env = notify
    alive = [True]
    sup = Supervision(lambda: alive[0], lambda: "2/2 cameras running", Notifier(env))
    sup.ready()
    try:
        wait_for(lambda: len(sock.with_key("WATCHDOG")) >= 6, timeout=10, what="watchdog pings")
        first = sock.drain()[0][1]
        assert first["READY"] == "1" and first["STATUS"] == "2/2 cameras running"
        times = [t for t, _ in sock.with_key("WATCHDOG")]
        period = statistics.median(b - a for a, b in itertools.pairwise(times))
        assert 0.15 <= period <= 0.3, period  # half of WATCHDOG_USEC (0.4 s)
        alive[0] = False  # the pipeline's heartbeat went stale
        count = len(sock.with_key("WATCHDOG"))
        wait_for(lambda: sup.withheld >= 4, timeout=10, what="pings withheld")
        assert len(sock.with_key("WATCHDOG")) <= count + 1  # one may have been on its way
        assert len(sock.with_key("STATUS")) > count  # status still flows
        alive[0] = True
        wait_for(lambda: len(sock.with_key("WATCHDOG")) > count + 1, what="pings again once alive")
    finally:
        sup.stopping()
    assert sock.drain()[-1][1] == {"STOPPING": "1", "STATUS": "stopping"}


def test_abstract_socket_names_and_a_watchdog_meant_for_another_process(tmp_path: Path) -> None:
    name = f"edge-agent-test-{os.getpid()}"
    sock = NotifySocket("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert notifier.watchdog_s is None  # WATCHDOG_PID names another process
        assert notifier.send(READY="1")
        assert sock.drain()[0][1] == {"READY": "1"}
    finally:
        sock.sock.close()
    off = Notifier({})
    assert not off.enabled and not off.send(READY="1")


def test_the_agent_is_ready_after_start_and_its_stuck_inference_stops_the_watchdog(
        notify, tmp_path: Path, short_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock, env = notify
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime = Runtime(validate_config({
        "cameras": [{"name": "front", "source": str(short_clip), "fps": 10}],
        "storage": {"path": str(tmp_path / "data")}, "web": {"listen": None},
    }))
    runtime.start()
    try:
        ready = [f for _, f in sock.drain() if f.get("READY") == "1"]
        assert ready and "cameras running" in ready[0]["STATUS"]
        wait_for(lambda: len(sock.with_key("WATCHDOG")) >= 3, what="watchdog pings from the agent")
        runtime.worker.heartbeat = time.monotonic() - 60  # as if the detector thread hung
        runtime.worker.stop()  # and it stays hung: its loop no longer refreshes the heartbeat
        runtime.worker.join(5)
        wait_for(lambda: runtime.supervision.withheld >= 3, what="pings withheld for the stuck pipeline")
        assert not runtime.health().ok
    finally:
        runtime.stop()


def test_logs_to_the_journal_are_one_line_each_with_their_priority(tmp_path: Path) -> None:
    script = ("import logging; from agent.cli.main import _setup_logging; _setup_logging(False); "
              "logging.getLogger('edge').error('disk full\\nsecond line'); logging.getLogger('edge').info('ok')")
    log_file = tmp_path / "journal.log"
    with log_file.open("w") as err:
        st = os.fstat(err.fileno())
        subprocess.run([sys.executable, "-c", script], stderr=err, check=True, timeout=60,
                       env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert log_file.read_text().splitlines() == ["<3>ERROR edge: disk full | second line", "<6>INFO edge: ok"]
    with (tmp_path / "plain.log").open("w") as err:  # not the journal: timestamps, no priorities
        subprocess.run([sys.executable, "-c", script], stderr=err, check=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    lines = (tmp_path / "plain.log").read_text().splitlines()
    assert lines[0].endswith("ERROR edge: disk full") and not lines[0].startswith("<")
