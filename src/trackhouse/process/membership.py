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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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
from trackhouse.segments.evaluate import matches
from trackhouse.store.base import MembershipChange, SegmentRow, StoreWriter

logger = logging.getLogger("trackhouse.process")
PAGE_PROFILES = 500  # profiles per page of a background computation
Clock = Callable[[], datetime]
_props = msgspec.json.Decoder(dict[str, Any])
_fingerprint = msgspec.msgpack.Encoder().encode
# Profiles whose content at their last evaluation this processor remembers (embedded store).
MAX_REMEMBERED = 200_000


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _joined(at: str) -> datetime:
    return datetime.fromisoformat(at)


@dataclass(slots=True)
class _Event:
    time: int
    value: float | None
    raw: bytes
    _properties: dict[str, Any] | None = None

    @property
    def properties(self) -> dict[str, Any]:
        if self._properties is None:
            self._properties = _props.decode(self.raw)
        return self._properties


@dataclass(slots=True)
class _Facts:
    """One profile's events of the metrics its segments need, and its memberships."""

    groups: dict[str, str]  # group id → joined at
    by_metric: dict[str, list[_Event]] = field(default_factory=dict)

    def events(self, metric_id: str) -> Iterable[_Event]:
        return self.by_metric.get(metric_id, ())

    def joined(self, group_id: str) -> datetime | None:
        at = self.groups.get(group_id)
        return None if at is None else _joined(at)


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

    @staticmethod
    def of(segment_id: str, version: int, definition: Definition) -> Segment:
        conditions = [c for group in definition.groups for c in group]
        filtered = {c.metric_id for c in conditions
                    if isinstance(c, MetricCondition) and c.metric_filters}  # fmt: skip
        moving = any(isinstance(c, PropertyCondition)
                     and c.property.section in ("updated", "last_event_date")
                     for c in conditions)  # fmt: skip
        return Segment(segment_id, version, definition, frozenset(metrics_of(definition)),
                       frozenset(filtered), frozenset(groups_of(definition)),
                       moving or depends_on_time(definition))  # fmt: skip


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
        self._parsed: dict[tuple[str, int], Segment | None] = {}
        # profile id → its fingerprint when its segments were last evaluated, as committed; only
        # where this processor is the store's one writer (`store.shared` false), since then
        # nothing else changes a profile or its memberships (the API's deletes of lists and
        # segments make the segments that name them compute again).
        self._seen: dict[str, bytes] = {}
        self._staged: dict[str, bytes] = {}

    def _parse(self, row: SegmentRow) -> Segment | None:
        """The stored definition, parsed once per version; None (and the segment is left as
        it is) if this version of trackhouse cannot read it: one bad segment must not turn a
        batch's events into rejections."""
        key = (row.id, row.version)
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
    ) -> dict[str, _Facts]:
        """Each profile's memberships, and its events of the metrics of the segments to be
        evaluated on it (`wanted`, by profile; all of `segments` when None)."""
        current = self.store.memberships(account_id, profile_ids)
        facts = {pid: _Facts(dict(current.get(pid, {}))) for pid in profile_ids}
        counting = [s for s in segments if s.metrics]
        if wanted is not None:
            needing = [pid for pid in profile_ids if any(s.metrics for s in wanted.get(pid, ()))]
            counting = [s for s in counting if any(s in wanted[pid] for pid in needing)]
        else:
            needing = profile_ids
        metrics = sorted({m for s in counting for m in s.metrics})
        if metrics and needing:
            filtered = sorted({m for s in counting for m in s.filtered})
            for pid, metric, t, value, raw in self.store.metric_events(
                account_id, needing, metrics, filtered
            ):
                facts[pid].by_metric.setdefault(metric, []).append(_Event(t, value, raw or b"{}"))
        return facts

    def committed(self) -> None:
        """The batch whose evaluations were staged is committed: remember them."""
        if len(self._seen) + len(self._staged) > MAX_REMEMBERED:
            self._seen.clear()
        self._seen.update(self._staged)
        self._staged.clear()

    def forget(self) -> None:
        self._seen.clear()
        self._staged.clear()

    def _to_evaluate(
        self,
        profile: Profile,
        segments: list[Segment],
        metrics: set[str],
    ) -> list[Segment]:
        """The segments whose answer may have changed for the profile in this batch: all of
        them if its content changed (or is not remembered); otherwise the volatile ones, those
        counting a metric it has new events of, and those naming lists or segments (whose
        members may have changed in this batch)."""
        if self.store.shared:
            return segments
        mark = fingerprint(profile)
        self._staged[profile.id] = mark
        if self._seen.get(profile.id) != mark:
            return segments
        return [s for s in segments if s.volatile or s.groups or s.metrics & metrics]

    def apply(
        self,
        touched: dict[str, set[str]],
        list_changes: list[tuple[str, str, str, bool, str]],
        new_events: dict[str, set[str]] | None = None,
    ) -> None:
        """After a batch: its list changes (account, list, profile, add, at), then the
        segments of every profile it touched (account → profile ids) whose answer may have
        changed (`new_events`: profile → the metrics it has new events of)."""
        new_events = new_events or {}
        joins: list[MembershipChange] = []
        leaves: list[MembershipChange] = []
        now = self.clock()
        at = iso(now)
        changed_lists: dict[str, list[tuple[str, str, str, bool, str]]] = {}
        for change in list_changes:
            changed_lists.setdefault(change[0], []).append(change)
        for account_id in sorted(touched.keys() | changed_lists.keys()):
            pids = sorted(touched.get(account_id, set()))
            segments = in_order(self.store.active_segments(account_id), self._parse)
            if segments:
                self.store.lock_profiles(account_id, pids)
            # (Without segments no profile is read back: the book may have just been dropped.)
            profiles = {pid: self.book.get(account_id, pid) for pid in pids} if segments else {}
            wanted = {
                pid: [] if p is None else self._to_evaluate(p, segments, new_events.get(pid, set()))
                for pid, p in profiles.items()
            }
            facts = self._facts(account_id, pids, segments, wanted)
            for _, list_id, pid, add, when in changed_lists.get(account_id, []):
                groups = facts[pid].groups
                if add and list_id not in groups:
                    joins.append(("list", account_id, list_id, pid, when, "processing"))
                    groups[list_id] = when
                elif not add and list_id in groups:
                    leaves.append(("list", account_id, list_id, pid, when, "processing"))
                    del groups[list_id]
            if not segments:
                continue
            for pid in pids:
                profile = profiles[pid]
                if profile is not None and wanted[pid]:
                    self._evaluate(account_id, profile, facts[pid], wanted[pid], now, at,
                                   "processing", joins, leaves)  # fmt: skip
        if joins or leaves:
            self.store.change_memberships(joins, leaves)

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
            if matches(segment.definition, profile, now, facts):
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
        with self.store.transaction():
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
            page = self.store.profile_page(account_id, row.cursor or "", limit)
            pids = [pid for pid, _ in page]
            facts = self._facts(account_id, pids, segments)
            joins: list[MembershipChange] = []
            leaves: list[MembershipChange] = []
            now = self.clock()
            at = iso(now)
            for pid, doc in page:
                self._evaluate(account_id, decode_profile(doc), facts[pid], segments, now, at,
                               row.cause, joins, leaves)  # fmt: skip
            if joins or leaves:
                self.store.change_memberships(joins, leaves)
            done = len(page) < limit
            self.store.segment_progress(account_id, segment_id, row.version,
                                        None if done else pids[-1])  # fmt: skip
            return max(1, len(page))
