"""What a camera's `source` string means, and how OpenCV opens it.

Accepted forms: a file path; `demo:N` (a generated demo clip, seed N); a V4L2
index or `/dev/videoN`; an `rtsp://`, `rtsps://`, `http://` or `https://` URL;
`gst:<pipeline ending in appsink>`; `csi:N` (Jetson CSI sensor N through
`nvarguscamerasrc`). RTSP with `hw_decode: jetson` goes through `nvv4l2decoder`.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2


class SourceKind(str, Enum):
    FILE = "file"
    DEMO = "demo"
    V4L2 = "v4l2"
    NETWORK = "network"
    GSTREAMER = "gstreamer"
    CSI = "csi"


class SourceError(Exception):
    """The source could not be opened or read now; the camera retries."""


class SourceUnsupported(SourceError):
    """The source can never open on this machine (e.g. no GStreamer); no retry."""


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    value: str | int

    @property
    def is_file(self) -> bool:
        return self.kind in (SourceKind.FILE, SourceKind.DEMO)


_NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")


def parse_source(raw: str | int) -> Source:
    """Classify a source; raises ValueError with a message for the config check."""
    if isinstance(raw, bool):
        raise ValueError("source must be a path, device, URL or pipeline, not a boolean")
    if isinstance(raw, int):
        if raw < 0:
            raise ValueError("a V4L2 device index must be 0 or more")
        return Source(SourceKind.V4L2, raw)
    text = raw.strip()
    if not text:
        raise ValueError("source must not be empty")
    if text.isdigit():
        return Source(SourceKind.V4L2, int(text))
    if re.fullmatch(r"/dev/video\d+", text):
        return Source(SourceKind.V4L2, text)
    if text.startswith("gst:"):
        pipeline = text[4:].strip()
        if "appsink" not in pipeline:
            raise ValueError("a GStreamer pipeline (gst:...) must end in an appsink")
        return Source(SourceKind.GSTREAMER, pipeline)
    if m := re.fullmatch(r"csi:(\d+)", text):
        return Source(SourceKind.CSI, int(m.group(1)))
    if m := re.fullmatch(r"demo:(\d+)", text):
        return Source(SourceKind.DEMO, int(m.group(1)))
    if m := re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text):
        if m.group(1).lower() not in _NETWORK_SCHEMES:
            raise ValueError(f"unsupported URL scheme '{m.group(1)}' (use rtsp, rtsps, http or https)")
        try:
            _ = urlsplit(text).port  # raises for a port out of range or not a number
        except ValueError:
            raise ValueError("the URL's port must be a number from 0 to 65535") from None
        return Source(SourceKind.NETWORK, text)
    if text.startswith(("csi:", "demo:")):
        raise ValueError(f"'{text}': expected csi:N or demo:N with N a number")
    return Source(SourceKind.FILE, text)


_SECRET_QUERY_KEYS = re.compile(r"(?i)(pass|pwd|token|key|secret|auth|sig)")


def redact_url(url: str) -> str:
    """The URL without its password or secret query values, for logs and status."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    if parts.query:
        query = "&".join(
            f"{k}=***" if _SECRET_QUERY_KEYS.search(k) else pair
            for pair in parts.query.split("&")
            for k in [pair.split("=", 1)[0]]
        )
        parts = parts._replace(query=query)
    return urlunsplit(parts)


def describe(source: Source) -> str:
    """A loggable description (credentials removed)."""
    if source.kind is SourceKind.NETWORK:
        return redact_url(str(source.value))
    if source.kind is SourceKind.GSTREAMER:
        pipeline = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", str(source.value))
        return "gst:" + re.sub(r"(?i)\b([\w-]*(?:pw|pass|pwd|token|secret|key)[\w-]*)=(\"[^\"]*\"|\S+)", r"\1=***",
                               pipeline)
    return f"{source.kind.value}:{source.value}"


def redact_source(raw: str | int) -> str | int:
    """A configured `source` value as it may be shown: same form, credentials removed."""
    source = parse_source(raw)
    if source.kind in (SourceKind.NETWORK, SourceKind.GSTREAMER):
        return describe(source)
    return raw


_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


def source_present(source: Source, timeout_s: float) -> bool | None:
    """A cheap look whether a source is there, without opening it: a network camera's port accepts a
    TCP connection, a device node or file exists. None where there is no such look (pipelines, CSI)."""
    if source.kind is SourceKind.NETWORK:
        parts = urlsplit(str(source.value))
        if not parts.hostname:
            return None
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            return True
        except OSError:
            return False
    if source.kind is SourceKind.V4L2:
        value = source.value
        return os.path.exists(value if isinstance(value, str) else f"/dev/video{value}")
    if source.kind is SourceKind.FILE:
        return Path(str(source.value)).expanduser().is_file()
    return None


@lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    """Whether this OpenCV build can run GStreamer pipelines."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def jetson_csi_pipeline(sensor_id: int, width: int, height: int, fps: float, flip: int = 0) -> str:
    """NVIDIA's documented CSI capture pipeline (Argus → NVMM → BGR appsink)."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={max(1, round(fps))}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def jetson_rtsp_pipeline(url: str, codec: str = "h264", latency_ms: int = 200, timeout_s: float = 10.0) -> str:
    """Hardware-decoded RTSP on Jetson (rtspsrc → nvv4l2decoder → BGR appsink).

    rtspsrc's tcp-timeout (µs) ends a dead TCP stream, so the camera reconnects.
    """
    if codec not in ("h264", "h265"):
        raise ValueError(f"codec must be h264 or h265, not {codec!r}")
    safe_url = url.replace("\\", "%5C").replace('"', "%22")  # nothing can end the quoted value early
    return (
        f'rtspsrc location="{safe_url}" latency={latency_ms} protocols=tcp tcp-timeout={int(timeout_s * 1e6)} ! '
        f"rtp{codec}depay ! {codec}parse ! nvv4l2decoder ! nvvidconv ! "
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def require_gstreamer(what: str) -> None:
    if not gstreamer_available():
        raise SourceUnsupported(
            f"{what} needs OpenCV built with GStreamer, and this OpenCV has none "
            "(on a Jetson, use the system OpenCV from JetPack: python3-opencv)"
        )
