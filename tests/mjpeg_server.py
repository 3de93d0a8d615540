"""A real MJPEG-over-HTTP camera on loopback whose stream the tests can stall and resume.

Serves `multipart/x-mixed-replace` JPEG frames from the demo scene generator,
like the HTTP streams of many IP cameras. `stall()` keeps connections open but
sends nothing (a dead stream); `resume()` serves frames again; `go_away()` and
`come_back()` unplug it and plug it in again on the same port.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from agent.demo.scene import SceneGenerator

BOUNDARY = "frameboundary"


class MjpegCamera:
    def __init__(self, fps: float = 15.0) -> None:
        self._period = 1.0 / fps
        self._serving = threading.Event()
        self._serving.set()
        self._closed = threading.Event()
        self.connections = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                scene = SceneGenerator(seed=camera.connections, width=320, height=240)
                try:
                    while not camera._closed.is_set():
                        if not camera._serving.is_set():  # stalled: hold the socket, send nothing
                            camera._closed.wait(0.05)
                            continue
                        jpeg = cv2.imencode(".jpg", scene.next_frame()[0])[1].tobytes()
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg + b"\r\n"
                        )
                        self.wfile.flush()
                        camera._closed.wait(camera._period)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._handler = Handler
        self._server = self._listen(0)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _listen(self, port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        server.daemon_threads = True
        return server

    def start(self) -> MjpegCamera:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def go_away(self) -> None:
        """Unplugged: open streams end and connections are refused, until come_back()."""
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def come_back(self) -> None:
        """Plugged in again, on the same address."""
        self._closed.clear()
        self._server = self._listen(self.port)
        self.start()

    def stall(self) -> None:
        self._serving.clear()

    def resume(self) -> None:
        self._serving.set()

    def close(self) -> None:
        self.go_away()
