"""Key paths for validation errors ("cameras[0].fps"), shared by every schema the agent loads."""

from __future__ import annotations

TOP_LEVEL = "(top level)"


def key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or TOP_LEVEL
