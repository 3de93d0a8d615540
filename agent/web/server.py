"""The agent's own HTTP server: the health page, its JSON API, frames, streams and metrics.

stdlib `ThreadingHTTPServer`, because the agent is threaded and must not depend on an event loop;
but its thread per connection is bounded here (MAX_CONNECTIONS; more are answered 503 at once), every
socket has a timeout, and no request does work on the pipeline's hot path: status is a snapshot,
frames are encoded on demand at most twice a second per camera (agent.web.frames). Requests only
read; nothing changes the device through GET.

Auth: with `web.token_file`, every path but /healthz needs `Authorization: Bearer <token>` or the
`token` cookie that visiting `/?token=<token>` once sets.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import queue
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config import WebConfig
from agent.web.frames import FrameCache, placeholder
from agent.web.metrics import registry_for
from agent.web.view import AgentView

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16  # threads serving at once (streams included)
STREAM_CLIENTS_PER_CAMERA = 2
STREAM_CLIENTS = 6  # in all: the other slots stay free for the page, the API and /healthz
STREAM_INTERVAL_S = 0.5  # ≤ 2 fps per stream
SOCKET_TIMEOUT_S = 5.0
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
CAMERA_PATH = re.compile(r"^/api/cameras/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(latest\.jpg|stream\.mjpeg)$")
BOUNDARY = "edgeagentframe"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class WebError(Exception):
    """The server cannot start (address in use, token file unreadable): the agent runs without it."""


class _Server(ThreadingHTTPServer):
    """Connections are served by daemon worker threads, started as needed and then reused (a thread per
    connection would also grow the process's malloc arenas), at most MAX_CONNECTIONS at once; more are
    answered 503 at once. One request per connection (HTTP/1.0 style): an idle browser tab holds no slot."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], web: WebServer) -> None:
        self.web = web
        self.rejected = 0
        self._work: queue.Queue[tuple[Any, Any] | None] = queue.Queue(maxsize=MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._workers: list[threading.Thread] = []  # server_close() may run inside a failed bind
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self._idle = 0  # workers waiting for a connection; a new one starts only when none is

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            busy = len(self._workers) - self._idle
            if busy + self._work.qsize() >= MAX_CONNECTIONS:  # bounded: never a thread per flood connection
                self.rejected += 1
                with contextlib.suppress(OSError):
                    request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                self.shutdown_request(request)
                return
            if self._idle <= self._work.qsize() and len(self._workers) < MAX_CONNECTIONS:
                worker = threading.Thread(target=self._worker, name=f"web-{len(self._workers)}", daemon=True)
                self._workers.append(worker)
                worker.start()
            self._work.put_nowait((request, client_address))

    def _worker(self) -> None:
        while True:
            with self._open_lock:
                self._idle += 1
            item = self._work.get()
            with self._open_lock:
                self._idle -= 1
            if item is None:
                return
            request, client_address = item
            with self._open_lock:
                self._open.add(request)
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                with self._open_lock:
                    self._open.discard(request)
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("web: connection from %s ended with an error", client_address, exc_info=True)

    def server_close(self) -> None:
        """Stop listening, end the connections still open (a stream, a slow client), end the workers."""
        super().server_close()
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._work.put_nowait(None)


class WebServer:
    """Started and stopped by the runtime like every other part."""

    def __init__(self, config: WebConfig, view: AgentView) -> None:
        self.config = config
        self.view = view
        self.frames = FrameCache()
        self.registry = registry_for(view.status)
        self.error: str | None = None
        self.requests = 0
        self.url: str | None = None
        self._token: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[str, int] = {}
        self._streams_lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        """Listen; raises WebError with a clear reason (the agent runs on without the page)."""
        try:
            self._token = self.config.read_token()
        except (OSError, ValueError) as exc:
            self.error = f"cannot read web.token_file: {getattr(exc, 'strerror', None) or exc}"
            raise WebError(self.error) from exc
        host, port = self.config.address
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            reason = "the port is in use (another agent or program?)" if exc.errno == errno.EADDRINUSE \
                else exc.strerror or str(exc)
            self.error = f"cannot listen on {self.config.listen}: {reason}"
            raise WebError(self.error) from exc
        bound_port = self._server.server_address[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "error": self.error, "requests": self.requests,
                "rejected": self._server.rejected if self._server else 0, "frame_encodes": self.frames.encodes}

    # -- auth -----------------------------------------------------------------------
    def authorized(self, handler: _Handler) -> bool:
        if self._token is None:
            return True
        header = handler.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.token_matches(header[7:].strip()):
            return True
        cookie = _cookie(handler.headers.get("Cookie", ""), "token")
        return cookie is not None and self.token_matches(cookie)

    def token_matches(self, candidate: str) -> bool:
        """Constant time, on bytes (compare_digest refuses non-ASCII str: that must be a 401, not a 500)."""
        return self._token is not None and hmac.compare_digest(candidate.encode("utf-8", "replace"),
                                                               self._token.encode())

    def host_allowed(self, host: str) -> bool:
        """Without a token on a loopback address, only requests naming the loopback itself: a web page
        elsewhere cannot read the device's status and frames by pointing its own name at 127.0.0.1
        (DNS rebinding). On other addresses without a token everything is open, as documented."""
        listen_host = self.config.address[0]
        if self._token is not None or listen_host not in LOOPBACK:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in LOOPBACK

    # -- streams --------------------------------------------------------------------
    def open_stream(self, camera: str) -> bool:
        with self._streams_lock:
            if self._streams.get(camera, 0) >= STREAM_CLIENTS_PER_CAMERA or \
                    sum(self._streams.values()) >= STREAM_CLIENTS:
                return False
            self._streams[camera] = self._streams.get(camera, 0) + 1
            return True

    def close_stream(self, camera: str) -> None:
        with self._streams_lock:
            self._streams[camera] -= 1
            if not self._streams[camera]:
                del self._streams[camera]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive holding a slot
    timeout = SOCKET_TIMEOUT_S  # a slow or stuck client cannot hold a thread
    server_version = "edge-agent"

    def log_message(self, format: str, *args: Any) -> None:
        line = format % args
        log.debug("web: %s %s", self.address_string(), re.sub(r"token=[^ &]*", "token=<redacted>", line))

    def do_GET(self) -> None:
        self._headers_sent = False
        web = self.server.web
        web.requests += 1
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        try:
            if not web.host_allowed(self.headers.get("Host", "")):
                return self._json(HTTPStatus.FORBIDDEN, {"error": "this server answers to its loopback name only"})
            if path == "/healthz":
                return self._health(ready=False)
            query = parse_qs(parts.query)
            if path == "/" and "token" in query and web.token_matches(query["token"][0]):
                return self._set_cookie(query["token"][0])
            if not web.authorized(self):
                return self._send(HTTPStatus.UNAUTHORIZED, b'{"error": "token required"}', "application/json",
                                  {"WWW-Authenticate": "Bearer"})
            if path == "/readyz":
                return self._health(ready=True)
            if path == "/api/status":
                return self._json(HTTPStatus.OK, web.view.status())
            if path == "/metrics":
                return self._send(HTTPStatus.OK, generate_latest(web.registry), CONTENT_TYPE_LATEST)
            if path in STATIC:
                name, kind = STATIC[path]
                return self._send(HTTPStatus.OK, resources.files("agent.web").joinpath("static", name).read_bytes(),
                                  kind)
            match = CAMERA_PATH.match(path)
            if match:
                return self._camera(match.group(1), match.group(2))
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {path[:200]}"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return None
        except Exception:  # a bug in one request must not take the server down
            log.exception("web: %s failed", path[:200])
            if not self._headers_sent:
                with contextlib.suppress(OSError):
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the agent's log)"})
            return None

    def do_POST(self) -> None:
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read only: commands go over MQTT"}, {"Allow": "GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    # -- endpoints ------------------------------------------------------------------
    def _health(self, ready: bool) -> None:
        health = self.server.web.view.health()
        good = health.ready if ready else health.ok
        body = {"ok": health.ok, "ready": health.ready, "reasons": health.reasons}
        self._json(HTTPStatus.OK if good else HTTPStatus.SERVICE_UNAVAILABLE, body)

    def _camera(self, name: str, what: str) -> None:
        web = self.server.web
        if name not in web.view.camera_names():
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no camera named {name}"})
        if what == "latest.jpg":
            jpeg = self._jpeg(name)
            if jpeg is None:
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, placeholder(f"{name}: no frame yet"), "image/jpeg",
                                  {"Cache-Control": "no-store"})
            return self._send(HTTPStatus.OK, jpeg, "image/jpeg", {"Cache-Control": "no-store"})
        if not web.open_stream(name):
            return self._json(HTTPStatus.TOO_MANY_REQUESTS,
                              {"error": f"at most 2 streams per camera; {name} has them"})
        try:
            self._stream(name)
        finally:
            web.close_stream(name)

    def _jpeg(self, name: str) -> bytes | None:
        web = self.server.web
        web.frames.keep_only(web.view.camera_names())
        view = web.view.camera_view(name)
        return None if view is None else web.frames.jpeg(name, view)

    def _stream(self, name: str) -> None:
        web = self.server.web
        self._headers_sent = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        while not web._stopping.is_set() and name in web.view.camera_names():  # a removed camera ends it
            started = time.monotonic()
            jpeg = self._jpeg(name) or placeholder(f"{name}: no frame yet")
            self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                             .encode() + jpeg + b"\r\n")
            self.wfile.flush()
            web._stopping.wait(max(0.0, STREAM_INTERVAL_S - (time.monotonic() - started)))

    # -- responses ------------------------------------------------------------------
    def _set_cookie(self, token: str) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Set-Cookie", f"token={token}; Path=/; HttpOnly; SameSite=Strict")
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body, default=str).encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None
