"""Which worker processes which of the log's partitions: leases in the database.

Every worker renews its leases about once a second and takes its fair share of the
partitions (their count over the live workers, rounded up): free ones, and ones whose lease
ran out because their worker died or was cut off. A worker above its share hands the extra
back, so a worker that joins gets work within a couple of renewals. Leases only keep workers
from duplicating effort; correctness does not rest on them: a worker that lost its lease
without knowing finds the partition's position moved when it commits (ProcessingFenced), and
its batch is rolled back. Times are the database's clock, never a host's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any

import psycopg

from trackhouse.store import StoreUnavailable
from trackhouse.store.postgres.connection import connect, storage_errors

logger = logging.getLogger("trackhouse.process")

DEFAULT_LEASE_SECONDS = 10.0
RENEW_SECONDS = 1.0
_NOW = "extract(epoch FROM clock_timestamp())"


def _members(conn: psycopg.Connection[Any], table: str, me: str, lease: float) -> list[str]:
    """Record `me` as alive in `table` (workers, api_processes) and forget the long dead;
    the ids of the live members, in order."""
    conn.execute(
        f"INSERT INTO {table} VALUES (%s, %s, {_NOW}) ON CONFLICT (id) DO UPDATE SET seen = {_NOW}",
        (me, socket.gethostname()),
    )
    conn.execute(f"DELETE FROM {table} WHERE seen < {_NOW} - %s", (lease * 10,))
    rows = conn.execute(
        f"SELECT id FROM {table} WHERE seen > {_NOW} - %s ORDER BY id", (lease,)
    ).fetchall()
    return [i for (i,) in rows]


class PartitionLeases:
    def __init__(self, url: str, count: int, lease_seconds: float | None = None) -> None:
        self.url = url
        self.count = count
        self.lease = lease_seconds or float(
            os.environ.get("TRACKHOUSE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.conn = connect(url, autocommit=True)
        self._held: list[int] = []
        self._renewed = 0.0  # time.monotonic() of the last successful renewal
        self._tried = -math.inf

    def partitions(self) -> list[int]:
        now = time.monotonic()
        if now - self._tried >= RENEW_SECONDS:
            self._tried = now
            try:
                self._renew()
                self._renewed = now
            except StoreUnavailable as exc:
                logger.warning("cannot renew partition leases: %s", exc)
                if now - self._renewed > self.lease / 2:
                    self._held = []  # they may be another worker's by now
        return self._held

    def _renew(self) -> None:
        if self.conn.closed or self.conn.broken:
            self.conn = connect(self.url, autocommit=True)
        with storage_errors():
            c = self.conn
            live = len(_members(c, "workers", self.id, self.lease))
            share = math.ceil(self.count / max(1, live))
            held = [
                p
                for (p,) in c.execute(
                    f"UPDATE partition_owners SET expires = {_NOW} + %s WHERE owner = %s"
                    " RETURNING partition",
                    (self.lease, self.id),
                )
            ]
            held.sort()
            if len(held) > share:
                extra = held[share:]
                c.execute(
                    "UPDATE partition_owners SET owner = NULL, expires = 0"
                    " WHERE partition = ANY(%s) AND owner = %s",
                    (extra, self.id),
                )
                held = held[:share]
            elif len(held) < share:
                taken = c.execute(
                    f"UPDATE partition_owners SET owner = %s, expires = {_NOW} + %s"
                    " WHERE partition IN (SELECT partition FROM partition_owners"
                    f" WHERE owner IS NULL OR expires < {_NOW} ORDER BY partition LIMIT %s"
                    " FOR UPDATE SKIP LOCKED) RETURNING partition",
                    (self.id, self.lease, share - len(held)),
                ).fetchall()
                held = sorted(held + [p for (p,) in taken])
        self._held = held

    def fileno(self) -> int | None:
        return None  # leases are the store's rows: each worker takes its own

    def release(self) -> None:
        """Hand every partition back at once (a clean stop), so others need not wait."""
        with contextlib.suppress(Exception):
            self.conn.execute(
                "UPDATE partition_owners SET owner = NULL, expires = 0 WHERE owner = %s",
                (self.id,),
            )
            self.conn.execute("DELETE FROM workers WHERE id = %s", (self.id,))
        self._held = []
        with contextlib.suppress(Exception):
            self.conn.close()


class ApiProcesses:
    """The live API processes of a cluster, for splitting rate limits among them: each
    records itself about once a second (a thread of its own); `share()` answers from memory
    (this process's rank among the live ones by id, and their number)."""

    def __init__(self, url: str, lease_seconds: float = 5.0) -> None:
        self.url = url
        self.lease = lease_seconds
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._share = (0, 1)
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._beat()
        self._thread = threading.Thread(target=self._run, name="trackhouse-api-lease", daemon=True)
        self._thread.start()

    def share(self) -> tuple[int, int]:
        return self._share

    def _beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self.url, autocommit=True)
            with storage_errors():
                live = _members(self._conn, "api_processes", self.id, self.lease)
            if self.id in live:
                self._share = (live.index(self.id), len(live))
        except StoreUnavailable as exc:
            logger.warning("cannot record this API process: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            self._beat()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("DELETE FROM api_processes WHERE id = %s", (self.id,))
                self._conn.close()
