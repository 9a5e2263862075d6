"""How TOML values and keys are shown in error messages (``file: dotted.key: problem``).

Shared by every module that reports problems in a TOML file: config, pricing, declarations.
"""

from __future__ import annotations

import re

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def show(value: object) -> str:
    """A value as the user wrote it in TOML (strings quoted), or its kind for tables and arrays."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def dotted(*parts: str | int) -> str:
    """``providers.openai.keys[1].env``: keys joined with dots (quoted when not bare), indexes in brackets."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if BARE_KEY.match(part) else show(part)
            out = f"{out}.{text}" if out else text
    return out
