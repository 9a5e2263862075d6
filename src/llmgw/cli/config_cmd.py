"""``llmgw config``: check the configuration file."""

from __future__ import annotations

import sys

import typer

from .common import ConfigOpt, HomeOpt, err, resolve_home

app = typer.Typer(help="Inspect and check the configuration.", no_args_is_help=True)


@app.command()
def validate(config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Check the config file; print every problem as 'file: key: problem' and exit 2 if any."""
    from .. import paths
    from ..config import validate_file
    from ..errors import ConfigError

    path = paths.find_config(config, resolve_home(home))
    if path is None:
        err("no config file found (--config, $LLMGW_CONFIG, LLMGW_HOME/llmgw.toml): built-in defaults apply")
        return
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    problems = validate_file(path)
    for p in problems:
        sys.stdout.write(p + "\n")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s)")
    err(f"{path}: ok")


@app.command()
def show(config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Print the effective providers and aliases (no secrets: key variables are shown by name)."""
    from ..config import _redact_url
    from .common import load_config, print_json

    cfg = load_config(config, resolve_home(home))
    print_json({
        "path": str(cfg.path) if cfg.path else None,
        "providers": {n: {"type": p.type, "base_url": _redact_url(p.base_url), "key_env": [k.env for k in p.keys],
                          "enabled": p.enabled, "models": p.models} for n, p in cfg.providers.items()},
        "aliases": cfg.aliases,
    })


