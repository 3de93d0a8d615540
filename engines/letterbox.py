"""Letterbox pre-processing into buffers allocated once.

A frame is scaled to fit the model input keeping its aspect ratio, centred on a
grey (114) canvas as Ultralytics does, then written as RGB float CHW in [0, 1]
straight into a slot of the batch tensor. Buffers are reused frame after frame
(DESIGN invariant 5); only a new frame size allocates, and those are capped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
MAX_CACHED_SIZES = 16  # distinct camera resolutions we keep resize buffers for


@dataclass(frozen=True)
class Letterbox:
    """How a frame was placed in the model input; undoes it for boxes."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original frame size
    height: int

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map x1,y1,x2,y2 boxes from model-input pixels to frame pixels (in place)."""
        xs, ys = boxes[:, 0::2], boxes[:, 1::2]  # basic slices are views: the clips write through
        xs -= self.pad_x
        ys -= self.pad_y
        boxes /= self.scale
        np.clip(xs, 0, self.width, out=xs)
        np.clip(ys, 0, self.height, out=ys)
        return boxes


def fit(width: int, height: int, input_w: int, input_h: int) -> tuple[Letterbox, int, int]:
    """Placement of a width×height frame in the input, and its resized size."""
    scale = min(input_w / width, input_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (input_w - new_w) / 2, (input_h - new_h) / 2
    return Letterbox(scale, pad_x, pad_y, width, height), new_w, new_h


class LetterboxWriter:
    """Writes letterboxed frames into a preallocated NCHW float32 batch tensor."""

    def __init__(self, batch: int, input_h: int, input_w: int) -> None:
        self.input_h, self.input_w = input_h, input_w
        self.tensor = np.zeros((batch, 3, input_h, input_w), np.float32)
        self._canvas = np.full((input_h, input_w, 3), PAD_VALUE, np.uint8)
        self._resized: dict[tuple[int, int], np.ndarray] = {}

    def _resize_buffer(self, new_w: int, new_h: int) -> np.ndarray:
        key = (new_w, new_h)
        buf = self._resized.get(key)
        if buf is None:
            if len(self._resized) >= MAX_CACHED_SIZES:
                self._resized.pop(next(iter(self._resized)))
            buf = self._resized[key] = np.empty((new_h, new_w, 3), np.uint8)
        return buf

    def write(self, slot: int, frame: np.ndarray, source_size: tuple[int, int] | None = None) -> Letterbox:
        """Letterbox a BGR uint8 frame into batch slot `slot`.

        `source_size`: the (width, height) the frame stands for when it was decoded smaller than its
        stream; the placement, and so the boxes mapped back, are in those pixels.
        """
        h, w = frame.shape[:2]
        source_w, source_h = source_size or (w, h)
        box, new_w, new_h = fit(source_w, source_h, self.input_w, self.input_h)
        x0, y0 = round(box.pad_x - 0.1), round(box.pad_y - 0.1)
        canvas = self._canvas
        if (new_w, new_h) == (self.input_w, self.input_h):
            resized = frame if (w, h) == (new_w, new_h) else cv2.resize(
                frame, (new_w, new_h), dst=self._resize_buffer(new_w, new_h), interpolation=cv2.INTER_LINEAR
            )
            canvas[...] = resized
        else:
            canvas.fill(PAD_VALUE)
            resized = cv2.resize(
                frame, (new_w, new_h), dst=self._resize_buffer(new_w, new_h), interpolation=cv2.INTER_LINEAR
            )
            canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
        # BGR HWC uint8 -> RGB CHW float32 in [0, 1], written in place.
        np.multiply(canvas[..., ::-1].transpose(2, 0, 1), np.float32(1 / 255), out=self.tensor[slot])
        return Letterbox(box.scale, float(x0), float(y0), source_w, source_h)
