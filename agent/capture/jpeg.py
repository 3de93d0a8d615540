"""A camera's newest frame as a JPEG no larger than asked: lower quality first, then smaller."""

from __future__ import annotations

import cv2
import numpy as np

QUALITIES = (85, 70, 55, 40)
MIN_WIDTH = 64


class SnapshotTooLarge(Exception):
    pass


def encode_capped(image: np.ndarray, max_bytes: int, quality: int = 85) -> tuple[bytes, float]:
    """JPEG bytes within `max_bytes`, and the scale applied to the image (1.0: full size)."""
    if max_bytes < 1024:
        raise SnapshotTooLarge(f"only {max_bytes} bytes left for the image under the broker's packet limit")
    scale = 1.0
    while True:
        scaled = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
            interpolation=cv2.INTER_AREA)
        for q in [quality, *(q for q in QUALITIES if q < quality)]:
            ok, buf = cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok and buf.size <= max_bytes:
                return buf.tobytes(), scale
        scale *= 0.75
        if image.shape[1] * scale < MIN_WIDTH:
            raise SnapshotTooLarge(f"cannot fit a JPEG of this frame in {max_bytes} bytes")
