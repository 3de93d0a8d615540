"""Class names: from the model's metadata, a labels file, or `class_N`."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml


def parse_names(text: str) -> list[str] | None:
    """Names from a metadata string: Ultralytics' `{0: 'person', ...}`, JSON, or a list."""
    value: object
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            value = json.loads(text)
        except ValueError:
            return None
    return _names_from_value(value)


def _names_from_value(value: object) -> list[str] | None:
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            return None
        if [k for k, _ in items] != list(range(len(items))):
            return None
        return [v for _, v in items]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def read_labels_file(path: Path) -> list[str]:
    """One name per line, or a YAML file with `names:` (list or id→name map)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(text)
        names = _names_from_value(data.get("names") if isinstance(data, dict) else data)
        if names is None:
            raise ValueError(f"{path}: expected a `names:` list or map of class ids to names")
        return names
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolve_labels(metadata: dict[str, str], labels_file: Path | None) -> list[str]:
    """Labels file first (the user's explicit choice), then metadata; [] if neither names them."""
    if labels_file is not None:
        return read_labels_file(labels_file)
    if "names" in metadata:
        return parse_names(metadata["names"]) or []
    return []


def pad_labels(names: list[str], num_classes: int | None) -> list[str]:
    """`class_N` for every class the names do not cover."""
    if num_classes is not None and len(names) < num_classes:
        return names + [f"class_{i}" for i in range(len(names), num_classes)]
    return names
