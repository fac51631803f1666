"""What every store backend offers, and the shapes it answers in.

`Store` is what the API and the query layer read; `StoreWriter` is the processor's batch
transaction, as named domain operations (claim an identifier, insert events with their dedup
result, record outcomes, advance the position) — never SQL. `store/sqlite/` and
`store/postgres/` implement both; `trackhouse.backends` picks one.

Events are numbered `entry * EVENTS_PER_ENTRY + index`, where `entry` is the log entry's
number (unique in its log, whichever partition holds it): the event's id on the wire is that
number in base 62 (`event_id`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from trackhouse.clock import ClockSetting
from trackhouse.log import EventLog

MAX_EVENT_NUMBER = 2**63 - 1  # SQLite's and PostgreSQL's largest integer
# A submission holds at most this many events; its events are numbered from entry * this.
EVENTS_PER_ENTRY = 1000
# Event ids on the wire are the event number in base 62: short like Klaviyo's, stable.
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def event_id(number: int) -> str:
    out = ""
    while True:
        number, rest = divmod(number, 62)
        out = _DIGITS[rest] + out
        if not number:
            return out


def event_number(event_id: str) -> int | None:
    """The number of an event id from `event_id()`, or None if it cannot be one."""
    if not 0 < len(event_id) <= 11:
        return None
    value = 0
    for char in event_id:
        digit = _DIGITS.find(char)
        if digit < 0:
            return None
        value = value * 62 + digit
    # Eleven base-62 digits (the shape of Klaviyo's ids) reach past 2**63: no event is there.
    return value if value <= MAX_EVENT_NUMBER else None


OUTCOMES = ("stored", "deduplicated", "rejected")
Result = tuple[str, int | None, str | None]  # outcome, event number, detail


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event (or of a profile-only submission, as index 0)."""

    seq: int  # the log entry's number
    idx: int
    outcome: str  # stored, deduplicated, rejected
    profile_id: str | None
    event_number: int | None  # the stored event, or the one a duplicate matched
    detail: str | None  # why rejected, the dedup key, identifier conflicts
    # A bulk job's profile group (its index in the request); None for other submissions, and
    # for outcomes stored before it was recorded (their groups had consecutive log positions).
    job_group: int | None = None


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[tuple[str, int | None, str | None]]).decode


def pack_results(results: list[Result]) -> bytes:
    """An entry's outcomes, one row per entry: one per event would cost as much as the event."""
    return _pack(results)


def unpack_results(blob: bytes) -> list[Result]:
    return _unpack(blob)


def outcomes_of(rows: list[tuple[Any, ...]]) -> list[Outcome]:
    """Outcomes from rows of (entry, profile id, packed results, bulk group)."""
    return [
        Outcome(seq, idx, outcome, profile_id, number, detail, group)
        for seq, profile_id, blob, group in rows
        for idx, (outcome, number, detail) in enumerate(_unpack(bytes(blob)))
    ]


# entry, account, job, receipt, profile, packed results, bulk group
OutcomeRow = tuple[int, str, str | None, str | None, str | None, bytes, int | None]
# id, account, document, created, updated, last event time
ProfileRow = tuple[str, str, bytes, str, str, int | None]
# number, account, profile, metric, time, dedup key, value, currency, backfill, properties,
# received at
EventInsert = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class EventRow:
    number: int
    profile_id: str
    metric_id: str
    time: int
    dedup_key: str
    value: float | None
    value_currency: str | None
    properties: bytes  # JSON


@dataclass(frozen=True, slots=True)
class MetricRow:
    id: str
    name: str
    service: str
    created: str


@dataclass(frozen=True, slots=True)
class ListRow:
    """A list's own attributes (its members are rows of `list_members`)."""

    id: str
    name: str
    opt_in_process: str  # double_opt_in | single_opt_in
    created: str  # ISO 8601, UTC, to the second
    updated: str


