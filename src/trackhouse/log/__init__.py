"""The durable log between the API edge and processing.

An event is acknowledged (202) only after `EventLog.append` has returned, which means the
submission is committed and fsync'd (design.md, invariant 1). Implementations batch concurrent
appends into one commit (group commit); they never acknowledge early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from trackhouse.model import Submission


class LogUnavailable(Exception):
    """The log could not commit (disk full, read-only, locked, closed): nothing was written."""


class LogMismatch(Exception):
    """The store does not belong to this log (another log's, or ahead of this one's head):
    serving would acknowledge events that are never processed, so nothing may start."""


class LogOverloaded(Exception):
    """Too much is waiting to be committed; the caller should retry later."""


@dataclass(frozen=True, slots=True)
class BulkJob:
    id: str
    account_id: str
    created_at: str  # ISO 8601
    event_count: int
    submission_count: int
    first_seq: int = 0  # its first group's entry number (SQLite: the rest follow it)


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int  # the entry's number: unique in the log, whichever partition holds it
    submission: Submission
    partition: int = 0
    position: int = 0  # its place in the partition: 1, 2, 3, … in commit order, no gaps


class EventLog(Protocol):
    # Entries are spread over this many partitions (by account and person), each read in
    # order by the one processor that holds it; the embedded log has one.
    partitions: int
    # The newest position this process committed, kept in memory: cheap enough to read on
    # every request.
    committed: int
    appended: int  # entries this process has committed since it started
    # Made when the log is created and kept in it: a store records the identity of the log it
    # is built from, and refuses any other (`trackhouse.backends.open_pipeline`).
    identity: str

    async def append(self, submissions: list[Submission], job: BulkJob | None = None) -> None:
        """Commit the submissions (and the job they belong to) durably, all or nothing."""

    def get_job(self, account_id: str, job_id: str) -> BulkJob | None: ...

    def receipt_seq(self, account_id: str, receipt_id: str) -> int | None:
        """The entry number of a single create's submission, by its receipt id."""

    def heads(self) -> dict[int, int]:
        """Every partition's newest committed position (0 when empty), as committed anywhere."""

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every successful commit (processing wakes on it)."""

    def read(
        self, partition: int, after: int, limit: int, max_bytes: int | None = None
    ) -> list[LogEntry]:
        """The partition's entries past position `after`, in order: at most `limit`, and no
        more than `max_bytes` of encoded data (but at least one entry). Never one that
        commits later at a lower position: positions are given in commit order."""

    def forget_processed(self, older_than: float) -> int:
        """Retention: delete entries that are processed and older than `older_than` seconds
        (never one that is not processed); how many. Receipts and jobs stay readable."""

    def close(self) -> None: ...
