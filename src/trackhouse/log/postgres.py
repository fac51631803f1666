"""The log on PostgreSQL, shared by every API process of a cluster.

Each API process group-commits (`group_commit.py`): one transaction per batch of concurrent
requests, and 202 only after it commits. An entry goes to a partition by its account and the
person's first identifier, so one person's events (sent with the same identifier) keep their
order, and one account's entries spread over every partition for several workers to process.

Positions within a partition are handed out by its row in `log_heads`, locked by the appending
transaction until it commits: a transaction that takes positions 5–9 commits before any other
can take 10, so a reader that has seen position 10 has seen everything below it. (A sequence
would let a late commit land behind a reader: the sequence-gap hazard of
../shared/reference/scale-out.md.) Rows of several partitions are locked in partition order,
so concurrent appenders cannot deadlock.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import Counter
from typing import Any

import psycopg

from trackhouse.identifiers import identifier_key
from trackhouse.log import BulkJob, LogEntry, LogUnavailable
from trackhouse.log.group_commit import DEFAULT_MAX_PENDING_BYTES, GroupCommitLog, Pending
from trackhouse.model import Submission, decode_submission
from trackhouse.store.postgres.connection import Reader, connect


def partition_of(s: Submission, partitions: int) -> int:
    """By account and the first identifier in resolution order (normalized as identity
    compares it): the same person, sent the same way, always lands in the same partition."""
    person = ""
    for kind, value in s.profile.identifiers().items():
        try:
            person = f"{kind}\x1f{identifier_key(kind, value)}" if kind != "id" else value
        except ValueError:
            person = f"{kind}\x1f{value}"
        break
    key = f"{s.account_id}\x1f{person}".encode("utf-8", "surrogatepass")
    return zlib.crc32(key) % partitions


class PostgresLog(GroupCommitLog):
    def __init__(
        self, url: str, partitions: int, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    ) -> None:
        self.url = url
        self.partitions = partitions
        self.db = Reader(url)
        (self.identity,) = self.db.all(
            "SELECT value FROM trackhouse_meta WHERE key = 'log_identity'"
        )[0]
        self._writer: psycopg.Connection[Any] | None = None
        super().__init__(max_pending_bytes)

    def _commit(self, batch: list[Pending]) -> BaseException | None:
        try:
            if self._writer is None or self._writer.closed or self._writer.broken:
                self._writer = connect(self.url)
            self._write(self._writer, batch)
        except Exception as exc:  # the server gone, a disk full there, …: nothing was written
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.rollback()
            return LogUnavailable(f"log commit failed: {exc}")
        return None

    def _write(self, conn: psycopg.Connection[Any], batch: list[Pending]) -> None:
        subs = [(p, s, row) for p in batch for s, row in zip(p.submissions, p.rows, strict=True)]
        parts = [partition_of(s, self.partitions) for _, s, _ in subs]
        counts = Counter(parts)
        order = sorted(counts)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT partition FROM log_heads WHERE partition = ANY(%s)"
                " ORDER BY partition FOR UPDATE",
                (order,),
            )
            cur.execute(
                "UPDATE log_heads h SET head = h.head + c.n FROM unnest(%s::int[], %s::int[])"
                " AS c(p, n) WHERE h.partition = c.p RETURNING h.partition, h.head",
                (order, [counts[p] for p in order]),
            )
            next_position = {p: head - counts[p] + 1 for p, head in cur.fetchall()}
            cur.execute(
                "SELECT nextval('log_entry_numbers') FROM generate_series(1, %s)", (len(subs),)
            )
            seqs = sorted(n for (n,) in cur.fetchall())
            first_seq: dict[int, int] = {}
            with cur.copy(
                "COPY log_entries (partition, position, seq, account_id, receipt_id,"
                " received_at, submission) FROM STDIN"
            ) as copy:
                for (pending, s, row), part, seq in zip(subs, parts, seqs, strict=True):
                    position = next_position[part]
                    next_position[part] = position + 1
                    first_seq.setdefault(id(pending), seq)
                    copy.write_row((part, position, seq, s.account_id, s.receipt_id,
                                    s.received_at, row[3]))  # fmt: skip
            for p in batch:
                if (j := p.job) is not None:
                    cur.execute(
                        "INSERT INTO log_jobs VALUES (%s, %s, %s, %s, %s, %s)",
                        (j.id, j.account_id, j.created_at, j.event_count, j.submission_count,
                         first_seq[id(p)]),
                    )  # fmt: skip
        self.committed = max(self.committed, seqs[-1])

    def get_job(self, account_id: str, job_id: str) -> BulkJob | None:
        rows = self.db.all(
            "SELECT id, account_id, created_at, event_count, submission_count, first_seq"
            " FROM log_jobs WHERE id = %s AND account_id = %s",
            (job_id, account_id),
        )
        return BulkJob(*rows[0]) if rows else None

    def heads(self) -> dict[int, int]:
        return dict(self.db.all("SELECT partition, head FROM log_heads"))  # type: ignore[arg-type]

    def receipt_seq(self, account_id: str, receipt_id: str) -> int | None:
        rows = self.db.all(
            "SELECT seq FROM log_entries WHERE receipt_id = %s AND account_id = %s",
            (receipt_id, account_id),
        )
        return rows[0][0] if rows else None

    def read(
        self, partition: int, after: int, limit: int, max_bytes: int | None = None
    ) -> list[LogEntry]:
        rows = self.db.all(
            "SELECT seq, position, submission FROM log_entries WHERE partition = %s"
            " AND position > %s ORDER BY position LIMIT %s",
            (partition, after, limit),
        )
        entries: list[LogEntry] = []
        size = 0
        for seq, position, blob in rows:
            size += len(blob)
            if entries and max_bytes is not None and size > max_bytes:
                break
            entries.append(LogEntry(seq, decode_submission(bytes(blob)), partition, position))
        return entries

    def forget_processed(self, older_than: float) -> int:
        """Retention: delete entries every worker has processed that were received more than
        `older_than` seconds ago; never one that is not processed. Receipts and jobs stay
        readable (from outcomes and `log_jobs`). How many were deleted."""
        return self.db.run(
            "DELETE FROM log_entries e USING positions p WHERE e.partition = p.partition"
            " AND e.position <= p.position"
            " AND e.received_at < extract(epoch FROM clock_timestamp()) - %s",
            (older_than,),
        )

    def close(self) -> None:
        super().close()
        if self._writer is not None:
            self._writer.close()
        self.db.close()
