"""The processor: log entries in, profiles, metrics, events and one outcome per event out.

It reads the log in order (so one person's events are applied in arrival order) in batches,
applies each batch in one store transaction, and writes the log position it reached in that
same transaction: a crash anywhere rolls back both, and the restart redoes exactly the
uncommitted batch (design.md, invariants 2 and 3). List and segment members change in that
same transaction (membership.py); segments' background computations run between batches.

Two kinds of failure are told apart. Storage trouble (`StoreUnavailable`, which the store
raises for disk full, locked, I/O) rolls back and retries the same entries later, with
back-off: accepted events wait, they are never turned into rejections. Anything else raised
while applying an entry is a problem with that entry: the batch is redone one entry at a time
and only the failing entry ends `rejected`, with the error as its reason.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.clock import Clocks
from trackhouse.flows import webhooks
from trackhouse.flows.entry import Entry, Flows
from trackhouse.flows.runner import ListChange, Runner
from trackhouse.ids import short_id
from trackhouse.log import EventLog, LogEntry
from trackhouse.model import Submission
from trackhouse.process.identity import ProfileBook, resolve_profile
from trackhouse.process.membership import Clock, Membership, Stored
from trackhouse.process.profiles import PROFILE_TOO_LARGE, Profile, apply_bounded
from trackhouse.store import ProcessingFenced, ProcessingHeld, StoreConflict, StoreUnavailable
from trackhouse.store.base import (
    EVENTS_PER_ENTRY,
    EventInsert,
    OutcomeRow,
    Result,
    Store,
    event_id,
    pack_results,
)
from trackhouse.store.flows import AttemptRow, DeliveryRow, FlowRunWrites

logger = logging.getLogger("trackhouse.process")

BATCH_ENTRIES = 1000
BATCH_BYTES = 32 * 1024 * 1024  # and at most this much encoded log data per batch
# Once caught up, wait this long for more entries before the next batch: per batch the store
# pays a transaction and an fsync and rewrites each touched profile once, and a processor
# sharing the API's process (and GIL) that ran a batch per request halved the accepted
# requests/s (bench/RESULTS.md; 0 → 50 ms: 2,300 → 3,200 req/s, 50 → 100 ms with 1,000-entry
# batches: 5,400 → 6,100). It adds at most this much to the accept→stored lag; /admin/wait and
# shutdown cut it short (`hurry`).
LINGER_SECONDS = 0.1
STORE_BUSY_SECONDS = 30.0  # as the store's connections are opened (store/sqlite/store.py)
# Processed log entries are kept this long (TRACKHOUSE_LOG_RETENTION seconds), then deleted
# by whichever processor comes to it; the embedded log keeps everything.
LOG_RETENTION_SECONDS = float(os.environ.get("TRACKHOUSE_LOG_RETENTION", 86400))
# Segments relative to now are computed again this often (process/membership.py).
SEGMENT_SWEEP_SECONDS = float(os.environ.get("TRACKHOUSE_SEGMENT_SWEEP", 3600))
# Flow steps run in transactions of at most this many (flows/runner.py).
FLOW_STEPS = 200
# A batch that lost a race with another worker (StoreConflict) is redone at once, this often.
CONFLICT_RETRIES = 20
_json = msgspec.json.Encoder()


@functools.lru_cache(maxsize=64)  # a batch's submissions arrived within a few seconds
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")


def _iso(seconds: float) -> str:
    return _iso_second(int(seconds))


class Processor:
    def __init__(
        self, log: EventLog, store: Store, clock: Clock | None = None, claim: int | None = None
    ) -> None:
        self.log = log
        # One processor per store (ProcessorRunning otherwise): two would race on the same
        # entries and one would loop on their outcomes' unique key forever. (`claim`: the
        # claim's descriptor, taken by `serve` for its second process.)
        self.claim = store.claim_processing(claim)
        try:
            self.store = store.writer()
        except BaseException:
            self.claim.release()
            raise
        self.book = ProfileBook(self.store)
        # Each account's clock as the store holds it, read afresh whenever it is asked (a few
        # times a batch): set through /admin/clock by any API process.
        self.clocks = Clocks(self.store.clock_settings, ttl=0.0)
        self.membership = Membership(self.store, self.book, clock or self.clocks.moment)
        # Flows: entered as events are stored, their steps run between batches (flows/).
        runs = self.store
        assert isinstance(runs, FlowRunWrites)
        self.flows = Flows(runs)
        self.entry = Entry(self.store, runs, self.book, self.flows, clock or self.clocks.moment)
        self.runner = Runner(self.store, runs, self.book, self.flows)
        self.membership.on_joins = self.entry.enter_joins
        self.deliveries_wake = threading.Event()  # set when a webhook delivery is queued
        self.webhook_lease = webhooks.lease_seconds()
        # Deliveries claimed in the transaction of the step that queued them, committed, for
        # the delivery thread to send at once (Runner.ready); the rest it claims itself.
        self.runner.lease = self.webhook_lease
        self.ready: collections.deque[DeliveryRow] = collections.deque()
        self._next_claim = 0.0
        # The batch's list changes: (account, list, profile, add, at), applied with its
        # segments once its profiles are written.
        self._list_changes: list[tuple[str, str, str, bool, str]] = []
        # The batch's events that were inserted, with their properties.
        self._stored: Stored = []
        self._metrics: dict[tuple[str, str, str], str] = {}
        self._metric_counts: dict[str, int] = {}
        # The processed position of each partition held, as this processor committed it.
        self.positions = {p: self.store.processed_position(p) for p in self.claim.partitions()}
        self.wake = threading.Event()  # set by the log after each commit
        self.hurry = threading.Event()  # set to skip the linger (a waiter, shutdown)
        self.lock = threading.Lock()  # one batch (or reset) at a time
        # Log positions that processing must not pass while a reset waits for the lock.
        self._ceilings: list[int] = []
        self._ceilings_lock = threading.Lock()
        # Resets take turns in the order of their ceilings (the lowest first): processing can
        # only reach the lowest, so a reset at a higher one must wait for it.
        self._ceilings_changed = threading.Condition(self._ceilings_lock)
        # Partitions a reset elsewhere (in the store) holds, at the ceiling last seen.
        self._holds: dict[int, int] = {}
        self.last_error: str | None = None  # storage trouble being retried, for /admin/wait
        self._resets = -1  # resets_done as last seen (-1: not yet looked)

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set; the batch in hand is always finished first. Nothing
        ends this loop but `stop`: storage errors are retried with back-off. Webhook
        deliveries are attempted meanwhile by a thread of their own (`deliver`)."""
        deliveries = threading.Thread(target=self.deliver, args=(stop,), name="webhooks")
        deliveries.start()
        try:
            self._run(stop)
        finally:
            self.deliveries_wake.set()
            deliveries.join()

    def _run(self, stop: threading.Event) -> None:
        backoff = 0.05
        retention_due = time.monotonic()
        sweep_due = time.monotonic() + SEGMENT_SWEEP_SECONDS
        while not stop.is_set():
            if time.monotonic() >= retention_due:
                retention_due = time.monotonic() + min(60.0, max(1.0, LOG_RETENTION_SECONDS / 10))
                try:
                    self.log.forget_processed(LOG_RETENTION_SECONDS)
                except Exception:
                    logger.exception("log retention failed; tried again later")
            try:
                if time.monotonic() >= sweep_due:
                    sweep_due = time.monotonic() + SEGMENT_SWEEP_SECONDS
                    with self.lock:
                        self.membership.sweep()
                processed = self.run_once()
                # Segments' background computations: a page between batches while busy,
                # page after page while the log is caught up.
                self.compute_segments(1 if processed else 1_000_000)
                # Flow steps: a transaction of them between batches while busy (more did not
                # help: bench/RESULTS.md § Flows), transaction after transaction when idle.
                self.run_flows(1 if processed else 1_000)
            except Exception as exc:
                logger.exception("processing stalled at log position %d; retrying", self.position)
                self.last_error = repr(exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.last_error = None
            backoff = 0.05
            # A backlog: no waiting. (A batch may end short of BATCH_ENTRIES because it reached
            # BATCH_BYTES, so the log is asked how much is left.)
            # (None processed with entries waiting: a reset holds processing at its ceiling.)
            if processed and (processed >= BATCH_ENTRIES or self.behind() >= BATCH_ENTRIES // 2):
                continue
            if not processed:
                self.wake.wait(0.25)
                self.wake.clear()
            if not stop.is_set() and self.hurry.wait(LINGER_SECONDS):
                self.hurry.clear()

    @property
    def position(self) -> int:
        """The processed position of the embedded log's one partition (0 if not held)."""
        return self.positions.get(0, 0)

    def behind(self) -> int:
        """Entries of the partitions held that are not processed yet."""
        heads = self.log.heads()
        return sum(max(0, heads.get(p, 0) - at) for p, at in self.positions.items())

    def run_once(self, max_entries: int = BATCH_ENTRIES) -> int:
        """Process the next batch of each partition held; returns how many entries there were."""
        held = self.claim.partitions()
        for lost in set(self.positions) - set(held):
            del self.positions[lost]  # another worker holds it now
        processed = 0
        for partition in held:
            with self.lock:
                processed += self._run_once(partition, max_entries)
        return processed

    def compute_segments(self, pages: int) -> int:
        """Up to `pages` pages of segment computations, stopping when log entries wait;
        how many profiles were evaluated."""
        evaluated = 0
        for _ in range(pages):
            with self.lock:
                n = self.membership.compute()
            evaluated += n
            if not n or (pages > 1 and self.wake.is_set()):
                break
        return evaluated

    def run_flows(self, rounds: int) -> int:
        """Up to `rounds` transactions of due flow steps; how many steps ran."""
        ran = 0
        for _ in range(rounds):
            with self.lock:
                n = self._run_flows()
            ran += n
            if n < FLOW_STEPS:
                break
        return ran

    def deliver(self, stop: threading.Event) -> None:
        """Attempt the webhook deliveries that are due, until `stop` (flows/webhooks.py).
        Each is claimed (leased, its attempt counted) in a committed transaction first: the
        step's own (`ready`), or a short one here for retries and attempts whose worker died.
        Up to IN_FLIGHT attempts are kept going on the senders, with no lock held; results
        are recorded as they come, those that came together in one transaction."""
        backoff = 0.05
        pools = webhooks.client()
        in_flight: dict[Future[webhooks.Result], DeliveryRow] = {}
        with ThreadPoolExecutor(webhooks.SENDERS, thread_name_prefix="webhook") as senders:
            while not stop.is_set():
                try:
                    for delivery in self._claim(webhooks.IN_FLIGHT - len(in_flight)):
                        in_flight[senders.submit(webhooks.send, pools, delivery)] = delivery
                    if not in_flight:
                        self.deliveries_wake.wait(0.25)
                        self.deliveries_wake.clear()
                        continue
                    done, _ = wait(in_flight, timeout=0.05, return_when=FIRST_COMPLETED)
                    self._record([(in_flight.pop(f), f.result()) for f in done])
                except Exception:
                    logger.exception("webhook deliveries stalled; retrying")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.05
            try:  # the attempts under way: their results kept (else their leases run out)
                done, _ = wait(in_flight, timeout=webhooks.TIMEOUT_SECONDS * 2)
                self._record([(in_flight.pop(f), f.result()) for f in done])
            except Exception:
                logger.exception("the last webhook results could not be recorded")
        pools.clear()

    def _claim(self, room: int) -> list[DeliveryRow]:
        """Up to `room` deliveries to attempt: those the steps claimed, then, when none wait
        or at least twice a second while they keep coming, due ones claimed from the store."""
        claimed: list[DeliveryRow] = []
        while self.ready and len(claimed) < room:
            claimed.append(self.ready.popleft())
        if len(claimed) < room and (not claimed or time.monotonic() >= self._next_claim):
            self._next_claim = time.monotonic() + 0.5
            runs = self.store
            assert isinstance(runs, FlowRunWrites)
            wanted = min(room - len(claimed), webhooks.ROUND)
            with self.lock, self.store.transaction():
                claimed += runs.claim_deliveries(time.time(), self.webhook_lease, wanted)
        return claimed

    def _record(self, results: list[tuple[DeliveryRow, webhooks.Result]]) -> None:
        """Attempts' results, in one transaction, and what follows each (flows/webhooks.py)."""
        if not results:
            return
        runs = self.store
        assert isinstance(runs, FlowRunWrites)
        with self.lock, self.store.transaction():
            for delivery, result in results:
                # As of when it was due on a frozen clock (tests move it); on a running one as
                # of now, so that retries after an outage are spaced from then.
                setting = self.clocks.setting(delivery.account_id)
                due = delivery.next_at if delivery.next_at is not None else time.time()
                at = due if setting.frozen else max(due, setting.now(time.time()))
                attempt = AttemptRow(delivery.id, delivery.attempts, at, result.status_code,
                                     result.duration_ms, result.error)  # fmt: skip
                status, next_at, detail = webhooks.after(delivery, result, at)
                runs.record_attempt(delivery, attempt, status, next_at, detail)

    def _run_flows(self) -> int:
        if self.store.shared:
            self.forget()  # other workers change profiles between transactions
        try:
            with self.store.transaction():
                self._check_resets()
                n = self._run_steps(FLOW_STEPS)
        except BaseException:
            self.forget()
            raise
        self.membership.committed()
        self._hand_over()
        return n

    def _run_once(self, partition: int, max_entries: int) -> int:
        for attempt in range(CONFLICT_RETRIES):
            try:
                return self._run_batch(partition, max_entries)
            except ProcessingFenced:
                logger.warning("partition %d was processed by another worker", partition)
                self.positions.pop(partition, None)  # read again if it comes back
                return 0
            except ProcessingHeld as held:  # a reset elsewhere: redone up to its hold
                self._holds[partition] = held.ceiling
            except StoreConflict:
                # Another worker claimed an identifier, changed a profile or deadlocked with
                # this batch: redone now, it sees what the other one committed.
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(0.001 * attempt)
        return 0  # held again each time: the next round starts from the hold

    def _run_batch(self, partition: int, max_entries: int) -> int:
        if self.store.shared:
            self.forget()  # other workers change profiles and identifiers between batches
        at = self.positions.get(partition)
        if at is None:
            at = self.positions[partition] = self.store.processed_position(partition)
        with self._ceilings_lock, self.store.reading(partition) as held_elsewhere:
            ceilings = (
                self._ceilings if held_elsewhere is None else [*self._ceilings, held_elsewhere]
            )
            until = min(ceilings, default=None)
            entries = self.log.read(partition, at, max_entries, BATCH_BYTES)
        if partition in self._holds:  # held by a reset elsewhere: is it still?
            held = self.store.ceiling(partition)
            if held is None:
                del self._holds[partition]
            else:
                self._holds[partition] = held
                until = held if until is None else min(until, held)
        if until is not None:
            entries = [e for e in entries if e.position <= until]
        if not entries:
            return 0
        try:
            self._commit(partition, entries, self._apply_all)
        except StoreUnavailable:
            raise  # storage trouble: the same entries are tried again later
        except Exception:
            logger.exception("batch failed; redoing it entry by entry")
            for entry in entries:
                try:
                    self._commit(partition, [entry], self._apply_all)
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    logger.exception("log entry %d failed; rejecting its events", entry.seq)
                    reject = functools.partial(self._reject_all, reason=repr(exc))
                    self._commit(partition, [entry], reject)
        return len(entries)

    def _commit(
        self,
        partition: int,
        entries: list[LogEntry],
        apply: Callable[[list[LogEntry]], list[OutcomeRow]],
    ) -> None:
        old = self.positions[partition]
        self._list_changes = []
        self._stored = []
        try:
            with self.store.transaction():
                # First: another worker that moved the position meanwhile fences this batch.
                self.store.advance(partition, old, entries[-1].position)
                self._check_resets()
                outcomes = apply(entries)
                self.book.flush()
                self.membership.apply(_touched(outcomes), self._list_changes, self._stored)
                if self._stored:
                    self.entry.enter(self._stored)
                if self.entry.steps_added:  # their first steps, when due, in this transaction
                    self._run_steps(FLOW_STEPS)
                self.store.record_outcomes(outcomes)
                self.store.before_commit(partition, entries[-1].position)
        except BaseException:
            self.forget()
            raise
        self.membership.committed()
        self._hand_over()
        self.positions[partition] = entries[-1].position

    def _run_steps(self, limit: int) -> int:
        """Run up to `limit` due flow steps in the caller's transaction, with the profile and
        membership changes they make; how many ran."""
        self.entry.steps_added = False
        touched: dict[str, set[str]] = {}
        changes: list[ListChange] = []
        n = self.runner.run_due(limit, touched, changes)
        if n:
            self.book.flush()
            self.membership.apply(touched, changes)
        return n

    def _hand_over(self) -> None:
        """After a commit: the deliveries its steps claimed go to the delivery thread."""
        if self.runner.ready:
            self.ready.extend(self.runner.ready)
            self.runner.ready = []
        if self.runner.queued_deliveries:
            self.runner.queued_deliveries = False
            self.deliveries_wake.set()

    def _check_resets(self) -> None:
        """In a transaction, before anything remembered is used: an account reset by another
        process (SQLiteStore.reset_account) deleted what the caches hold."""
        if not self.store.shared and (done := self.store.resets_done()) != self._resets:
            self.forget()
            self._resets = done

    def forget(self) -> None:
        """Drop every cache (after a rollback, or when another writer changed the store)."""
        self.book.forget()
        self.membership.forget()
        self.runner.ready = []  # rolled back: never committed, so never sent
        self.runner.queued_deliveries = False
        self.entry.steps_added = False
        self._metrics.clear()
        self._metric_counts.clear()

    # -- one submission ------------------------------------------------------------------

    def _apply_all(self, entries: list[LogEntry]) -> list[OutcomeRow]:
        """Resolve every entry's profile in order, then insert the batch's events in one
        statement, in the same order (so the first of two events with one dedup key is still
        the one kept), and only then settle each entry's outcome."""
        if self.store.shared:  # a store across the network: the batch's lookups at once
            self.book.prefetch([(e.submission.account_id, e.submission.profile) for e in entries])
        applied = [self._apply(entry.seq, entry.submission) for entry in entries]
        rows = [row for a in applied if isinstance(a, _Events) for row in a.rows]
        inserted = self.store.insert_events(rows) if rows else set()
        self._stored += (
            (row, props)
            for a in applied
            if isinstance(a, _Events)
            for row, props in zip(a.rows, a.properties, strict=True)
            if row[0] in inserted
        )
        return [a if not isinstance(a, _Events) else self._settle(a, inserted) for a in applied]

    def _settle(self, a: _Events, inserted: set[int]) -> OutcomeRow:
        # The dedup index refused a repeated (account, profile, metric, key): the first
        # processed wins. Usually every row went in.
        if any(row[0] not in inserted for row in a.rows):
            self._mark_duplicates(a, inserted)
        newest = max(
            (e.time for e, r in zip(a.submission.events, a.results, strict=True)
             if r[0] == "stored"),
            default=None,
        )  # fmt: skip
        profile = a.profile
        if newest is not None and (profile.last_event_time or 0) < newest:
            profile.last_event_time = newest
        return _row(a.seq, a.submission, profile.id, a.results)

    def _reject_all(self, entries: list[LogEntry], reason: str) -> list[OutcomeRow]:
        detail = f"internal error: {reason}"
        return [
            _row(e.seq, e.submission, None, [("rejected", None, detail)] * _slots(e.submission))
            for e in entries
        ]

    def _apply(self, seq: int, s: Submission) -> OutcomeRow | _Events:
        if s.list_change is not None:
            return self._list_change(seq, s)
        resolution = resolve_profile(self.book, s.account_id, s.profile, _iso(s.received_at))
        profile = resolution.profile
        if profile is None:
            return _row(seq, s, None, [("rejected", None, resolution.rejected)] * _slots(s))
        size = apply_bounded(profile, s.profile, self.book.size(profile.id))
        if size is None:  # the profile stays as it was; the events are still stored
            resolution.notes.append(PROFILE_TOO_LARGE)
        else:
            self.book.resized(profile.id, size)
        notes = "; ".join(resolution.notes) or None
        if not s.events:  # identify: a profile change only
            outcome = "stored" if size is not None else "rejected"
            return _row(seq, s, profile.id, [(outcome, None, notes)])
        if len(s.events) > EVENTS_PER_ENTRY:  # the API refuses these; numbers depend on it
            raise ValueError(f"a submission holds at most {EVENTS_PER_ENTRY} events")

        results: list[Result] = []
        rows: list[EventInsert] = []
        keys: list[tuple[str, str, bool]] = []
        properties: list[dict[str, Any]] = []
        for idx, event in enumerate(s.events):
            metric_id = self._metric(s.account_id, event.metric, event.service, s.metric_cap)
            if metric_id is None:
                reason = f"the account already has {s.metric_cap} metrics (the limit of this API)"
                results.append(("rejected", None, _join(reason, notes)))
                continue
            key = event.unique_id if event.unique_id is not None else str(event.time)
            number = seq * EVENTS_PER_ENTRY + idx
            rows.append(
                (
                    number,
                    s.account_id,
                    profile.id,
                    metric_id,
                    event.time,
                    key,
                    event.value,
                    event.value_currency,
                    event.backfill,
                    _json.encode(event.properties),
                    s.received_at,
                )
            )
            keys.append((metric_id, key, event.unique_id is not None))
            properties.append(event.properties)
            results.append(("stored", number, notes))  # until the insert says otherwise
        return _Events(seq, s, profile, rows, keys, results, notes, properties)

    def _list_change(self, seq: int, s: Submission) -> OutcomeRow:
        """Add to or remove from a list: the profile itself is not changed. Applied with the
        batch's segments (Membership.apply); a list or profile deleted since the request
        makes it a rejection."""
        assert s.list_change is not None
        change = s.list_change
        profile = self.book.get(s.account_id, s.profile.id or "")
        if profile is None:
            detail = f"no profile with id {(s.profile.id or '')[:64]} exists"
            return _row(seq, s, None, [("rejected", None, detail)])
        if not self.store.list_exists(s.account_id, change.list_id):
            detail = f"no list with id {change.list_id[:64]} exists"
            return _row(seq, s, profile.id, [("rejected", None, detail)])
        # When it was accepted, on the account's clock (a list join triggers flows from then).
        at = _iso(self.clocks.setting(s.account_id).now(s.received_at))
        self._list_changes.append((s.account_id, change.list_id, profile.id, change.add, at))
        return _row(seq, s, profile.id, [("stored", None, None)])

    def _mark_duplicates(self, a: _Events, inserted: set[int]) -> None:
        """Which of the entry's rows the dedup index refused, and the event each repeats."""
        by_number = {row[0]: n for n, row in enumerate(a.rows)}
        for idx, (outcome, number, _) in enumerate(a.results):
            if outcome != "stored" or number in inserted:
                continue
            metric_id, key, explicit = a.keys[by_number[number]]
            first = self.store.event_with_key(a.submission.account_id, a.profile.id, metric_id, key)
            what = "unique_id" if explicit else "time (no unique_id)"
            detail = f"duplicate of event {event_id(first)}: same profile, metric and {what}"
            a.results[idx] = ("deduplicated", first, _join(f"{detail} {key[:64]!r}", a.notes))

    def _metric(self, account_id: str, name: str, service: str, cap: int | None) -> str | None:
        """The metric's id, created on first use; None when `cap` forbids a new one."""
        key = (account_id, name, service)
        metric_id = self._metrics.get(key)
        if metric_id is not None:
            return metric_id
        metric_id = self.store.metric_id(account_id, name, service)
        if metric_id is None:
            count = self._metric_counts.get(account_id)
            if count is None:
                count = self.store.metric_count(account_id)
            if cap is not None and count >= cap:
                self._metric_counts[account_id] = count
                return None
            created = _iso(datetime.now(UTC).timestamp())
            while True:  # a random id that is taken: draw another
                metric_id = short_id()
                if self.store.add_metric(metric_id, account_id, name, service, created):
                    break
            self._metric_counts[account_id] = count + 1
        self._metrics[key] = metric_id
        return metric_id

    def reset_account(self, account_id: str, deadline: float) -> tuple[int, dict[str, int]]:
        """Delete exactly what the account had accepted when this was called (test control):
        the log's head is taken now, processing is held at it, caught up to it under the
        lock, the data deleted, and only then are later entries — accepted while the reset
        waited — processed, and kept. Storage trouble is retried until `deadline`
        (time.monotonic()), then TimeoutError, with nothing deleted. Returns (head, counts)."""
        if self.log.partitions != 1:
            raise NotImplementedError("a partitioned log is reset through its store")
        with self._ceilings_lock:
            # Under this lock no batch is between reading the log and knowing the ceiling: one
            # read before is of entries committed before `head` was read.
            head = self.log.heads()[0]
            self._ceilings.append(head)
        try:
            with self._ceilings_changed:
                while head != min(self._ceilings):
                    if not self._ceilings_changed.wait(max(0.0, deadline - time.monotonic())):
                        raise TimeoutError("another reset is still running")
            if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("processing is busy with a batch it cannot commit")
            try:
                return head, self._reset(account_id, head, deadline)
            finally:
                self.lock.release()
        finally:
            with self._ceilings_changed:
                self._ceilings.remove(head)
                self._ceilings_changed.notify_all()
            self.wake.set()

    def _reset(self, account_id: str, head: int, deadline: float) -> dict[str, int]:
        try:
            # The store's own wait for a lock must end by the deadline too.
            self.store.busy_timeout(deadline - time.monotonic())
            while self.position < head:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"processing reached {self.position} of {head}")
                try:
                    self._run_once(0, BATCH_ENTRIES)
                except StoreUnavailable as exc:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"processing is stalled: {exc}") from None
                    time.sleep(0.05)
                    self.store.busy_timeout(deadline - time.monotonic())
            try:
                with self.store.transaction():
                    return self.store.delete_account(account_id, head)
            except StoreUnavailable as exc:
                raise TimeoutError(f"the store is unavailable: {exc}") from None
            finally:
                self.forget()
        finally:
            self.store.busy_timeout(STORE_BUSY_SECONDS)

    def close(self) -> None:
        self.store.close()
        self.claim.release()


