"""SSE encoding for the client side, in both dialects."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def openai_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_raw(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def anthropic_event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


Event = tuple[bytes | None, bytes]  # (SSE event name, data)


def parse_event(block: bytes) -> Event | None:
    """One SSE event block (lines without the blank line ending it) as (event name, data)."""
    if block.startswith(b"data:") and b"\n" not in block:  # the common case: one data line
        return None, block[5:].lstrip(b" ")
    event: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # comments (":") and other fields are ignored
    if not data:
        return None
    return event, b"\n".join(data)


def split_events(region: bytes) -> list[Event]:
    """The events of a run of complete SSE event blocks (``\n`` line ends)."""
    return [ev for ev in map(parse_event, region.split(b"\n\n")) if ev is not None]


def anthropic_raw(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"
