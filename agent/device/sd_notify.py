"""systemd's notify protocol: READY, WATCHDOG, STATUS and STOPPING, one datagram each to $NOTIFY_SOCKET.

The protocol is a datagram of newline-separated `KEY=value` lines to the AF_UNIX socket named in
$NOTIFY_SOCKET (a leading `@` is Linux's abstract namespace). The watchdog wants `WATCHDOG=1` more
often than `$WATCHDOG_USEC`; we send it at half that, and only while the agent says it is alive
(the inference loop turns), so a stuck detector thread is killed and restarted by systemd instead
of being kept alive by a healthy timer thread. Outside systemd (no $NOTIFY_SOCKET) all of it is off.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0  # without a watchdog, how often STATUS= is refreshed


class Notifier:
    """Sends notify datagrams; a no-op when the service manager did not ask for them."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())  # the watchdog may be meant for another process
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """One datagram, e.g. send(READY="1", STATUS="..."); False when off or not delivered."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value.replace(chr(10), ' ')}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            self.errors += 1
            if self.errors <= 3:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True


class Supervision:
    """READY once started, WATCHDOG while alive, STATUS with a one-line summary, STOPPING at the end."""

    def __init__(self, alive: Callable[[], bool], summary: Callable[[], str], notifier: Notifier | None = None):
        self.notifier = notifier or Notifier()
        self._alive = alive
        self._summary = summary
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watchdog_pings = 0
        self.withheld = 0  # pings not sent because the agent was not alive

    def ready(self) -> None:
        """The parts are started: tell systemd, and keep it informed from now on."""
        if not self.notifier.enabled:
            return
        self.notifier.send(READY="1", STATUS=self._safe_summary())
        self._thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)
        self._thread.start()

    def stopping(self) -> None:
        self._stop.set()
        if self.notifier.enabled:
            self.notifier.send(STOPPING="1", STATUS="stopping")

    def _run(self) -> None:
        period = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else STATUS_EVERY_S
        while not self._stop.wait(period):
            fields = {"STATUS": self._safe_summary()}
            if self.notifier.watchdog_s:
                if self._safe_alive():
                    fields["WATCHDOG"] = "1"
                    self.watchdog_pings += 1
                else:
                    self.withheld += 1
                    if self.withheld == 1:
                        log.error("not alive: withholding the watchdog ping, systemd will restart the agent")
            self.notifier.send(**fields)

    def _safe_alive(self) -> bool:
        try:
            return self._alive()
        except Exception:  # a failing check is not proof of life
            log.exception("liveness check failed")
            return False

    def _safe_summary(self) -> str:
        try:
            return self._summary()
        except Exception as exc:
            return f"status unavailable: {exc}"
