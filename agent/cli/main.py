"""`edge-agent`: one parser assembled from the command groups, and the process's exit status."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent import __version__
from agent.cli import bench_commands, fleet_commands, ha_commands, model_commands, run_commands, store_commands

COMMAND_GROUPS = (run_commands, model_commands, store_commands, fleet_commands, bench_commands, ha_commands)


SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """systemd connects stderr to the journal and says so in $JOURNAL_STREAM ("device:inode")."""
    try:
        device, inode = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """One line per record with its syslog priority as `<N>`, which journald reads as the level (so
    `journalctl -p err` works); no time, the journal stamps every line itself."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")  # a traceback stays one journal entry
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run of every job


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="Camera analytics agent for edge devices.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`edge-agent store export | head`): how a pipe ends, not an error.
        # stdout goes to /dev/null so the flush at exit does not fail on the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
