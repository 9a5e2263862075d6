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


def open_db(home: Path) -> Any:
    from .. import paths
    from ..store import db

    paths.ensure_home(home)
    return db.open_db(paths.db_path(home))


@contextmanager
def writing(home: Path) -> Iterator[Any]:
    """The database of ``home`` for one write transaction: the command's governance calls commit
    together when the block ends, or not at all if it raises; closed afterwards."""
    from ..store import db

    conn = open_db(home)
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
