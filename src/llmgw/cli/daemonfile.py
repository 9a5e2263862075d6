"""``daemon.json`` in the llmgw home: which ``llmgw serve`` runs on this home, and where.

``serve`` writes it once it listens (pid, URL, start time, version) and removes it when it stops;
``doctor`` reads it to say whether a daemon is running here, and checks that the pid is alive and
the URL answers ``/healthz`` (a daemon killed with SIGKILL leaves the file behind: that is reported
as stale, never trusted). Written atomically (temp file + rename); holds no secret.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NAME = "daemon.json"


def path(home: Path) -> Path:
    return home / NAME


def write(home: Path, url: str, started_at: str) -> None:
    from .. import __version__

    target = path(home)
    tmp = target.with_name(f".{NAME}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": started_at, "version": __version__}))
    os.replace(tmp, target)


def read(home: Path) -> dict[str, Any] | None:
    """What the file says, or None when there is none (or it cannot be read as one)."""
    try:
        info = json.loads(path(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("url"), str):
        return None
    return info


def remove(home: Path) -> None:
    """Remove the file if this process wrote it (another daemon's is left alone)."""
    info = read(home)
    if info is not None and info["pid"] == os.getpid():
        try:
            path(home).unlink()
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