@dataclass(slots=True)
class _Events:
    """An entry whose profile is resolved and whose event rows wait for the batch's insert."""

    seq: int
    submission: Submission
    profile: Profile
    rows: list[EventInsert]
    keys: list[tuple[str, str, bool]]  # metric id, dedup key, whether it was a unique_id
    results: list[Result]  # "stored" until the insert says otherwise
    notes: str | None
    properties: list[dict[str, Any]]  # each row's event properties (not decoded again)


def _touched(outcomes: list[OutcomeRow]) -> dict[str, set[str]]:
    """account → the profiles the batch resolved (whose segments may have changed)."""
    touched: dict[str, set[str]] = {}
    for row in outcomes:
        if row[4] is not None:
            touched.setdefault(row[1], set()).add(row[4])
    return touched


def _join(detail: str, notes: str | None) -> str:
    return f"{detail}; {notes}" if notes else detail


def _slots(s: Submission) -> int:
    """How many outcomes a submission has: one per event, or one for a profile-only change."""
    return max(1, len(s.events))


def _row(seq: int, s: Submission, profile_id: str | None, results: list[Result]) -> OutcomeRow:
    results_blob = pack_results(results)
    return (seq, s.account_id, s.job_id, s.receipt_id, profile_id, results_blob, s.job_group)
