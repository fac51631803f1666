"""Group commit: many concurrent appends, one transaction.

Requests hand their submissions to `append`, which queues them and waits. A writer thread
takes everything queued, commits it in one transaction (`_commit`, the backend's own), then
wakes every waiter. SQLite has one writer; a backend across the network may run several, each
taking what queued while the others commit. Under load the batches grow by themselves, so one
fsync serves many requests; with one request in flight it costs one commit, and nobody is
acknowledged before their commit (design.md, invariant 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trackhouse.log import BulkJob, LogOverloaded, LogUnavailable
from trackhouse.model import Submission, encode_submission

# Waiters whose bytes are still uncommitted; past this, new appends are refused (503) rather
# than letting memory grow without bound.
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class Pending:
    submissions: list[Submission]
    rows: list[tuple[str, str | None, str | None, bytes]]
    job: BulkJob | None
    size: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client went away) meanwhile
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _wake(batch: list[Pending], error: BaseException | None) -> None:
    """Resolve the batch's futures with one callback per event loop: a thread-safe call costs a
    write to the loop's self-pipe, too much to pay per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for p in batch:
        by_loop.setdefault(p.loop, []).append(p.future)
    for loop, futures in by_loop.items():
        # RuntimeError: that event loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, futures, error)


class GroupCommitLog:
    """The queue, the writer threads and the waking; subclasses commit a batch (`_commit`)."""

    committed = 0  # the newest position this process committed
    appended = 0  # entries this process has committed since it started

    def __init__(
        self, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, writers: int = 1
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._queue: deque[Pending] = deque()
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._listeners: list[Callable[[], None]] = []
        # Writers commit batches concurrently (each takes what is queued when it is free):
        # with a log across the network one commit's round trip and fsync need not hold up
        # the next batch. The backend orders what they write.
        self._threads = [
            threading.Thread(target=self._run, name=f"trackhouse-log-{n}", daemon=True)
            for n in range(writers)
        ]
        for thread in self._threads:
            thread.start()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from a writer thread) after every successful commit."""
        self._listeners.append(listener)

    async def append(self, submissions: list[Submission], job: BulkJob | None = None) -> None:
        rows = [(s.account_id, s.job_id, s.receipt_id, encode_submission(s)) for s in submissions]
        size = sum(len(r[3]) for r in rows)
        loop = asyncio.get_running_loop()
        pending = Pending(submissions, rows, job, size, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise LogUnavailable("the log is closed")
            if self._pending_bytes + size > self.max_pending_bytes and self._queue:
                raise LogOverloaded("too many uncommitted writes")
            self._pending_bytes += size
            self._queue.append(pending)
            self._cond.notify()
        await pending.future

    def _run(self) -> None:
        batch: list[Pending] = []
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch = list(self._queue)
                    self._queue.clear()
                error = self._commit(batch)
                with self._cond:
                    if error is None:
                        self.appended += sum(len(p.rows) for p in batch)
                    self._pending_bytes -= sum(p.size for p in batch)
                if error is None:
                    for listener in self._listeners:
                        listener()
                _wake(batch, error)
                batch = []
        finally:
            # However the writer ends, nobody is left waiting and nothing new is accepted.
            with self._cond:
                self._closing = True
                left = batch + list(self._queue)
                self._queue.clear()
            _wake(left, LogUnavailable("the log writer stopped"))

    def _commit(self, batch: list[Pending]) -> BaseException | None:
        """Write the batch in one transaction: None, or the error (nothing was written)."""
        raise NotImplementedError

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
