"""A slow link between the agent and a real broker: a loopback TCP proxy that passes the agent's bytes
at a fixed rate (the broker's answers pass at once), as a 1 Mbit/s uplink does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowLink:
    def __init__(self, broker_port: int, bytes_per_s: float) -> None:
        self._broker_port = broker_port
        self._rate = bytes_per_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._broker_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self._rate), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        try:
            while chunk := src.recv(1024 if rate else 65536):
                dst.sendall(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)  # the link's pace: this is what is being simulated
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
