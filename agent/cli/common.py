"""What every command group needs: the config or a clear exit, and the data dir it names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import AgentConfig, ConfigError, load_config


def config_or_exit(path: Path | None) -> AgentConfig:
    """The validated config, or every problem with its key path on stderr and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid config {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def data_dir(args: argparse.Namespace) -> Path:
    """--data-dir when given, else the config's storage.path."""
    if getattr(args, "data_dir", None):
        return Path(args.data_dir).expanduser()
    return config_or_exit(getattr(args, "config", None)).storage.path.expanduser()
