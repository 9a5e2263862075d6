"""``llmgw tail``: the ledger as it grows, one line per request (read-only; safe next to the daemon).

New rows are found by ledger id, polling every 0.5 s with short read transactions: in WAL mode a
reader never blocks the daemon's writer, nor the writer the reader.

On a terminal each request is one line that fits its width (``$COLUMNS`` or the terminal's), under
a header: fields are left out by priority (the request id first, then cache, tokens, latency, key,
customer, error), the cost is never cut (exact, every decimal it needs) and the model is shortened
last. Piped or redirected, each line has every field (``reports.tail_line``), whatever the width.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import HomeOpt

POLL_SECONDS = 0.5
BATCH = 1000

# (field, header, width, right-aligned); the display order
_FIELDS: list[tuple[str, str, int, bool]] = [
    ("time", "time (UTC)", 14, False), ("request", "request", 20, False), ("customer", "customer", 12, False),
    ("key", "key", 14, False), ("model", "model", 20, False), ("status", "st", 3, True),
    ("tokens", "in/out", 11, True), ("cost", "cost", 13, True), ("cache", "cache", 6, False),
    ("latency", "latency", 7, True), ("error", "error", 14, False),
]
#: left out first when the line would not fit
_DROP_ORDER = ["request", "cache", "tokens", "latency", "key", "customer", "error"]
_MIN_MODEL = 10


def fit_fields(width: int) -> list[tuple[str, str, int, bool]]:
    """The fields a line of ``width`` columns shows, and their widths (the model shrinks last)."""
    fields = list(_FIELDS)

    def total(fs: list[tuple[str, str, int, bool]]) -> int:
        return sum(f[2] for f in fs) + 2 * (len(fs) - 1)

    for name in _DROP_ORDER:
        if total(fields) - (20 - 14) <= width:  # a model name shortened to 14 cells makes it fit
            break
        fields = [f for f in fields if f[0] != name]
    over = total(fields) - width
    if over > 0:
        fields = [(n, h, max(_MIN_MODEL, w - over), r) if n == "model" else (n, h, w, r) for n, h, w, r in fields]
    else:  # room to spare: a longer error, then a longer model name
        for name, most in (("error", 28), ("model", 32)):
            spare = width - total(fields)
            fields = [(n, h, min(most, w + spare), r) if n == name else (n, h, w, r) for n, h, w, r in fields]
    return fields


def fitted_line(r: dict[str, Any], fields: list[tuple[str, str, int, bool]]) -> str:
    """One ledger row in ``fields`` (``fit_fields``); a cost wider than its field is printed whole."""
    from ..tui.fmt import error_label  # plain text helpers, no Textual
    from ..units import iso_utc, usd

    values = {
        "time": iso_utc(int(r["ts_ms"]))[5:19].replace("T", " "),
        "request": r["request_id"], "customer": r["customer_id"] or "-",
        "key": r["key_name"] or r["key_id"] or "-", "model": r["model"] or "-", "status": str(r["status"]),
        "tokens": f"{r['prompt_tokens']}/{r['completion_tokens']}", "cost": usd(int(r["cost_nanos"])),
        "cache": r["cache"] or "-",
        "latency": f"{r['latency_ms']:.0f}ms" if r["latency_ms"] is not None else "-",
        "error": error_label(str(r["error_code"] or r["error_type"])) if r["error_code"] or r["error_type"] else "",
    }
    out = []
    for name, _, w, right_aligned in fields:
        v = values[name]
        if len(v) > w and name not in ("cost", "request"):  # money and ids are never cut
            v = v[: w - 1] + "…"
        out.append(v.rjust(w) if right_aligned else v.ljust(w))
    return "  ".join(out).rstrip()


def header(fields: list[tuple[str, str, int, bool]]) -> str:
    return "  ".join(h.rjust(w) if r else h.ljust(w) for _, h, w, r in fields).rstrip()


def tail(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's requests (customer id).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key's requests (key id or name).")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep printing new requests as they are recorded.")] = True,
    last: Annotated[int, typer.Option("--last", "-n", min=0, help="Print the last N requests first.")] = 20,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line (JSONL) instead of text.")] = False,
    home: HomeOpt = None,
) -> None:
    """Print the latest requests, then each new one as it lands: time (UTC), request id, customer, key,
    model, status, tokens in/out, cost, cache, latency. Ctrl-C stops."""
    import time

    from .. import reports
    from .common import open_readonly, resolve_home
    from .tables import terminal_width

    conn = open_readonly(resolve_home(home))
    out = sys.stdout
    width = terminal_width(out) if not json and out.isatty() else None
    fields = fit_fields(width) if width is not None else None
    if fields is not None:
        out.write(header(fields) + "\n")

    def emit(rows: list[dict[str, Any]]) -> None:
        if json:
            import json as jsonlib

            out.write("".join(jsonlib.dumps(reports.tail_json(r)) + "\n" for r in rows))
        elif fields is not None:
            out.write("".join(fitted_line(r, fields) + "\n" for r in rows))
        else:
            out.write("".join(reports.tail_line(r) + "\n" for r in rows))
        out.flush()

    try:
        if customer is not None:
            reports.check_customer(conn, customer)
        key_id = reports.resolve_key(conn, key) if key is not None else None
        cursor = reports.last_id(conn)
        if last:
            emit(reports.tail_rows(conn, upto_id=cursor, last=last, customer=customer, key_id=key_id))
        while follow:
            time.sleep(POLL_SECONDS)
            # everything up to ``high`` is committed (one writer, ids only grow): read exactly that
            # range, so a row the filter skips is never re-scanned and a row committed meanwhile is
            # never missed
            high = reports.last_id(conn)
            while cursor < high:
                rows = reports.tail_rows(conn, after_id=cursor, upto_id=high, customer=customer, key_id=key_id,
                                         limit=BATCH)
                emit(rows)
                cursor = int(rows[-1]["id"]) if len(rows) == BATCH else high
    except KeyboardInterrupt:
        pass  # Ctrl-C: a normal way to stop following
    except BrokenPipeError:  # `llmgw tail | head`: the reader left; exit quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        conn.close()
