"""``llmgw keys``: virtual keys (create, list, show, disable, enable, revoke, rotate).

Secrets are printed once on stdout by ``create`` and ``rotate`` and nothing else goes to stdout
there; confirmations go to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import HomeOpt, JsonOpt, err, open_existing_db, print_json, resolve_home, writing
from .tables import Column, FormatOpt, emit, pick_format

app = typer.Typer(help="Create, list and manage virtual keys.", no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(metavar="REF", help="The key's id (key_…) or name.")]


@app.command()
def create(
    home: HomeOpt = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Customer id the key belongs to.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Team id (the key's customer is the team's customer).")] = None,
    name: Annotated[str | None, typer.Option(help="A unique name for the key.")] = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Allowed models, comma-separated: exact names, aliases or globs (openai/*). "
                         "Default: every model.")] = None,
    budget: Annotated[str | None, typer.Option("--budget", metavar="USD",
                                               help="A hard spending cap on this key, in USD.")] = None,
    period: Annotated[str | None, typer.Option("--period", metavar="day|week|month|total",
                                               help="Budget period (calendar-aligned, UTC). Default: month.")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="Tokens per minute.")] = None,
    expires: Annotated[str | None, typer.Option("--expires", metavar="DATE",
                                                help="Expiry: YYYY-MM-DD (00:00 UTC) or an ISO datetime.")] = None,
    clamp: Annotated[bool, typer.Option("--clamp", help="When the budget cannot cover a request, lower its "
                                                        "max_tokens instead of rejecting it.")] = False,
    cache: Annotated[str | None, typer.Option("--cache", metavar="off|exact|semantic",
                                              help="Response cache mode for this key. Default: the config's.")] = None,
    cache_threshold: Annotated[float | None, typer.Option(
        "--cache-threshold", metavar="COSINE",
        help="Semantic cache threshold for this key's requests, in (0, 1]. Default: the config's "
             "(by namespace, by model, or [cache] threshold).")] = None,
) -> None:
    """Create a virtual key; prints the secret once on stdout (only its hash is stored)."""
    from ..governance.keys import mint
    from ..units import parse_usd

    model_list = models.split(",") if models is not None else None
    budget_nanos = parse_usd(budget, "budget") if budget is not None else None
    with writing(resolve_home(home)) as conn:
        secret, info = mint(conn, name=name, customer_id=customer, team_id=team, models=model_list,
                            expires_at=expires, rpm=rpm, tpm=tpm, clamp=clamp, cache_mode=cache,
                            budget_nanos=budget_nanos, budget_period=period, cache_threshold=cache_threshold)
    sys.stdout.write(secret + "\n")
    sys.stdout.flush()
    err(f"created key {info.id}" + (f" ({info.name})" if info.name else "")
        + " — the secret above is shown only this once")


@app.command("list")
def list_(
    home: HomeOpt = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's keys.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Only this team's keys.")] = None,
    fmt: FormatOpt = None,
    json: JsonOpt = False,
) -> None:
    """List virtual keys (secrets are never shown, only their last 4 characters)."""
    from ..governance.hierarchy import get_customer, get_team
    from ..governance.keys import list_keys

    form = pick_format(fmt, json)
    conn = open_existing_db(resolve_home(home))
    try:
        if customer is not None:
            get_customer(conn, customer)
        if team is not None:
            get_team(conn, team)
        rows = list_keys(conn, customer_id=customer, team_id=team)
    finally:
        conn.close()
    emit(LIST_COLUMNS, rows, form)


LIST_COLUMNS = [
    Column("id", lambda r: r["id"], keep=True),
    Column("name", lambda r: r["name"] or ""),
    Column("key", lambda r: r["display"], keep=True, drop=4),
    Column("status", lambda r: r["status"], keep=True),
    Column("customer", lambda r: r["customer_id"] or "", keep=True, drop=6, key="customer_id"),
    Column("team", lambda r: r["team_id"] or "", keep=True, drop=8, key="team_id"),
    Column("models", lambda r: ", ".join(r["models"]) or "*", lambda r: ",".join(r["models"]), drop=5),
    # the key's semantic-cache threshold (--cache-threshold); empty: the config's ([cache] threshold)
    Column("cache threshold", lambda r: "" if r["cache_threshold"] is None else f"{r['cache_threshold']:g}",
           lambda r: r["cache_threshold"], drop=10, right=True, key="cache_threshold"),
    Column("expires", lambda r: r["expires_at"] or "", keep=True, drop=7, key="expires_at"),
    Column("created", lambda r: r["created_at"], keep=True, drop=9, key="created_at"),
]


def _show_plain(key: dict[str, Any]) -> None:
    for k, v in key.items():
        if isinstance(v, list):
            v = ",".join(v) or "*"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        sys.stdout.write(f"{k}: {'' if v is None else v}\n")


@app.command()
def show(ref: RefArg, home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Show one key (never its secret)."""
    from ..governance.keys import get_key

    conn = open_existing_db(resolve_home(home))
    try:
        key = get_key(conn, ref)
    finally:
        conn.close()
    if json:
        print_json(key)
    else:
        _show_plain(key)


@app.command()
def disable(ref: RefArg, home: HomeOpt = None) -> None:
    """Disable a key: requests with it get 401 key_disabled until it is enabled again."""
    from ..governance.keys import set_status

    with writing(resolve_home(home), existing=True) as conn:
        key = set_status(conn, ref, "disabled")
    err(f"disabled key {key['id']}")


@app.command()
def enable(ref: RefArg, home: HomeOpt = None) -> None:
    """Enable a disabled key (a revoked key cannot be enabled)."""
    from ..governance.keys import set_status

    with writing(resolve_home(home), existing=True) as conn:
        key = set_status(conn, ref, "active")
    err(f"enabled key {key['id']}")


@app.command()
def revoke(ref: RefArg, home: HomeOpt = None) -> None:
    """Revoke a key for good (no confirmation asked; it cannot be enabled again)."""
    from ..governance.keys import revoke as revoke_key

    with writing(resolve_home(home), existing=True) as conn:
        key = revoke_key(conn, ref)
    err(f"revoked key {key['id']} at {key['revoked_at']}")


@app.command()
def rotate(
    ref: RefArg,
    home: HomeOpt = None,
    grace: Annotated[int, typer.Option("--grace", metavar="SECONDS",
                                       help="How long the old secret stays valid (0: invalid at once).")] = 86400,
) -> None:
    """Give a key a new secret, printed once on stdout; the old one stays valid for --grace seconds."""
    from ..governance.keys import rotate as rotate_key

    with writing(resolve_home(home), existing=True) as conn:
        secret, key = rotate_key(conn, ref, grace)
    sys.stdout.write(secret + "\n")
    sys.stdout.flush()
    err(f"rotated key {key['id']}: the old secret is accepted until {key['prev_valid_until']}")
