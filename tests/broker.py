"""A real Mosquitto broker per test, on a free loopback port, that tests can stop and restart."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """Persistence on, so a graceful restart keeps retained messages and subscriber sessions."""

    def __init__(self, workdir: Path, extra_conf: str = "", plain_listener: bool = True) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.skip("mosquitto is not installed (.ci/run installs it)")
        self.exe = exe
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            # run as ourselves: as root, mosquitto would switch to a user that cannot write our temp dir
            f"user {getpass.getuser()}\npersistence true\n"
            + (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n" if plain_listener else "") +
            f"persistence_location {self.dir}/\nautosave_interval 1\nmax_queued_messages 1000000\n"
            "set_tcp_nodelay true\n"  # as provisioning/ recommends: small messages leave at once
            f"log_dest file {self.dir}/mosquitto.log\nlog_type all\n{extra_conf}"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.log()}") from None
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker would not act on SIGTERM
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged (a link that stalls)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""
