"""edge-agent: camera analytics appliance (capture, detection, store, sync)."""

__version__ = "0.1.0"