@dataclass
class ListQuery:
    """A page of an account's lists: filters, order and where the page starts."""

    account_id: str
    ids: list[str] | None = None  # any of these
    names: list[str] | None = None  # any of these
    created_after: str | None = None  # created > this (ISO 8601, UTC, to the second)
    updated_after: str | None = None
    sort: str = "id"  # id, name, created or updated; ties broken by id
    descending: bool = False
    after: tuple[str, str] | None = None  # (sort value, id) of the row before this page
    limit: int = 10


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """A segment's own attributes, its definition as given (JSON), and the state of its
    background computation: `pending` while its members are being computed over the existing
    profiles (Klaviyo's `is_processing`), `cursor` the last profile id computed so far."""

    id: str
    name: str
    definition: str  # JSON
    is_active: bool
    is_starred: bool
    created: str
    updated: str
    pending: bool
    cursor: str | None = None
    version: int = 1  # moved by every change of the definition
    # Why it is pending: "definition" (new, edited, made active again) or "time" (a
    # definition relative to now, recomputed as the clock moves).
    cause: str = "definition"


@dataclass
class SegmentQuery:
    """A page of an account's segments (as ListQuery), with its own filters."""

    account_id: str
    ids: list[str] | None = None
    names: list[str] | None = None
    created_after: str | None = None
    updated_after: str | None = None
    is_active: bool | None = None
    is_starred: bool | None = None
    sort: str = "id"
    descending: bool = False
    after: tuple[str, str] | None = None
    limit: int = 10


@dataclass(frozen=True, slots=True)
class FlowRow:
    """A flow's own attributes and its definition as stored (JSON, with the actions' ids);
    `trigger` is (metric | list | segment, its id), for finding the flows an event or a join
    can enter."""

    id: str
    name: str
    status: str  # draft | manual | live
    archived: bool
    trigger_type: str  # Klaviyo's: Metric, Added to List
    trigger: tuple[str, str]
    definition: str  # JSON
    created: str
    updated: str


@dataclass(frozen=True, slots=True)
class FlowActionRow:
    """One action of a flow: its definition as stored (JSON), and the id of its message for
    the actions that send one (`message_id`, Klaviyo's flow-message)."""

    id: str
    flow_id: str
    type: str
    status: str  # draft | manual | live | disabled
    definition: str  # JSON
    message_id: str | None
    created: str
    updated: str


GROUP_TABLES = {"list": ("list_members", "list_id"), "segment": ("segment_members", "segment_id")}


@dataclass
class MemberQuery:
    """A page of a list's or segment's members, in the order they joined (ties by id)."""

    account_id: str
    kind: str  # list | segment
    group_id: str
    profile_ids: list[str] | None = None
    identifiers: tuple[str, list[Any]] | None = None  # (kind, identifier keys)
    joined_since: str | None = None  # joined_at >= this (ISO 8601, UTC, to the second)
    joined_until: str | None = None  # joined_at < this
    descending: bool = False
    after: tuple[str, str] | None = None  # (joined at, profile id) of the row before
    limit: int = 20


# A join or leave: kind (list | segment), account, group, profile, when (ISO 8601), and the
# cause: "processing" (an event, a profile change, a list change), "time" (the clock moved)
# or "definition" (a new or edited definition; segment-triggered flows never enter on these).
MembershipChange = tuple[str, str, str, str, str, str]
# A recorded join or leave: id, kind, group, profile, joined (else left), at, cause.
MembershipChangeRow = tuple[int, str, str, str, bool, str, str]
# A profile's event of a metric, as segment conditions read it: profile, metric, time, value,
# properties (JSON; None where not asked for).
MetricEventRow = tuple[str, str, int, float | None, bytes | None]


@dataclass
class EventQuery:
    """A page of an account's events: filters, order and where the page starts."""

    account_id: str
    metric_id: str | None = None
    profile_id: str | None = None
    since: int | None = None  # time >= since
    until: int | None = None  # time < until
    descending: bool = False
    after: tuple[int, int] | None = None  # (time, number) of the row before this page
    limit: int = 200


@dataclass
class ProfileQuery:
    """Order and time filters of a profile listing (ISO 8601 strings compare in order)."""

    sort: str = "id"  # id, created or updated
    descending: bool = False
    created_since: str | None = None
    created_until: str | None = None
    updated_since: str | None = None
    updated_until: str | None = None


