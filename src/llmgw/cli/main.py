"""The ``llmgw`` Typer app and the single place that turns ``LlmgwError`` into an exit code.

Exit codes: 0 ok, 1 internal error, 2 bad usage or configuration (also a port in use or a home or
database that cannot be used), 3 authentication or permission, 4 not found (also no llmgw home at
--home for a command that does not create one), 5 upstream problem. An error about a field names it
as an option (``--period: ...``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..clock import Clock
from ..clock import install as install_clock
from .common import ConfigOpt, HomeOpt, err, flag, load_config, resolve_home, writing

app = typer.Typer(
    name="llmgw",
    help="llmgw: a self-hosted LLM gateway with virtual keys, budgets, caching and an exact cost ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"llmgw {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                          help="Print the llmgw version and exit.")] = False,
) -> None:
    """llmgw: a self-hosted LLM gateway with virtual keys, budgets, caching and an exact cost ledger."""


def _register() -> None:
    from . import config_cmd, customers_cmd, keys_cmd, report_cmd, tail_cmd, teams_cmd

    app.add_typer(config_cmd.app, name="config")
    app.add_typer(keys_cmd.app, name="keys")
    app.add_typer(customers_cmd.app, name="customers")
    app.add_typer(teams_cmd.app, name="teams")
    app.command("report")(report_cmd.report)
    app.command("tail")(tail_cmd.tail)

    from . import budget_cmd

    app.add_typer(budget_cmd.app, name="budget")

    from . import top_cmd

    app.command("top")(top_cmd.top)

    from . import doctor_cmd

    app.command("doctor")(doctor_cmd.doctor)

    from . import cache_cmd

    app.add_typer(cache_cmd.app, name="cache")

    from . import ledger_cmd

    app.add_typer(ledger_cmd.app, name="ledger")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on. Default: server.host (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0 = any free port). Default: server.port (8080).")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
    demo: Annotated[bool, typer.Option("--demo", help="Add the offline demo provider (demo/echo, demo/lorem, "
                                                        "demo/embed) and print a demo virtual key with a curl "
                                                        "example.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help=(
        "Run this many daemon processes sharing the port (SO_REUSEPORT) and the home, so one machine "
        "uses all its cores. Above 1 needs [cluster] redis_url (the workers share budgets, rate limits "
        "and Idempotency-Key claims through it)."))] = 1,
    worker: Annotated[int | None, typer.Option("--worker", hidden=True,
                                               help="Internal: this process is worker N of --workers.")] = None,
) -> None:
    """Run the gateway daemon (OpenAI- and Anthropic-compatible HTTP API)."""
    import logging

    from .. import paths
    from ..clock import now_ms
    from ..errors import ConfigError, UsageError
    from ..server.runner import run
    from ..units import iso_utc

    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: expected a port from 0 to 65535")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    h = resolve_home(home)
    cfg = load_config(config, h)
    if demo:
        cfg = cfg.with_demo()  # the demo models exist only when asked for or configured
    if demo and "demo" not in cfg.enabled_providers():
        raise ConfigError("--demo needs the demo provider, but the config disables it ([providers.demo] enabled = false)")
    import os

    os.umask(0o077)  # everything the daemon creates (database, WAL, cache index) is private to its user
    paths.ensure_home(h)  # a home that cannot be one fails here, as one line, before anything starts
    if workers > 1 and not cfg.cluster.redis_url:
        raise UsageError(f"--workers {workers}: the workers must share budgets, rate limits and Idempotency-Key "
                         "claims, so set [cluster] redis_url (a Redis every worker reaches); without it each "
                         "process would admit a full budget")
    if worker is not None:
        paths.set_worker(worker)
    secret = None
    if demo and worker is None:
        from ..governance.keys import mint

        with writing(h, config=config) as conn:
            secret, _ = mint(conn, name="demo", replace=True)

    from . import daemonfile

    def ready(bound_host: str, bound_port: int) -> None:
        url = f"http://{bound_host}:{bound_port}"
        if worker is not None:  # the supervisor tells the world
            err(f"llmgw listening on {url}  (worker {worker}, pid {os.getpid()})")
            sys.stderr.flush()
            return
        try:
            daemonfile.write(h, url, iso_utc(now_ms()))
        except OSError as e:
            err(f"llmgw: warning: could not write {daemonfile.path(h)} (doctor will not see this daemon): {e}")
        many = f", {workers} workers" if workers > 1 else ""
        err(f"llmgw listening on {url}  (home: {h}, config: {cfg.path or 'none, built-in defaults'}{many})")
        if secret:
            err("")
            err(f"demo key: {secret}")
            err("try it:")
            err(f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {secret}' \\")
            err("    -H 'content-type: application/json' "
                "-d '{\"model\":\"demo/echo\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'")
            err("")
        sys.stderr.flush()

    at_host, at_port = host or cfg.server.host, cfg.server.port if port is None else port
    if workers > 1:
        from ..server.workers import supervise, worker_argv

        try:
            code = supervise(worker_argv(cfg.path, h, demo), workers, at_host,
                             at_port, on_ready=ready, drain_timeout=cfg.server.drain_timeout)
        finally:
            daemonfile.remove(h)
        raise typer.Exit(code)
    try:
        run(cfg, h, host=at_host, port=at_port, on_ready=ready, clock=now_ms, worker=worker)
    finally:
        if worker is None:
            daemonfile.remove(h)


@app.command()
def init(
    home: HomeOpt = None,
    path: Annotated[Path | None, typer.Option("--path", help="Where to write. Default: LLMGW_HOME/llmgw.toml.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter llmgw.toml."""
    from .. import paths
    from ..config import STARTER_TOML
    from ..errors import UsageError

    target = path or paths.default_config_path(resolve_home(home))
    if target.exists() and not force:
        raise UsageError(f"{target} already exists (use --force to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(STARTER_TOML)
    err(f"wrote {target}")
    sys.stdout.write(f"{target}\n")


@app.command()
def version() -> None:
    """Print the llmgw version."""
    from .. import __version__

    sys.stdout.write(f"{__version__}\n")


_register()


def main(argv: list[str] | None = None, clock: Clock | None = None) -> None:
    """The console entry point. ``clock`` (epoch ms; default the wall clock) is the business time of
    every command: budget windows, report defaults, key expiry and rotation, ``top``, ``serve``."""
    from ..errors import LlmgwError

    install_clock(clock)
    try:
        app(args=argv, standalone_mode=False)
    except LlmgwError as e:
        err(f"llmgw: error: {e.about(flag)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click's usage errors: click's own classes, or the copy newer typer vendors
        import click

        exits: tuple[type[Exception], ...] = (click.exceptions.Exit, typer.Exit)
        aborts: tuple[type[Exception], ...] = (click.exceptions.Abort, typer.Abort)
        shown: tuple[type[Exception], ...] = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
        if isinstance(e, exits):
            sys.exit(getattr(e, "exit_code", 0))
        if isinstance(e, shown):
            show = getattr(e, "show", None)
            if callable(show):
                show()
            else:
                err(f"llmgw: error: {e}")
            sys.exit(2)
        if isinstance(e, aborts):
            sys.exit(130)
        raise
