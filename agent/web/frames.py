"""Camera frames for the page: the newest frame with its detections drawn, as JPEG.

Encoding happens only when a client asks, and at most once per MIN_INTERVAL_S per camera however
many clients ask (the page polls; streams share the same encoded frame), so the page cannot slow
the pipeline down. The cache holds one JPEG per camera.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from agent.control.device_api import CameraView

MIN_INTERVAL_S = 0.5  # at most 2 encodes per camera per second
JPEG_QUALITY = 80
COLOURS = [(80, 200, 255), (120, 255, 120), (255, 160, 80), (200, 120, 255), (80, 255, 255), (255, 255, 80)]


def annotate(view: CameraView) -> np.ndarray:
    """A copy of the newest frame with boxes, labels and scores drawn."""
    assert view.frame is not None
    image = view.frame.image.copy()
    scale = max(1.0, image.shape[1] / 960)
    to_image = image.shape[1] / view.frame.size[0]  # boxes are in stream pixels; the frame may be smaller
    for det in view.detections:
        x1, y1, x2, y2 = (round(v * to_image) for v in det.box)
        colour = COLOURS[det.class_id % len(COLOURS)]
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, max(1, round(2 * scale)))
        text = f"{det.label} {det.score:.2f}"
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        top = max(0, y1 - h - base - 2)
        cv2.rectangle(image, (x1, top), (x1 + w + 4, top + h + base + 2), colour, -1)
        cv2.putText(image, text, (x1 + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return image


def placeholder(text: str, width: int = 640, height: int = 360) -> bytes:
    image = np.full((height, width, 3), 40, np.uint8)
    cv2.putText(image, text[:60], (20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (200, 200, 200), 2, cv2.LINE_AA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


class FrameCache:
    """One encoded JPEG per camera, renewed at most every MIN_INTERVAL_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, int, bytes]] = {}  # camera → (encoded at, frame number, jpeg)
        self._encode_lock = threading.Lock()
        self.encodes = 0

    def jpeg(self, camera: str, view: CameraView) -> bytes | None:
        """The newest frame as JPEG; None when the camera has not delivered one."""
        frame = view.frame
        if frame is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(camera)
            if cached is not None and (now - cached[0] < MIN_INTERVAL_S or cached[1] == frame.number):
                return cached[2]
        with self._encode_lock:  # clients arriving together: one encodes, the others take its result
            with self._lock:
                cached = self._cache.get(camera)
                if cached is not None and (now - cached[0] < MIN_INTERVAL_S or cached[1] == frame.number):
                    return cached[2]
            jpeg = cv2.imencode(".jpg", annotate(view), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
            with self._lock:
                self._cache[camera] = (now, frame.number, jpeg)
                self.encodes += 1
        return jpeg

    def keep_only(self, cameras: list[str]) -> None:
        """Forget cameras that are gone (the cache stays bounded by the cameras configured)."""
        with self._lock:
            for name in set(self._cache) - set(cameras):
                del self._cache[name]