class ProcessingClaim(Protocol):
    """The right to process some of the log's partitions into the store."""

    def partitions(self) -> list[int]:
        """The partitions held now (a shared log's are rebalanced as workers come and go)."""

    def fileno(self) -> int | None:
        """A descriptor that carries the claim to a child process (`claim_processing`'s
        `inherited`): the embedded store's lock file; None for leases in the store."""

    def release(self) -> None: ...


class StoreWriter(Protocol):
    """The processor's connection: one batch transaction at a time."""

    # True when other processors write the same store: nothing read may be kept past the
    # transaction it was read in (identity caches are dropped at every batch).
    shared: bool

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing: committed when the block ends, rolled back if it raises."""

    def busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer's lock before StoreUnavailable."""

    def identifier_owner(self, account_id: str, kind: str, key: str) -> str | None: ...

    def identifier_owners(
        self, keys: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], str]:
        """The owners of many (account, kind, key) at once (absent ones are left out)."""

    def profile_docs(self, ids: list[tuple[str, str]]) -> dict[str, bytes]:
        """The documents of many (account, profile id) at once (absent ones left out)."""

    def claim_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Claim (account, kind, key) for a profile each; StoreConflict when another profile
        has one of them (claimed concurrently)."""

    def release_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Only each profile's own claim: never another profile's row under the same key."""

    def profile_doc(self, account_id: str, profile_id: str) -> bytes | None: ...

    def save_profiles(self, rows: list[ProfileRow]) -> None:
        """Write profiles back; StoreConflict if one read in this transaction was changed by
        another writer since (its version moved)."""

    def metric_id(self, account_id: str, name: str, service: str) -> str | None: ...

    def metric_count(self, account_id: str) -> int: ...

    def add_metric(
        self, metric_id: str, account_id: str, name: str, service: str, created: str
    ) -> bool:
        """False when the id is taken already (the caller draws another)."""

    def insert_events(self, rows: list[EventInsert]) -> set[int]:
        """Insert the event rows the dedup key lets in, in order (the first committed wins);
        the numbers of those inserted."""

    def event_with_key(self, account_id: str, profile_id: str, metric_id: str, key: str) -> int:
        """The number of the stored event with this dedup key (the one a duplicate repeats)."""

    def record_outcomes(self, rows: list[OutcomeRow]) -> None: ...

    # -- lists and segments: membership --------------------------------------------------

    def list_exists(self, account_id: str, list_id: str) -> bool: ...

    def active_segments(self, account_id: str) -> list[SegmentRow]:
        """The account's segments whose membership is kept (is_active)."""

    def lock_profiles(self, account_id: str, profile_ids: list[str]) -> None:
        """Hold the profiles until the transaction ends: whoever evaluates a profile's
        segments next sees every change committed before (several workers)."""

    def memberships(self, account_id: str, profile_ids: list[str]) -> dict[str, dict[str, str]]:
        """Each profile's lists and segments: profile → group id → joined at (absent: none)."""

    def groups_deleted(self) -> int:
        """How many lists and segments were ever deleted (by the API): what a processor
        remembers of memberships past its transactions holds while this does not change."""

    def resets_done(self) -> int:
        """How many account resets have committed (test control), read first in a batch's
        transaction: after one by another process, what a processor remembers of the store
        no longer holds. (A shared store's processor remembers nothing past a transaction.)"""

    def metric_events(
        self,
        account_id: str,
        profile_ids: list[str],
        metric_ids: list[str],
        with_properties: list[str],
    ) -> list[MetricEventRow]:
        """The profiles' events of the metrics; their properties only for the metrics
        `with_properties` (None for the others)."""

    def change_memberships(
        self, joins: list[MembershipChange], leaves: list[MembershipChange]
    ) -> None:
        """Add and remove members, and record each change with its time and cause."""

    def pending_segments(self) -> list[tuple[str, str]]:
        """(account, segment) of every active segment whose computation is not done."""

    def segment_for_update(self, account_id: str, segment_id: str) -> SegmentRow | None:
        """The segment, held until the transaction ends (one computation page at a time)."""

    def profile_page(self, account_id: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """The account's next profiles by id after `after`, (id, document), held as
        `lock_profiles` holds them."""

    def segment_progress(
        self, account_id: str, segment_id: str, version: int, cursor: str | None
    ) -> None:
        """Record how far the computation of the definition at `version` got; None: done."""

    def settled_segments(self) -> list[tuple[str, SegmentRow]]:
        """(account, segment) of every active segment whose computation is done."""

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        """Compute these (account, segment, version) again from the first profile, with the
        cause "time" (those changed or pending meanwhile are left as they are)."""

    def clock_settings(self) -> dict[str, ClockSetting]:
        """Every account's clock that is not on real time (trackhouse/clock.py)."""

    def advance(self, partition: int, old: int, new: int) -> None:
        """Move the partition's processed position from `old` to `new`, in the batch's
        transaction; ProcessingFenced if it is not at `old` (another worker moved it)."""

    def processed_position(self, partition: int) -> int:
        """The partition's position as committed (read when a partition is taken on)."""

    def before_commit(self, partition: int, position: int) -> None:
        """The batch's last step: ProcessingHeld if a reset elsewhere now holds the partition
        short of `position` (the batch is redone up to the hold)."""

    def reading(self, partition: int) -> AbstractContextManager[int | None]:
        """Around reading a batch's entries from the log: the position a reset in another
        process holds the partition at, where holds are read with the entries (the embedded
        store; None elsewhere, and where none is held)."""

    def ceiling(self, partition: int) -> int | None:
        """The position past which a reset in progress holds the partition's processing
        (asked only once a batch was held, until the hold is gone)."""

    def delete_account(self, account_id: str, reset_seq: int) -> dict[str, int]:
        """Delete the account's processed data (test control); rows per table."""

    def close(self) -> None: ...


class Store(Protocol):
    """Reads for the API and the query layer, and what starts processing."""

    def writer(self) -> StoreWriter: ...

    def claim_processing(self, inherited: int | None = None) -> ProcessingClaim:
        """The right to process (ProcessorRunning where another processor holds it);
        `inherited`: the descriptor of the claim `serve` took for its second process (the
        embedded store's; ignored where claims are leases in the store)."""

    def bind_log(self, log: EventLog, log_name: str) -> None:
        """Refuse a log this store was not built from (LogMismatch)."""

    def positions(self) -> dict[int, int]:
        """Every partition's processed position."""

    def unprocessed(self, log: EventLog) -> int:
        """Log entries committed (by any API process) and not processed yet."""

    def job_outcomes(self, account_id: str, job_id: str) -> list[Outcome]: ...

    def receipt_outcomes(self, account_id: str, receipt_id: str) -> list[Outcome]: ...

    def outcome_counts(self) -> dict[str, int]: ...

    def profile(self, account_id: str, profile_id: str) -> bytes | None: ...

    def events(self, q: EventQuery) -> list[EventRow]: ...

    def event(self, account_id: str, number: int) -> EventRow | None: ...

    def metrics(
        self,
        account_id: str,
        ids: list[str] | None = None,
        after: str | None = None,
        limit: int = 200,
    ) -> list[MetricRow]: ...

    def profiles(
        self,
        account_id: str,
        ids: list[str] | None = None,
        identifiers: tuple[str, list[str]] | None = None,
        after: str | None = None,
        limit: int = 100,
        q: ProfileQuery | None = None,
    ) -> list[bytes]: ...

    # -- lists: written by the API process itself (their members, by processing) ----------

    def add_list(self, account_id: str, row: ListRow) -> bool:
        """Store a new list; False if its id is taken (draw another)."""

    def lists(self, q: ListQuery) -> list[ListRow]: ...

    def update_list(
        self, account_id: str, list_id: str, changes: dict[str, str], updated: str
    ) -> ListRow | None:
        """Set `changes` (name, opt_in_process) and `updated`; the list, or None if absent."""

    def delete_list(self, account_id: str, list_id: str) -> bool:
        """Delete a list and its memberships; False if there was no such list."""

    def list_profile_counts(self, account_id: str, list_ids: list[str]) -> dict[str, int]: ...

    def members(self, q: MemberQuery) -> list[tuple[bytes, str]]:
        """A page of a list's or segment's members: (profile document, joined at)."""

    def profile_groups(self, account_id: str, profile_id: str, kind: str) -> list[str]:
        """The ids of the lists (or segments) the profile is a member of."""

    # -- segments: written by the API process; their members, by processing --------------

    def add_segment(self, account_id: str, row: SegmentRow) -> bool:
        """Store a new segment; False if its id is taken by a list or a segment."""

    def segments(self, q: SegmentQuery) -> list[SegmentRow]: ...

    def update_segment(
        self, account_id: str, segment_id: str, changes: dict[str, Any], updated: str
    ) -> SegmentRow | None:
        """Set `changes` (name, definition, is_active, is_starred) and `updated`; a new
        definition starts its computation again. The segment, or None if absent."""

    def delete_segment(self, account_id: str, segment_id: str) -> bool:
        """Delete a segment, its members and their changes; False if there was none."""

    def segment_profile_counts(self, account_id: str, ids: list[str]) -> dict[str, int]: ...

    def membership_changes(
        self, account_id: str, group_id: str, after: int = 0, limit: int = 1000
    ) -> list[MembershipChangeRow]:
        """The list's or segment's joins and leaves after change `after`, oldest first."""

    def segments_pending(self) -> int:
        """Active segments whose computation is not done (for /admin/wait)."""

    # -- flows: written by the API process -------------------------------------------------

    def add_flow(self, account_id: str, flow: FlowRow, actions: list[FlowActionRow]) -> bool:
        """Store a new flow and its actions; False if one of their ids is taken."""

    def flows(self, account_id: str, ids: list[str] | None = None) -> list[FlowRow]:
        """The account's flows (those of `ids` when given), by id."""

    def update_flow(
        self, account_id: str, flow_id: str, status: str, updated: str,
        actions: list[FlowActionRow], definition: str, expected: str,
        deleted: list[str] | None = None,
    ) -> FlowRow | None:  # fmt: skip
        """Set the flow's status and definition, its actions' rows (`actions`, as they are
        now) and delete the actions `deleted`, in one transaction and only if the flow's
        definition is still `expected` (a compare-and-set: concurrent edits never lose one
        another); None if the flow is gone or was changed meanwhile."""

    def delete_flow(self, account_id: str, flow_id: str) -> bool:
        """Delete a flow and its actions; False if there was none."""

    def flow_actions(
        self, account_id: str, flow_ids: list[str] | None = None, ids: list[str] | None = None,
        message_ids: list[str] | None = None,
    ) -> list[FlowActionRow]:  # fmt: skip
        """The actions of the flows, or with these ids or message ids (any given), by id."""

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        """As StoreWriter.start_sweeps: (account, segment, version) computed again from the
        first profile, with the cause "time" (when the clock was advanced)."""

    # -- test control --------------------------------------------------------------------

    def clock_settings(self) -> dict[str, ClockSetting]:
        """Every account's clock that is not on real time (trackhouse/clock.py)."""

    def set_clock(self, account_id: str, setting: ClockSetting) -> None: ...

    def move_clock(self, account_id: str, expected: ClockSetting, setting: ClockSetting) -> bool:
        """Set the clock only if it is still `expected` (compare-and-set: of two advances at
        once, one moves it and the other reads it again); whether it moved."""

    def reset_account(self, account_id: str, deadline: float) -> dict[str, int]:
        """Delete what the account had accepted when called, once every worker has processed
        it, holding processing of later entries meanwhile (test control); rows per table.
        TimeoutError past `deadline` (time.monotonic()), with nothing deleted; ResetElsewhere
        where only the processor's process can reset."""

    def reset_position(self, account_id: str) -> int:
        """The log position of the account's last reset (0 if never)."""

    def close(self) -> None: ...
