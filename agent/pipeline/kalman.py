"""Constant-velocity Kalman filter over boxes, for every track of a camera at once.

State per track: centre x, centre y, aspect ratio (w/h), height, and their velocities per second
(ByteTrack's xyah state). Time steps are real seconds, not frames: a motion-gated or
quality-reduced camera sees uneven gaps, and a velocity per frame would then be wrong. Noise
grows with the box height, so a large near object may jump further than a small far one
(the size-aware part of the gating).
"""

from __future__ import annotations

import numpy as np

NDIM = 4
POSITION_STD = 1 / 20  # of the box height: how far a measurement may be off
VELOCITY_STD = 1 / 160 * 10  # of the box height per second (ByteTrack's per-frame figure at 10 fps)


def xyah(box: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) rows to (cx, cy, w/h, h) rows."""
    box = np.atleast_2d(box).astype(np.float64)
    w = box[:, 2] - box[:, 0]
    h = np.maximum(box[:, 3] - box[:, 1], 1e-3)
    return np.stack([box[:, 0] + w / 2, box[:, 1] + h / 2, w / h, h], 1)


def corners(state: np.ndarray) -> np.ndarray:
    """(cx, cy, a, h, ...) rows back to (x1, y1, x2, y2) rows."""
    state = np.atleast_2d(state)
    h = np.maximum(state[:, 3], 1e-3)
    w = state[:, 2] * h
    return np.stack([state[:, 0] - w / 2, state[:, 1] - h / 2, state[:, 0] + w / 2, state[:, 1] + h / 2], 1)


_HEIGHT_SHARE = np.array([1.0, 1.0, 0.0, 1.0])  # cx, cy and h scale with the height; the aspect ratio does not
_ASPECT = np.array([0.0, 0.0, 1e-2 / POSITION_STD, 0.0])


def _noise(h: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Diagonal covariance rows (n, 4) scaled by each box height: position-like for cx, cy, h; tiny for a."""
    s = (h[:, None] * _HEIGHT_SHARE + _ASPECT) * np.asarray(scale).reshape(-1, 1)
    return s * s


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A new track from one measured (cx, cy, a, h): zero velocity, wide velocity uncertainty."""
    mean = np.concatenate([measurement, np.zeros(NDIM)])
    h = np.array([measurement[3]])
    pos = _noise(h, np.array([2 * POSITION_STD]))[0]
    vel = _noise(h, np.array([10 * VELOCITY_STD]))[0]
    return mean, np.diag(np.concatenate([pos, vel]))


def predict(means: np.ndarray, covs: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every track `dt` seconds on (one dt per track); returns new arrays.

    F P F^T for F = I + dt * (position += velocity), done as two slice updates instead of two
    8x8 products: rows first (F P), then columns ((F P) F^T)."""
    if len(means) == 0:
        return means, covs
    step = dt[:, None]
    means = means.copy()
    means[:, :NDIM] += means[:, NDIM:] * step
    covs = covs.copy()
    covs[:, :NDIM, :] += covs[:, NDIM:, :] * step[:, :, None]
    covs[:, :, :NDIM] += covs[:, :, NDIM:] * step[:, None, :]
    h = means[:, 3]
    scale = np.sqrt(np.maximum(dt, 1e-3) / 0.1)  # process noise grows with the time step (a random walk)
    idx = np.arange(2 * NDIM)
    covs[:, idx, idx] += np.concatenate([_noise(h, POSITION_STD * scale), _noise(h, VELOCITY_STD * scale)], 1)
    return means, covs


def update(means: np.ndarray, covs: np.ndarray, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tracks (n, 8) / (n, 8, 8) corrected by one measured (cx, cy, a, h) each (n, 4), all at once."""
    if len(means) == 0:
        return means, covs
    r = np.zeros((len(means), NDIM, NDIM))
    idx = np.arange(NDIM)
    r[:, idx, idx] = _noise(means[:, 3], np.full(len(means), POSITION_STD))
    projected_cov = covs[:, :NDIM, :NDIM] + r
    gain = np.linalg.solve(projected_cov, covs[:, :NDIM, :]).transpose(0, 2, 1)  # cov H^T S^-1 (S symmetric)
    innovation = measurements - means[:, :NDIM]
    means = means + np.einsum("nij,nj->ni", gain, innovation)
    covs = covs - gain @ projected_cov @ gain.transpose(0, 2, 1)
    return means, covs
