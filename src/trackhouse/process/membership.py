"""Membership: lists' and segments' members, kept in the processor's batch transaction.

After a batch's events and profile changes are applied (and its profiles written), the lists
changed by the batch's list submissions are updated, and then every active segment of each
touched profile's account is evaluated on that profile: a profile that now matches joins, one
that no longer does leaves. Each join and leave is written with its time and cause in the same
transaction as the events that caused it, so a crash loses neither and never repeats one.

A new or edited definition is computed over the account's existing profiles in the
background: a page of profiles at a time, each page its own transaction, between batches
(`Membership.compute`), so ingestion keeps going meanwhile. Until the last page the segment is
`pending` (Klaviyo's `is_processing`). Joins found this way have the cause "definition":
editing a definition triggers no flow (reference/segments-flows.md § 3).

Definitions relative to now ("in the last 30 days", anniversaries) change with the clock
alone: every TRACKHOUSE_SEGMENT_SWEEP seconds (an hour by default) such segments are computed
again the same way, with the cause "time" (`Membership.sweep`).

Segments that name other segments in membership conditions are evaluated after those (the
API refuses a cycle), so one batch settles a chain of them.

On the embedded store, where this processor is the one writer, what a batch leaves of each
profile it evaluated is remembered once the batch commits (`_Known`): its memberships, and
the measures of its metric conditions whose timeframe does not move with the clock, which
the next batch brings up to date by adding the profile's new events instead of reading its
events again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.process.identity import ProfileBook
from trackhouse.process.profiles import Profile, decode_profile
from trackhouse.segments.definition import (
    Definition,
    DefinitionError,
    MetricCondition,
    PropertyCondition,
    depends_on_time,
    groups_of,
    metrics_of,
    parse_definition,
)
from trackhouse.segments.evaluate import (
    EventTest,
    Measure,
    Test,
    add_measures,
    compile_definition,
    event_test,
    measure_events,
    measure_values,
)
from trackhouse.store.base import MembershipChange, SegmentRow, StoreWriter

logger = logging.getLogger("trackhouse.process")
PAGE_PROFILES = 500  # profiles per page of a background computation
Clock = Callable[[str], datetime]  # an account's now (trackhouse/clock.py)
_props = msgspec.json.Decoder(dict[str, Any])
_fingerprint = msgspec.msgpack.Encoder().encode
# What this processor remembers of profiles (embedded store: `_Known`) is dropped whole, at a
# commit, once it is estimated to hold about this much.
MAX_REMEMBERED_BYTES = 64 * 1024 * 1024
_ENTRY_BYTES, _ITEM_BYTES = 300, 100  # estimated: per profile, per membership or measure


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _joined(at: str) -> datetime:
    return datetime.fromisoformat(at)


class _Event(msgspec.Struct, array_like=True, gc=False):
    """An event as metric conditions read it (a Struct: made in C, hundreds of thousands a
    batch); its properties decoded on first use."""

    time: int
    value: float | None
    raw: bytes
    decoded: dict[str, Any] | None = None

    @property
    def properties(self) -> dict[str, Any]:
        if self.decoded is None:
            self.decoded = _props.decode(self.raw)
        return self.decoded


class _New(msgspec.Struct, array_like=True, gc=False):
    """An event of the batch: its properties are at hand already."""

    time: int
    value: float | None
    properties: dict[str, Any]


# The batch's stored events: EventInsert rows (number, account, profile, metric, time, key,
# value…), each with its properties.
Stored = list[tuple[tuple[Any, ...], dict[str, Any]]]
# The batch's new events, by profile and metric.
Arrived = dict[str, dict[str, list[_New]]]
# Static metric conditions by metric, one per `events_key`, each with its test of an event
# (None: it takes every event).
Measured = dict[str, list[tuple[MetricCondition, EventTest | None]]]


def arrivals(stored: Stored) -> Arrived:
    """The stored events, by profile and metric."""
    found: Arrived = {}
    for row, properties in stored:
        by_metric = found.get(row[2])
        if by_metric is None:
            by_metric = found[row[2]] = {}
        event = _New(row[4], row[6], properties)
        events = by_metric.get(row[3])
        if events is None:
            by_metric[row[3]] = [event]
        else:
            events.append(event)
    return found


def _measured(segments: list[Segment]) -> Measured:
    found: Measured = {}
    keys: set[str] = set()
    for s in segments:
        for c, test in s.static:
            if c.events_key not in keys:
                keys.add(c.events_key)
                found.setdefault(c.metric_id, []).append((c, test))
    return found


def _add_new(
    measures: dict[str, Measure],
    conditions: list[tuple[MetricCondition, EventTest | None]],
    events: list[_New],
    now: datetime,
) -> None:
    """Bring the measures (by `events_key`) of a metric's conditions up to date with its new
    events; conditions that take all of them share one measure of them."""
    every: Measure | None = None
    for condition, test in conditions:
        key = condition.events_key
        measure = measures.get(key)
        if measure is None:
            continue
        if test is not None:
            taken = [e.value for e in events if test(e, now)]
            if len(taken) < len(events):
                measures[key] = add_measures(measure, measure_values(taken))
                continue
        if every is None:
            every = measure_values([e.value for e in events])
        measures[key] = add_measures(measure, every)


@dataclass(slots=True)
class _Facts:
    """One profile's memberships, its events of the metrics its segments need, and the
    measures of its static metric conditions known already (by `events_key`)."""

    groups: dict[str, str]  # group id → joined at
    by_metric: dict[str, list[_Event]] = field(default_factory=dict)
    measures: dict[str, Measure] = field(default_factory=dict)

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        known = self.measures.get(condition.events_key)  # (static conditions' only)
        if known is not None:
            return known
        known = measure_events(condition, self.by_metric.get(condition.metric_id, ()), now)
        if condition.static:  # its events were read: measured once for every condition like it
            self.measures[condition.events_key] = known
        return known

    def joined(self, group_id: str) -> datetime | None:
        at = self.groups.get(group_id)
        return None if at is None else _joined(at)


@dataclass(slots=True)
class _Known:
    """A profile as this processor last committed it (embedded store): the fingerprint of its
    content when its segments were last evaluated, its memberships, and the measures of its
    static metric conditions — kept up to date by adding each batch's new events, so that
    its events need not be read again."""

    mark: bytes
    groups: dict[str, str]
    measures: dict[str, Measure]

    def weight(self) -> int:
        return _ENTRY_BYTES + _ITEM_BYTES * (len(self.groups) + len(self.measures))


@dataclass(frozen=True, slots=True)
class Segment:
    id: str
    version: int
    definition: Definition
    metrics: frozenset[str]  # counted or summed
    filtered: frozenset[str]  # of those, the ones a condition filters by event properties
    groups: frozenset[str]  # lists and segments named
    # Whether it can change for a profile whose content did not: it reads `updated` or
    # `last_event_date` (moved by every event), or the clock.
    volatile: bool
    measured: tuple[MetricCondition, ...]  # its metric conditions
    relative: frozenset[str]  # the metrics of those whose timeframe moves with the clock
    static: tuple[tuple[MetricCondition, EventTest | None], ...]  # the others, each its test
    test: Test  # the definition, compiled

    @staticmethod
    def of(segment_id: str, version: int, definition: Definition) -> Segment:
        conditions = [c for group in definition.groups for c in group]
        measured = tuple(c for c in conditions if isinstance(c, MetricCondition))
        filtered = {c.metric_id for c in measured if c.metric_filters}
        moving = any(isinstance(c, PropertyCondition)
                     and c.property.section in ("updated", "last_event_date")
                     for c in conditions)  # fmt: skip
        relative = frozenset(c.metric_id for c in measured if not c.static)
        return Segment(segment_id, version, definition, frozenset(metrics_of(definition)),
                       frozenset(filtered), frozenset(groups_of(definition)),
                       moving or depends_on_time(definition), measured, relative,
                       tuple((c, event_test(c)) for c in measured if c.static),
                       compile_definition(definition))  # fmt: skip


def fingerprint(profile: Profile) -> bytes:
    """What segment conditions read of a profile but its dates: equal fingerprints, equal
    answers (for segments that are not `volatile`)."""
    return _fingerprint((profile.identifiers, profile.secondary_emails, profile.attributes,
                         profile.location, profile.properties))  # fmt: skip


def in_order(
    rows: list[SegmentRow], parse: Callable[[SegmentRow], Segment | None]
) -> list[Segment]:
    """Segments, each after the segments its conditions name (a cycle, which the API refuses,
    is broken arbitrarily rather than looping)."""
    parsed = {r.id: parse(r) for r in rows}
    segments = {sid: s for sid, s in parsed.items() if s is not None}
    ordered: list[Segment] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(sid: str) -> None:
        if state.get(sid):
            return
        state[sid] = 1
        for dep in sorted(groups_of(segments[sid].definition)):
            if dep in segments:
                visit(dep)
        state[sid] = 2
        ordered.append(segments[sid])

    for sid in sorted(segments):
        visit(sid)
    return ordered


class Membership:
    def __init__(self, store: StoreWriter, book: ProfileBook, clock: Clock) -> None:
        self.store = store
        self.book = book
        self.clock = clock
        # Told of the joins of each transaction, in it (the flows they may enter).
        self.on_joins: Callable[[list[MembershipChange]], None] | None = None
        self._parsed: dict[tuple[str, int, str], Segment | None] = {}
        # Profiles as last committed, where this processor is the store's one writer
        # (`store.shared` false): then nothing else changes a profile, its events or its
        # memberships — but the API's deletes of lists and segments, after which all of it
        # is forgotten (`_check_deletions`).
        self._known: dict[str, _Known] = {}
        self._deletions = -1
        self._weight = 0
        self._staged: dict[str, _Known] = {}
        # By account, the measures (`events_key`) the profiles remembered may hold.
        self._kept: dict[str, set[str]] = {}

    def _parse(self, row: SegmentRow) -> Segment | None:
        """The stored definition, parsed once per version; None (and the segment is left as
        it is) if this version of trackhouse cannot read it: one bad segment must not turn a
        batch's events into rejections."""
        key = (row.id, row.version, row.definition)  # a deleted segment's id may come back
        if key in self._parsed:
            return self._parsed[key]
        if len(self._parsed) > 10_000:
            self._parsed.clear()
        found: Segment | None = None
        try:
            definition = parse_definition(msgspec.json.decode(row.definition))
            found = Segment.of(row.id, row.version, definition)
        except (DefinitionError, msgspec.DecodeError) as exc:  # logged once per version
            logger.error("segment %s has a definition this server cannot read: %s", row.id, exc)
        self._parsed[key] = found
        return found

    def _facts(
        self,
        account_id: str,
        profile_ids: list[str],
        segments: list[Segment],
        wanted: dict[str, list[Segment]] | None = None,
        arrived: Arrived | None = None,
    ) -> dict[str, _Facts]:
        """Each profile's memberships and what the segments to be evaluated on it (`wanted`,
        by profile; all of `segments` when None) need of its events. Where the profile is
        remembered (`wanted` given), its memberships and static measures are taken from
        there, the measures brought up to date with the values of its new events
        (`arrived`); only the events of metrics that are not measured so are read."""
        known = {} if wanted is None else {pid: k for pid in profile_ids
                                            if (k := self._known.get(pid)) is not None}  # fmt: skip
        unknown = [pid for pid in profile_ids if pid not in known]
        current = self.store.memberships(account_id, unknown) if unknown else {}
        facts = {pid: _Facts(dict(current.get(pid, {}))) for pid in unknown}
        arrived = arrived or {}
        measured = _measured(segments) if known else {}
        now = self.clock(account_id) if measured else None  # (the store is asked only then)
        for pid, k in known.items():
            # Every measure remembered is one the account's segments take now (`_keep`).
            measures = dict(k.measures)
            for metric, events in arrived.get(pid, {}).items():
                conditions = measured.get(metric)
                if conditions is not None and now is not None:
                    _add_new(measures, conditions, events, now)
            facts[pid] = _Facts(dict(k.groups), measures=measures)
        # The events to read: of each metric some condition to be evaluated measures and
        # that is not relative to now or not measured already.
        every_key = {c.events_key for s in segments for c, _ in s.static}
        relative = any(s.relative for s in segments)
        reading: dict[str, set[str]] = {}
        for pid in profile_ids:
            have = facts[pid].measures
            if pid in known and not relative and len(have) == len(every_key):
                continue  # it has every measure (what it has is among them)
            for s in segments if wanted is None else wanted.get(pid, ()):
                for c in s.measured:
                    if not c.static or c.events_key not in have:
                        reading.setdefault(pid, set()).add(c.metric_id)
        if reading:
            metrics = sorted(set().union(*reading.values()))
            filtered = sorted({m for s in segments for m in s.filtered} & set(metrics))
            for pid, metric, t, value, raw in self.store.metric_events(
                account_id, sorted(reading), metrics, filtered
            ):
                facts[pid].by_metric.setdefault(metric, []).append(_Event(t, value, raw or b"{}"))
        return facts

    def _keep(self, account_id: str, segments: list[Segment], every: bool = True) -> None:
        """Before profiles of the account are remembered with measures of these segments
        (`every`: all its active segments): if a measure remembered is one no segment takes
        any more (a segment edited or paused), forget every profile, since no batch keeps
        such a measure up to date."""
        keys = {c.events_key for s in segments for c, _ in s.static}
        kept = self._kept.get(account_id)
        if every and kept is not None and not kept <= keys:
            self.forget()
            kept = None
        self._kept[account_id] = keys if kept is None else kept | keys

    def _check_deletions(self) -> None:
        """In a transaction: forget every profile remembered if a list or segment was deleted
        since the last look (a deleted segment's members must not linger, in case its id
        were drawn again)."""
        if self.store.shared:
            return
        deletions = self.store.groups_deleted()
        if deletions != self._deletions:
            self.forget()
            self._deletions = deletions

    def committed(self) -> None:
        """The transaction whose evaluations were staged is committed: remember them."""
        for pid, k in self._staged.items():
            old = self._known.get(pid)
            self._weight += k.weight() - (old.weight() if old is not None else 0)
            self._known[pid] = k
        self._staged.clear()
        if self._weight > MAX_REMEMBERED_BYTES:
            self.forget()

    def forget(self) -> None:
        self._known.clear()
        self._staged.clear()
        self._kept.clear()
        self._weight = 0

    def _stage(self, pid: str, mark: bytes | None, facts: _Facts) -> None:
        """Remember the profile as this transaction leaves it, once it commits. `mark`: its
        content's fingerprint, every segment evaluated on it; None: those remembered still
        hold (if any)."""
        if self.store.shared:
            return
        if mark is None:
            old = self._staged.get(pid) or self._known.get(pid)
            if old is None:
                return
            mark = old.mark
        self._staged[pid] = _Known(mark, facts.groups, facts.measures)

    def _to_evaluate(
        self,
        profile: Profile,
        segments: list[Segment],
        metrics: AbstractSet[str],
        chosen: dict[frozenset[str], list[Segment]],
    ) -> tuple[list[Segment], bytes | None]:
        """The segments whose answer may have changed for the profile in this batch: all of
        them if its content changed (or is not remembered); otherwise the volatile ones, those
        counting a metric it has new events of, and those naming lists or segments (whose
        members may have changed in this batch). And its content's fingerprint. (`chosen`:
        those lists so far in the batch, by the metrics of the new events, shared.)"""
        if self.store.shared:
            return segments, None
        mark = fingerprint(profile)
        known = self._known.get(profile.id)
        if known is None or known.mark != mark:
            return segments, mark
        key = frozenset(metrics)
        found = chosen.get(key)
        if found is None:
            found = chosen[key] = [s for s in segments
                                   if s.volatile or s.groups or s.metrics & key]  # fmt: skip
        return found, mark

    def apply(
        self,
        touched: dict[str, set[str]],
        list_changes: list[tuple[str, str, str, bool, str]],
        stored: Stored | None = None,
    ) -> None:
        """After a batch: its list changes (account, list, profile, add, at), then the
        segments of every profile it touched (account → profile ids) whose answer may have
        changed (`stored`: the events stored by the batch)."""
        joins: list[MembershipChange] = []
        leaves: list[MembershipChange] = []
        changed_lists: dict[str, list[tuple[str, str, str, bool, str]]] = {}
        for change in list_changes:
            changed_lists.setdefault(change[0], []).append(change)
        self._check_deletions()
        accounts = sorted(touched.keys() | changed_lists.keys())
        segments_of = {a: in_order(self.store.active_segments(a), self._parse) for a in accounts}
        for account_id in accounts:
            self._keep(account_id, segments_of[account_id])
        arrived = arrivals(stored) if stored and any(segments_of.values()) else {}
        nothing: dict[str, list[_New]] = {}
        for account_id in accounts:
            changes = changed_lists.get(account_id, [])
            segments = segments_of[account_id]
            if not segments:
                # No profile is read back (the book may have just been dropped): the list
                # changes' profiles, and the remembered ones.
                remembered = {pid for pid in touched.get(account_id, ()) if pid in self._known}
                pids = sorted({pid for _, _, pid, _, _ in changes} | remembered)
                facts = self._facts(account_id, pids, [], {})
                self._change_lists(account_id, changes, facts, joins, leaves)
                for pid in pids:
                    self._stage(pid, None, facts[pid])
                continue
            pids = sorted(touched.get(account_id, set()))
            now = self.clock(account_id)
            at = iso(now)
            self.store.lock_profiles(account_id, pids)
            profiles = {pid: self.book.get(account_id, pid) for pid in pids}
            wanted: dict[str, list[Segment]] = {}
            marks: dict[str, bytes | None] = {}
            chosen: dict[frozenset[str], list[Segment]] = {}
            for pid, p in profiles.items():
                if p is None:
                    wanted[pid], marks[pid] = [], None
                else:
                    metrics = arrived.get(pid, nothing).keys()
                    wanted[pid], marks[pid] = self._to_evaluate(p, segments, metrics, chosen)
            facts = self._facts(account_id, pids, segments, wanted, arrived)
            self._change_lists(account_id, changes, facts, joins, leaves)
            for pid in pids:
                profile = profiles[pid]
                if profile is None:
                    continue
                if wanted[pid]:
                    self._evaluate(account_id, profile, facts[pid], wanted[pid], now, at,
                                   "processing", joins, leaves)  # fmt: skip
                self._stage(pid, marks[pid], facts[pid])
        if joins or leaves:
            self.store.change_memberships(joins, leaves)
            if joins and self.on_joins is not None:
                self.on_joins(joins)

    @staticmethod
    def _change_lists(
        account_id: str,
        changes: list[tuple[str, str, str, bool, str]],
        facts: dict[str, _Facts],
        joins: list[MembershipChange],
        leaves: list[MembershipChange],
    ) -> None:
        for _, list_id, pid, add, when in changes:
            groups = facts[pid].groups
            if add and list_id not in groups:
                joins.append(("list", account_id, list_id, pid, when, "processing"))
                groups[list_id] = when
            elif not add and list_id in groups:
                leaves.append(("list", account_id, list_id, pid, when, "processing"))
                del groups[list_id]

    def _evaluate(
        self,
        account_id: str,
        profile: Profile,
        facts: _Facts,
        segments: list[Segment],
        now: datetime,
        at: str,
        cause: str,
        joins: list[MembershipChange],
        leaves: list[MembershipChange],
    ) -> None:
        groups = facts.groups
        for segment in segments:
            member = segment.id in groups
            if segment.test(profile, now, facts):
                if not member:
                    joins.append(("segment", account_id, segment.id, profile.id, at, cause))
                    groups[segment.id] = at
            elif member:
                leaves.append(("segment", account_id, segment.id, profile.id, at, cause))
                del groups[segment.id]

    def sweep(self) -> int:
        """Start computing again every settled segment whose definition is relative to now,
        with the cause "time": "in the last 30 days" stops matching with no new event. How
        many were started."""
        with self.store.transaction():
            due = []
            for account_id, row in self.store.settled_segments():
                segment = self._parse(row)
                if segment is not None and depends_on_time(segment.definition):
                    due.append((account_id, row.id, row.version))
            if due:
                self.store.start_sweeps(due)
            return len(due)

    def compute(self, limit: int = PAGE_PROFILES) -> int:
        """One page of the oldest pending computation, in its own transaction; how many
        profiles it evaluated (0: nothing is pending)."""
        try:
            evaluated = self._compute(limit)
        except BaseException:
            self.forget()
            raise
        self.committed()
        return evaluated

    def _compute(self, limit: int) -> int:
        with self.store.transaction():
            self._check_deletions()
            pending = self.store.pending_segments()
            if not pending:
                return 0
            account_id, segment_id = pending[0]
            row = self.store.segment_for_update(account_id, segment_id)
            if row is None or not row.pending or not row.is_active:
                return 0  # finished, deleted or paused meanwhile: the next call goes on
            segment = self._parse(row)
            if segment is None:  # nothing to compute: its members stay as they are
                self.store.segment_progress(account_id, segment_id, row.version, None)
                return 1
            # The segments that name this one (through others too) are evaluated after it on
            # the same profiles: its changes would otherwise reach them only when each
            # profile is next touched.
            ordered = in_order(self.store.active_segments(account_id), self._parse)
            affected = {segment.id}
            for other in ordered:  # in order: a segment comes after those it names
                if groups_of(other.definition) & affected:
                    affected.add(other.id)
            segments = [segment] + [s for s in ordered if s.id in affected and s.id != segment.id]
            self._keep(account_id, segments, every=False)
            page = self.store.profile_page(account_id, row.cursor or "", limit)
            pids = [pid for pid, _ in page]
            facts = self._facts(account_id, pids, segments)
            joins: list[MembershipChange] = []
            leaves: list[MembershipChange] = []
            now = self.clock(account_id)
            at = iso(now)
            for pid, doc in page:
                self._evaluate(account_id, decode_profile(doc), facts[pid], segments, now, at,
                               row.cause, joins, leaves)  # fmt: skip
                known = self._known.get(pid)
                if known is not None:  # what was read is the whole truth: remembered too
                    measures = {**known.measures, **facts[pid].measures}
                    self._staged[pid] = _Known(known.mark, facts[pid].groups, measures)
            if joins or leaves:
                self.store.change_memberships(joins, leaves)
            if joins and self.on_joins is not None:
                self.on_joins(joins)
            done = len(page) < limit
            self.store.segment_progress(account_id, segment_id, row.version,
                                        None if done else pids[-1])  # fmt: skip
            return max(1, len(page))
