"""SQLite storage: open and migrate (``db``), the ledger's rows and roll-ups (``ledger``), and the
single writer thread with group commit (``writer``). Importing this package does not import
sqlite-utils; that happens only when a migration is pending.
"""

from llmgw.store.db import connect, data_version, migrate, open_db
from llmgw.store.ledger import LEDGER_COLUMNS, normalise_row
from llmgw.store.writer import LedgerWriter

__all__ = ["LEDGER_COLUMNS", "LedgerWriter", "connect", "data_version", "migrate", "normalise_row", "open_db"]
