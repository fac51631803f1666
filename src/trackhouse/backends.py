"""Where the data lives, turned into a log, a store and the accounts: the one place that knows
which backend serves a deployment. Today that is the embedded default, SQLite files under one
data directory; the scale-out backend (PostgreSQL) joins it here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from trackhouse.log.sqlite import SQLiteLog
from trackhouse.store.accounts import AccountStore
from trackhouse.store.sqlite import SQLiteStore

LOG_FILE = "log.sqlite3"
STORE_FILE = "store.sqlite3"


def open_accounts(data_dir: Path) -> AccountStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return AccountStore(data_dir / STORE_FILE)


def open_pipeline(data_dir: Path, resources: contextlib.ExitStack) -> tuple[SQLiteLog, SQLiteStore]:
    """The log and the store of an existing data directory, checked to belong together
    (LogMismatch otherwise: a store built from another log, or ahead of this one, would have
    events acknowledged that are never processed); `resources` closes them."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no data directory at {data_dir}")
    store = SQLiteStore(data_dir / STORE_FILE)
    resources.callback(store.close)
    log = SQLiteLog(data_dir / LOG_FILE)
    resources.callback(log.close)
    store.bind_log(log, str(log.path))
    return log, store
