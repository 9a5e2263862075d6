"""``llmgw tail``: the ledger as it grows, one line per request (read-only; safe next to the daemon).

New rows are found by ledger id, polling every 0.5 s with short read transactions: in WAL mode a
reader never blocks the daemon's writer, nor the writer the reader.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import HomeOpt

POLL_SECONDS = 0.5
BATCH = 1000


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

    conn = open_readonly(resolve_home(home))
    out = sys.stdout

    def emit(rows: list[dict[str, Any]]) -> None:
        if json:
            import json as jsonlib

            out.write("".join(jsonlib.dumps(reports.tail_json(r)) + "\n" for r in rows))
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
