"""`edge-agent store stats|export`: read the local store, also while the agent writes to it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.common import data_dir


def cmd_store_stats(args: argparse.Namespace) -> int:
    from agent.store import store

    try:
        result = store.stats(data_dir(args))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_store_export(args: argparse.Namespace) -> int:
    from agent.store import store

    try:
        for row in store.export_detections(data_dir(args)):
            sys.stdout.write(json.dumps(row) + "\n")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_store_requeue(args: argparse.Namespace) -> int:
    from agent.store.outbox import requeue_dead_letters
    from agent.store.store import DB_NAME

    path = data_dir(args) / DB_NAME
    if not path.is_file():
        print(f"error: no store at {path}", file=sys.stderr)
        return 1
    count = requeue_dead_letters(path)
    print(f"requeued {count} dead letters (a running agent sends them once nothing else is in flight)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("store", help="inspect the local store")
    store_sub = s.add_subparsers(dest="store_command", required=True)
    for name, func, help_text in (("stats", cmd_store_stats, "counts and sizes"),
                                  ("export", cmd_store_export, "JSON lines, one per row"),
                                  ("requeue", cmd_store_requeue, "dead letters back to pending, to be sent")):
        t = store_sub.add_parser(name, help=help_text)
        t.add_argument("--data-dir")
        t.add_argument("--config", type=Path)
        if name == "stats":
            t.add_argument("--json", action="store_true")
        elif name == "export":
            t.add_argument("--kind", choices=["detections"], default="detections")
        t.set_defaults(func=func)
