"""``llmgw config``: check the configuration file; apply and export the customers, teams, keys and
budgets it declares (``governance/declare.py`` reads the file, ``governance/declare_apply.py`` applies and
exports; here only printing).

``apply`` prints one line per change on stdout (a new key's secret on its ``+ key`` line: the only
time it is shown) and diagnostics on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import ConfigOpt, HomeOpt, err, open_db, open_existing_db, print_json, resolve_home

app = typer.Typer(help="Inspect and check the configuration; apply and export declared customers, teams, keys "
                       "and budgets.", no_args_is_help=True)


@app.command()
def validate(config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Check the config file; print every problem as 'file: key: problem' and exit 2 if any.

    One pass reports everything 'llmgw serve' and 'llmgw config apply' would refuse: every section
    (the environment variables that [admin], [metrics] and [webhooks] name must be set), and the
    declared customers, teams, keys and budgets. References in those (a team's customer, a
    budget's key) are checked against the home's database when it exists, without writing to it;
    without one, as 'config apply' would see them in a new, empty home.
    """
    from .. import paths
    from ..errors import ConfigError
    from ..governance.declare import parse_file

    h = resolve_home(home)
    path = paths.find_config(config, h)
    if path is None:
        err("no config file found (--config, $LLMGW_CONFIG, LLMGW_HOME/llmgw.toml): built-in defaults apply")
        return
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    decl, problems = parse_file(path)
    from ..store.conn import PgStore

    url = cfgmod_store_url(path)
    problems += _against_database(decl, PgStore(url) if url else paths.db_path(h))
    for p in problems:
        sys.stdout.write(p + "\n")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s)")
    err(f"{path}: ok")


def cfgmod_store_url(path: Path) -> str | None:
    """The ``[store] url`` of the config file ``path`` (None: SQLite, or a [store] problem, which
    the full check reports)."""
    from .. import config as cfgmod
    from ..errors import ConfigError

    try:
        return cfgmod.load_store(path).url
    except ConfigError:
        return None


def _against_database(decl: Any, dbfile: Any) -> list[str]:
    """What ``config apply`` would refuse that only the database can tell (read only; an empty
    database when there is none yet); warnings go to stderr. ``dbfile``: the SQLite file or the
    PostgreSQL store."""
    import sqlite3

    from ..governance.declare_apply import plan
    from ..store import db
    from ..store.conn import PgStore, label

    try:
        if isinstance(dbfile, PgStore):
            conn = db.connect(dbfile, readonly=True)
            if not db.applied(conn):  # an empty store: as `config apply` would find it
                conn.close()
                conn = db.open_db(Path(":memory:"))
        else:
            conn = db.connect(dbfile, readonly=True) if dbfile.exists() else db.open_db(Path(":memory:"))
    except sqlite3.Error as e:
        err(f"{label(dbfile)}: cannot read the database ({e}): declarations not checked against it")
        return []
    try:
        result = plan(conn, decl)
    except sqlite3.Error as e:  # e.g. a database from an older llmgw, not migrated yet
        err(f"{label(dbfile)}: cannot read the database ({e}): declarations not checked against it")
        return []
    finally:
        conn.close()
    for w in result.warnings:
        err(w)
    return result.problems


@app.command()
def show(config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Print the effective providers, aliases and store (no secrets: key variables are shown by name,
    URLs without their password)."""
    from ..config import _redact_url
    from .common import load_config, print_json

    cfg = load_config(config, resolve_home(home))
    print_json({
        "path": str(cfg.path) if cfg.path else None,
        "providers": {n: {"type": p.type, "base_url": _redact_url(p.base_url), "key_env": [k.env for k in p.keys],
                          "enabled": p.enabled, "models": p.models} for n, p in cfg.providers.items()},
        "aliases": cfg.aliases,
        "store": {"url": _redact_url(cfg.store.url) if cfg.store.url else None, "url_env": cfg.store.url_env,
                  "kind": "postgresql" if cfg.store.url else "sqlite"},
    })




@app.command()
def apply(
    config: ConfigOpt = None,
    home: HomeOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing (no key "
                                                            "secret is made).")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON on stdout.")] = False,
) -> None:
    """Create and update the customers, teams, keys and budgets declared in the config file.

    Idempotent: prints one line per change ('+ customer acme_corp', '~ key vk: rpm 30 -> 60',
    '+ budget customer acme_corp month $200.00'), nothing when all is already as declared. A key
    created here gets a secret printed ONCE on its '+ key NAME: sk-llmgw-...' line; keep it.

    It never deletes: customers, teams, keys and budgets that are not in the file are left as they
    are (delete budgets with 'llmgw budget delete', revoke keys with 'llmgw keys revoke' or
    status = "revoked"). The ledger is never touched. Any problem in the file: every problem is
    listed, nothing is written, exit 2. Everything is applied in one transaction.
    """
    from .. import paths
    from ..errors import ConfigError
    from ..governance.declare import parse_file
    from ..governance.declare_apply import apply as apply_decl

    h = resolve_home(home)
    path = paths.find_config(config, h)
    if path is None:
        raise ConfigError("no config file found (--config, $LLMGW_CONFIG, LLMGW_HOME/llmgw.toml)")
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    decl, problems = parse_file(path)
    try:
        conn = open_db(h, config=path)
    except ConfigError:
        if not problems:
            raise
        # the file itself cannot be read (invalid TOML...): its problems are reported below, as for
        # any file, and nothing is written anywhere
        conn = open_db(h, local=True)
    try:
        result = apply_decl(conn, decl, dry_run=dry_run, problems_before=problems)
    finally:
        conn.close()
    for w in result.warnings:
        err(w)
    if json:
        print_json({"dry_run": dry_run, "changes": [c.as_json() for c in result.changes]})
    else:
        for change in result.changes:
            sys.stdout.write(change.line() + "\n")
    sys.stdout.flush()
    if not result.changes:
        err("no changes")
    elif dry_run:
        err(f"dry run: {len(result.changes)} change(s) not applied")
    elif any(c.secret for c in result.changes):
        err("the secrets above are shown only this once: store them now")


@app.command()
def export(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Print the customers, teams, keys and budgets in the database as llmgw.toml sections.

    Secrets and their hashes are never exported (revoked keys are left out). Applying the output to
    another home recreates the definitions, with new secrets for the keys; applying it to the same
    home changes nothing.
    """
    from ..governance.declare_apply import export as export_decl

    conn = open_existing_db(resolve_home(home), config=config)
    try:
        text, notes = export_decl(conn)
    finally:
        conn.close()
    sys.stdout.write(text)
    for note in notes:
        err(note)
