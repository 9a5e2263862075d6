"""SQLite storage: open and migrate (``db``), the ledger's rows and roll-ups (``ledger``), and the
single ledger writer with group commit (``writer``, which runs ``writer_proc`` as a process). Importing this package imports neither
sqlite-utils (only when a migration is pending) nor the writer's asyncio machinery (only the
daemon needs it): CLI commands stay fast.
"""

from typing import Any

from llmgw.store.db import connect, data_version, migrate, open_db
from llmgw.store.ledger import LEDGER_COLUMNS, normalise_row

__all__ = ["LEDGER_COLUMNS", "LedgerWriter", "connect", "data_version", "migrate", "normalise_row", "open_db"]


def __getattr__(name: str) -> Any:
    if name == "LedgerWriter":
        from llmgw.store.writer import LedgerWriter

        return LedgerWriter
    raise AttributeError(name)
