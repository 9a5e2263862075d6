"""Options and helpers shared by the command groups (kept import-light for a fast ``--help``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (database, index). Default: $LLMGW_HOME, else the XDG data dir.",
                 envvar="LLMGW_HOME", show_envvar=True),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file. Default: $LLMGW_CONFIG, else LLMGW_HOME/llmgw.toml if it exists.",
                 envvar="LLMGW_CONFIG", show_envvar=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


def resolve_home(home: Path | None) -> Path:
    from .. import paths

    return paths.home(home)


def load_config(config: Path | None, home: Path) -> Any:
    from .. import config as cfg
    from .. import paths

    path = paths.find_config(config, home)
    if path is not None and not path.exists():
        from ..errors import ConfigError

        raise ConfigError(f"{path}: config file not found")
    return cfg.load(path)


def store_target(home: Path, config: Path | None = None) -> Any:
    """Where this home's definitions and ledger are: the ``[store] url`` of its config file
    (``--config``, ``$LLMGW_CONFIG``, ``LLMGW_HOME/llmgw.toml``: only that section is read), else its
    SQLite file. ``ConfigError`` for an unreadable file or a bad ``[store]``."""
    from .. import config as cfg
    from .. import paths
    from ..store import db

    path = paths.find_config(config, home)
    if path is None:
        return paths.db_path(home)
    return db.target(cfg.load_store(path).url, home)


def _pg(home: Path, local: bool, config: Path | None = None) -> Any:
    """The PostgreSQL store of ``home`` (None: SQLite, or ``local``: the home's own file, for the cache)."""
    if local:
        return None
    from ..store.conn import PgStore

    t = store_target(home, config)
    return t if isinstance(t, PgStore) else None


def open_db(home: Path, *, local: bool = False, config: Path | None = None) -> Any:
    """The database of ``home`` for a command that creates things: the home directory and the
    database are made if missing (``ResourceError`` when they cannot be). With ``[store] url``:
    that PostgreSQL database, migrated (``local``: the home's SQLite file regardless, for the cache)."""
    from .. import paths
    from ..store import db

    pg = _pg(home, local, config)
    if pg is not None:
        return db.open_db(pg)
    paths.ensure_home(home)
    return db.open_db(paths.db_path(home))


def existing_db_path(home: Path) -> Path:
    """The database file of the llmgw home ``home``; ``NoHome`` (exit 4) when there is none there.

    For every command that reads, or changes what exists: a mistyped ``--home`` must say so, not
    create an empty home that looks as if everything is gone. Creates nothing."""
    from .. import paths
    from ..errors import NoHome

    path = paths.db_path(home)
    if path.is_file():
        return path
    if not home.exists():
        why = "no such directory"
    elif not home.is_dir():
        why = "it is a file, not a directory"
    else:
        why = f"no {paths.DB_NAME} in it"
    raise NoHome(f"no llmgw home at {home}: {why} (check --home / $LLMGW_HOME)")


def existing_target(home: Path, *, local: bool = False, config: Path | None = None) -> Any:
    """``existing_db_path``, or the PostgreSQL store when the config names one (no home file needed)."""
    pg = _pg(home, local, config)
    return pg if pg is not None else existing_db_path(home)


def open_existing_db(home: Path, *, local: bool = False, config: Path | None = None) -> Any:
    """The database of an existing home, migrated if it is older than this llmgw (``NoHome`` when
    there is none: nothing is created). With ``[store] url``: that PostgreSQL database, migrated."""
    from ..store import db

    return db.open_db(existing_target(home, local=local, config=config))


def open_readonly(home: Path, *, local: bool = False, config: Path | None = None) -> Any:
    """A ``mode=ro`` connection to the database of an existing home (never creates or migrates it;
    safe next to a running daemon). ``NoHome`` when there is none, ``ResourceError`` when the file
    is not a database. With ``[store] url``: a read-only PostgreSQL connection (``ResourceError``
    when the server cannot be reached)."""
    import sqlite3

    from ..store import db

    pg = _pg(home, local, config)
    if pg is not None:
        try:
            return db.connect(pg, readonly=True)
        except sqlite3.DatabaseError as e:
            raise db.unusable(pg, e) from e
    path = existing_db_path(home)
    try:
        conn = db.connect(path, readonly=True)
    except sqlite3.DatabaseError as e:
        raise db.unusable(path, e) from e
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # reads the header: fails here, not mid-report
    except sqlite3.DatabaseError as e:
        conn.close()
        raise db.unusable(path, e) from e
    return conn


@contextmanager
def writing(home: Path, *, existing: bool = False, local: bool = False, config: Path | None = None) -> Iterator[Any]:
    """The database of ``home`` for one write transaction: the command's governance calls commit
    together when the block ends, or not at all if it raises; closed afterwards. ``existing``: for
    commands that change what exists, the home must be there already (``NoHome``, nothing created)."""
    from ..store import db

    conn = (open_existing_db(home, local=local, config=config) if existing
            else open_db(home, local=local, config=config))
    try:
        with db.transaction(conn):
            yield conn
    finally:
        conn.close()


def flag(param: str) -> str:
    """A field as the command line names it: ``warn_at`` → ``--warn-at``."""
    return "--" + param.replace("_", "-")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
