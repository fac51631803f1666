"""Connections to PostgreSQL, and psycopg's errors turned into trackhouse's at the seam.

A lost server, a refused connection or a lock wait past its timeout is storage trouble
(StoreUnavailable: retried, never a rejection); a deadlock, a serialization failure or a unique
key taken by a concurrent transaction is a lost race (StoreConflict: redone at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from trackhouse.store import StoreConflict, StoreUnavailable

# A worker or API host that vanishes (a cut link) must not keep its locks for the kernel's
# two hours of TCP keepalive: the server drops its session within about 15 s.
SESSION_OPTIONS = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
CONNECT_TIMEOUT = 5
_CONFLICTS = (errors.DeadlockDetected, errors.SerializationFailure, errors.UniqueViolation)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except _CONFLICTS as exc:
        raise StoreConflict(str(exc).strip()) from exc
    except (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        errors.LockNotAvailable,
        PoolTimeout,
    ) as exc:
        raise StoreUnavailable(str(exc).strip()) from exc


def connect(url: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    with storage_errors():
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT, options=SESSION_OPTIONS
        )


def pool(url: str, max_size: int = 4) -> ConnectionPool:
    """Autocommit connections, replaced when lost. They are not checked on every checkout
    (a round trip per query); `Reader` repeats a read that met a connection lost meanwhile."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "options": SESSION_OPTIONS,
        },
        open=True,
        timeout=10,
        name="trackhouse",
    )


def has_nul(args: tuple[Any, ...] | list[Any]) -> bool:
    """A text value PostgreSQL cannot hold (NUL): such a key matches no stored row."""
    for a in args:
        if isinstance(a, str) and "\x00" in a:
            return True
        if isinstance(a, list | tuple) and has_nul(a):
            return True
    return False


class Reader:
    """Queries on a pool, with errors wrapped; a text argument holding NUL finds nothing.

    A connection the server dropped since its last use (a restart, a cut link) fails its
    next query: a read is then asked once more, after the pool has checked its idle
    connections; a write (`run`) checks its connection first instead, since a statement
    that failed may or may not have been applied."""

    def __init__(self, url: str, max_size: int = 4) -> None:
        with storage_errors():
            self.pool = pool(url, max_size)

    def all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        if has_nul(args):
            return []
        with storage_errors():
            for attempt in (1, 2):
                with self.pool.connection() as conn:  # PoolTimeout: not retried
                    try:
                        # Rows in the binary format: bytea and numbers are copied, not parsed.
                        rows = conn.execute(sql, args, binary=True)  # type: ignore[arg-type]
                        return rows.fetchall()
                    except psycopg.OperationalError:
                        if attempt == 2 or not conn.broken:
                            raise  # the server answered: a timeout, a full disk, …
                self.pool.check()  # the connection was lost: drop the idle ones lost too
        raise AssertionError("unreachable")

    def run(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> int:
        """A write; how many rows it changed."""
        return self._write(sql, args, fetch=False)[0]

    def write_rows(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple]:
        """A write with RETURNING; its rows."""
        return self._write(sql, args, fetch=True)[1]

    def _write(
        self, sql: str, args: tuple[Any, ...] | list[Any], fetch: bool
    ) -> tuple[int, list[tuple]]:
        with storage_errors():
            for attempt in (1, 2):
                with self.pool.connection() as conn:
                    try:
                        ConnectionPool.check_connection(conn)
                    except psycopg.OperationalError:
                        if attempt == 2:
                            raise
                    else:
                        cur = conn.execute(sql, args, binary=True)  # type: ignore[arg-type]
                        return cur.rowcount, cur.fetchall() if fetch else []
                self.pool.check()  # that one was lost (the pool replaces it): the idle ones too
        raise AssertionError("unreachable")

    def run_all(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Writes in one transaction, all or none; how many rows each changed. A unique
        violation is raised as psycopg's (the caller draws another id)."""
        with storage_errors(), self.pool.connection() as conn:
            ConnectionPool.check_connection(conn)
            with conn.transaction():
                return [conn.execute(sql, args).rowcount for sql, args in statements]  # type: ignore[arg-type]

    def close(self) -> None:
        self.pool.close()
