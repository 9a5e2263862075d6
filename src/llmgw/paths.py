"""Every filesystem location llmgw uses.

``LLMGW_HOME`` (or ``--home``) overrides the base directory; otherwise the XDG data dir
(``$XDG_DATA_HOME/llmgw``, default ``~/.local/share/llmgw``). Nothing else in the code builds paths.

The home holds cached prompts and answers, the ledger and key hashes: llmgw creates it 0700 and its
files 0600 (``HOME_MODE``, ``FILE_MODE``; ``private_file``), whatever the umask. An existing home
keeps the mode its owner gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_NAME = "llmgw.db"
CACHE_INDEX_NAME = "cache.usearch"
SPOOL_NAME = "ledger-spool"
CONFIG_NAME = "llmgw.toml"
HOME_MODE = 0o700
FILE_MODE = 0o600


def home(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("LLMGW_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "llmgw"


def private_file(path: Path) -> None:
    """Create ``path`` empty with ``FILE_MODE`` if it does not exist (an existing file is left as it
    is): SQLite then gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


def db_path(home_dir: Path) -> Path:
    return home_dir / DB_NAME


_WORKER: int | None = None  # this process is worker N of ``serve --workers``


def set_worker(index: int) -> None:
    global _WORKER
    _WORKER = index


def cache_index_path(home_dir: Path) -> Path:
    """The usearch index of the semantic cache, next to the database (rebuilt from it if lost); one
    per worker of ``serve --workers`` (each keeps its own index over the shared entries table)."""
    if _WORKER is not None:
        return home_dir / CACHE_INDEX_NAME.replace(".usearch", f".w{_WORKER}.usearch")
    return home_dir / CACHE_INDEX_NAME


def default_config_path(home_dir: Path) -> Path:
    return home_dir / CONFIG_NAME


def spool_path(home_dir: Path) -> Path:
    """Where the ledger writer keeps rows PostgreSQL could not take yet (``[store] url`` only); one
    per worker of ``serve --workers`` (each worker's writer appends to and drains its own)."""
    return home_dir / (SPOOL_NAME if _WORKER is None else f"{SPOOL_NAME}.w{_WORKER}")


def orphan_spools(home_dir: Path) -> tuple[Path, ...]:
    """The spools ``serve --workers`` workers left in the home: drained by a single process at start."""
    return tuple(sorted(home_dir.glob(f"{SPOOL_NAME}.w*"))) if _WORKER is None else ()


def find_config(explicit: str | os.PathLike[str] | None, home_dir: Path) -> Path | None:
    """``--config``, then ``LLMGW_CONFIG``, then ``LLMGW_HOME/llmgw.toml`` if it exists."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LLMGW_CONFIG")
    if env:
        return Path(env).expanduser()
    candidate = default_config_path(home_dir)
    return candidate if candidate.exists() else None


def ensure_home(home_dir: Path) -> Path:
    """Create the home directory if it is missing. ``ResourceError`` naming it when it cannot be the
    home: a file is there (or where a parent should be), no permission, the disk full."""
    from .errors import ResourceError

    why = None
    try:
        home_dir.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
    except FileExistsError:
        why = "it is a file, not a directory"
    except NotADirectoryError:
        why = "a file is in the way of its path"
    except OSError as e:
        why = e.strerror or str(e)
    if why is None and not os.access(home_dir, os.W_OK | os.X_OK):
        why = "not writable"
    if why is not None:
        raise ResourceError(f"cannot use {home_dir} as the llmgw home: {why}")
    return home_dir
