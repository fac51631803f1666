"""Where the data lives, turned into a log, a store and the accounts: the one place that knows
which backend serves a deployment. With no `--store` (nor TRACKHOUSE_STORE), the embedded
default: SQLite files under one data directory. With `--store postgresql://…`, PostgreSQL
holds the log and the store for any number of API processes and workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trackhouse.log import EventLog
from trackhouse.store.accounts import AccountStore
from trackhouse.store.base import Store

LOG_FILE = "log.sqlite3"
STORE_FILE = "store.sqlite3"


@dataclass(frozen=True)
class Location:
    """A data directory (SQLite), or a PostgreSQL URL."""

    data_dir: Path = Path("trackhouse-data")
    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"--store takes a postgresql:// URL, not {self.url!r}")

    @property
    def name(self) -> str:
        """What to show the user: the directory, or the URL without its password."""
        if self.url is None:
            return str(self.data_dir.resolve())
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        user = f"{info['user']}@" if info.get("user") else ""
        host, port = info.get("host", ""), info.get("port", 5432)
        return f"postgresql://{user}{host}:{port}/{info.get('dbname', '')}"


def migrate(where: Location) -> int:
    """Create or update the PostgreSQL schema; the log's partition count."""
    assert where.url is not None
    from trackhouse.store.postgres import migrate as migrate_postgres

    return migrate_postgres(where.url)


def open_accounts(where: Location) -> AccountStore:
    if where.url is not None:
        from trackhouse.store.postgres import PostgresAccounts

        migrate(where)
        return PostgresAccounts(where.url)
    from trackhouse.store.sqlite.accounts import SQLiteAccounts

    where.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteAccounts(where.data_dir / STORE_FILE)


def open_api_share(
    where: Location, resources: contextlib.ExitStack
) -> Callable[[], tuple[int, int]] | None:
    """This API process's (rank, count) among a cluster's live ones, for splitting rate
    limits; None for the embedded backend, which has one API process."""
    if where.url is None:
        return None
    from trackhouse.store.postgres.leases import ApiProcesses

    members = ApiProcesses(where.url)
    resources.callback(members.close)
    return members.share


def open_pipeline(where: Location, resources: contextlib.ExitStack) -> tuple[EventLog, Store]:
    """The log and the store, checked to belong together (LogMismatch otherwise: a store built
    from another log, or ahead of this one, would have events acknowledged that are never
    processed); `resources` closes them. An embedded data directory must exist already."""
    if where.url is not None:
        from trackhouse.log.postgres import PostgresLog
        from trackhouse.store.postgres import PostgresStore

        partitions = migrate(where)
        pg_store = PostgresStore(where.url, partitions)
        resources.callback(pg_store.close)
        pg_log = PostgresLog(where.url, partitions)
        resources.callback(pg_log.close)
        return pg_log, pg_store

    from trackhouse.log.sqlite import SQLiteLog
    from trackhouse.store.sqlite import SQLiteStore

    if not where.data_dir.is_dir():
        raise FileNotFoundError(f"no data directory at {where.data_dir}")
    store = SQLiteStore(where.data_dir / STORE_FILE)
    resources.callback(store.close)
    log = SQLiteLog(where.data_dir / LOG_FILE)
    resources.callback(log.close)
    store.bind_log(log, str(log.path))
    return log, store
