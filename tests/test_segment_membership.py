"""Live segment membership against a from-scratch evaluation (process/membership.py).

Random sequences of events, profile changes, list changes, segment creations and edits are
processed in random batches interleaved with random pages of background computation; once
everything is processed, every segment's stored members must be exactly the profiles its
definition matches when evaluated afresh from the stored profiles, events and lists. The
clock is fixed, so time cannot move the answer. In process, on the embedded store (a fresh one
per example) and on a private PostgreSQL (one database, an account of its own per example).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trackhouse.api.segments import recompute_dependents
from trackhouse.identifiers import email_key
from trackhouse.log import EventLog
from trackhouse.log.postgres import PostgresLog
from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import Event, ListChange, ProfileChange, Submission
from trackhouse.process.membership import in_order
from trackhouse.process.processor import Processor
from trackhouse.process.profiles import decode_profile
from trackhouse.segments.definition import MetricCondition, parse_definition
from trackhouse.segments.evaluate import Measure, matches, measure_events
from trackhouse.store.base import (
    EventQuery,
    ListQuery,
    ListRow,
    MemberQuery,
    SegmentQuery,
    SegmentRow,
    Store,
)
from trackhouse.store.postgres import PostgresStore, migrate
from trackhouse.store.sqlite import SQLiteStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CREATED = "2026-01-01T00:00:00+00:00"
PEOPLE = 5
LIST = "LIST00"
METRICS = ("MET000", "MET001")


def _prop(name: str, f: dict[str, Any]) -> dict[str, Any]:
    return {"type": "profile-property", "property": f"properties['{name}']", "filter": f}


def _metric(metric: str, measurement: str, op: str, value: float, **extra: Any) -> dict:
    return {
        "type": "profile-metric",
        "metric_id": metric,
        "measurement": measurement,
        "measurement_filter": {"type": "numeric", "operator": op, "value": value},
        "timeframe_filter": {"type": "date", "operator": "alltime"},
        **extra,
    }


def _member(is_member: bool, group: str) -> dict[str, Any]:
    return {"type": "profile-group-membership", "is_member": is_member, "group_ids": [group]}


GOLD = _prop("tier", {"type": "string", "operator": "equals", "value": "gold"})
BRAND_A = [{"property": "Brand", "filter": {"type": "string", "operator": "equals", "value": "a"}}]
NAMING = (4, 5)  # the definitions that name segments S0 or S1
DEFINITIONS = [  # S0 and S1 name no segment; the others may name them
    [[GOLD]],
    [[_metric("MET000", "count", "greater-than-or-equal", 2)]],
    [[_metric("MET001", "sum", "greater-than", 10, metric_filters=BRAND_A)]],
    [[_member(True, LIST)]],
    [[_member(False, "SEG000")]],
    [
        [_prop("tier", {"type": "existence", "operator": "is-set"})],
        [
            _prop("score", {"type": "numeric", "operator": "greater-than", "value": 3}),
            _member(True, "SEG001"),
        ],
    ],
    [[_metric("MET000", "count", "equals", 0)]],
    [[_prop("tier", {"type": "string", "operator": "not-equals", "value": "gold"}), GOLD]],
    # Exact sums: 0.1 + 0.2 + 0.3 in any order (added one by one as events arrive, or afresh).
    [[_metric("MET000", "sum", "equals", 0.6)]],
    # Relative to the clock: never kept up to date by adding events (events go back in time).
    [
        [
            _metric(
                "MET001",
                "count",
                "greater-than-or-equal",
                1,
                timeframe_filter={
                    "type": "date",
                    "operator": "in-the-last",
                    "unit": "hour",
                    "quantity": 1,
                },
            )
        ]
    ],
]


def _definition(n: int, prefix: str) -> str:
    """Definition n, with the ids of the world whose ids start with `prefix`."""
    groups = DEFINITIONS[n]
    text = msgspec.json.encode(
        {"condition_groups": [{"conditions": conditions} for conditions in groups]}
    ).decode()
    for name in ("SEG00", "LIST00", "MET00"):
        text = text.replace(name, prefix + name)
    return text


person = st.integers(0, PEOPLE - 1)
EVENT = st.tuples(
    st.just("event"),
    person,
    st.sampled_from(METRICS),
    st.sampled_from([0.1, 0.2, 0.3, 1.0, 6.0]),
    st.sampled_from(["A", "b", None]),
    st.integers(0, 5),  # its unique_id: a repeated one is a duplicate, not counted again
)
BATCH = st.tuples(st.just("batch"))
# Events and batches weigh more: a profile's measures are kept up to date across batches.
OPS = st.one_of(
    EVENT,
    EVENT,
    EVENT,
    BATCH,
    BATCH,
    st.tuples(
        st.just("profile"), person, st.sampled_from(["gold", "silver", None]), st.integers(0, 6)
    ),
    st.tuples(st.just("list"), person, st.booleans()),
    st.tuples(st.just("page")),
    st.tuples(st.just("create"), st.integers(2, 4), st.integers(0, len(DEFINITIONS) - 1)),
    st.tuples(st.just("edit"), st.integers(0, 4), st.integers(0, len(DEFINITIONS) - 1)),
    st.tuples(st.just("delete"), st.integers(2, 4)),  # as the API deletes, dependents again
    st.tuples(st.just("delete list")),
    st.tuples(st.just("active"), st.integers(0, 4), st.booleans()),
)


class World:
    """One account's data in a log and store, with the processor of that store; every id is
    the world's own (`prefix`), so many worlds can share a PostgreSQL database."""

    def __init__(self, log: EventLog, store: Store, processor: Processor) -> None:
        self.log, self.store, self.processor = log, store, processor
        self.prefix = uuid.uuid4().hex[:6]
        self.account = "acct" + self.prefix
        self.list = self.prefix + LIST
        self.n = 0
        writer = processor.store
        with writer.transaction():
            for n, metric in enumerate(METRICS):
                writer.add_metric(self.prefix + metric, self.account, f"M{n}", "api", CREATED)
        self.store.add_list(
            self.account, ListRow(self.list, "L", "single_opt_in", CREATED, CREATED)
        )
        for k in (0, 1):
            self.create(k, k)
        # Computed over no profile: membership is live from the first operation.
        while self.processor.membership.compute():
            pass

    def append(self, submission: Submission) -> None:
        asyncio.run(self.log.append([submission]))

    def submission(self, p: int, **fields: Any) -> Submission:
        self.n += 1
        profile = fields.pop("profile", ProfileChange(email=f"p{p}-{self.prefix}@example.com"))
        return Submission(
            account_id=self.account,
            received_at=NOW.timestamp() + self.n,
            source="api",
            profile=profile,
            **fields,
        )

    def profile_id(self, p: int) -> str | None:
        key = email_key(f"p{p}-{self.prefix}@example.com")
        docs = self.store.profiles(self.account, identifiers=("email", [key]))
        return decode_profile(docs[0]).id if docs else None

    def create(self, k: int, d: int) -> None:
        row = SegmentRow(
            f"{self.prefix}SEG00{k}",
            f"S{k}",
            _definition(d, self.prefix),
            True,
            False,
            CREATED,
            CREATED,
            pending=True,
            cursor="",
        )
        self.store.add_segment(self.account, row)

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "event":
            _, p, metric, value, brand, key = op
            properties = {} if brand is None else {"Brand": brand}
            event = Event(
                metric=f"M{METRICS.index(metric)}",
                time=int(NOW.timestamp()) - 600 * self.n,  # past the hour after 6 operations
                value=value,
                properties=properties,
                unique_id=f"u{key}",
            )
            self.append(self.submission(p, events=[event]))
        elif kind == "profile":
            _, p, tier, score = op
            changed: dict[str, Any] = {"score": score}
            if tier is not None:
                changed["tier"] = tier
            change = ProfileChange(
                email=f"p{p}-{self.prefix}@example.com",
                properties=changed,
                unset=[] if tier is not None else ["tier"],
            )
            self.append(self.submission(p, profile=change))
        elif kind == "list":
            _, p, add = op
            profile_id = self.profile_id(p)
            if profile_id is not None:
                self.append(
                    self.submission(
                        p,
                        profile=ProfileChange(id=profile_id),
                        list_change=ListChange(list_id=self.list, add=add),
                    )
                )
        elif kind == "batch":
            self.processor.run_once(max_entries=3)
        elif kind == "page":
            self.processor.membership.compute(limit=2)
        elif kind == "create":
            self.create(op[1], op[2])
        elif kind == "edit" and not (op[1] < 2 and op[2] in NAMING):  # never a cycle
            self.store.update_segment(
                self.account,
                f"{self.prefix}SEG00{op[1]}",
                {"definition": _definition(op[2], self.prefix)},
                CREATED,
            )
        elif kind == "delete":
            segment_id = f"{self.prefix}SEG00{op[1]}"
            if self.store.delete_segment(self.account, segment_id):
                recompute_dependents(self.store, self.account, segment_id)
        elif kind == "delete list":
            if self.store.delete_list(self.account, self.list):
                recompute_dependents(self.store, self.account, self.list)
        elif kind == "active":
            segment_id = f"{self.prefix}SEG00{op[1]}"
            self.store.update_segment(self.account, segment_id, {"is_active": op[2]}, CREATED)

    def settle(self) -> None:
        while self.processor.run_once():
            pass
        while self.processor.membership.compute(limit=2):
            pass

    def check(self) -> None:
        rows = self.store.segments(SegmentQuery(self.account, limit=100))
        active = {r.id for r in rows if r.is_active}
        assert len(rows) >= 2 and not any(r.pending for r in rows if r.id in active)
        profiles = [decode_profile(d) for d in self.store.profiles(self.account, limit=1000)]

        def members(segment_id: str) -> set[str]:
            q = MemberQuery(self.account, "segment", segment_id, limit=1000)
            return {decode_profile(doc).id for doc, _ in self.store.members(q)}

        expected: dict[str, set[str]] = {}
        segments = in_order(rows, _Parsed)  # type: ignore[arg-type]
        for segment in segments:
            if segment.id not in active:  # paused: its members stay as they were
                expected[segment.id] = members(segment.id)
                continue
            expected[segment.id] = set()
            for profile in profiles:
                facts = _ScratchFacts(self.store, self.account, profile.id, expected)
                if matches(segment.definition, profile, NOW, facts):
                    expected[segment.id].add(profile.id)
        for segment in segments:
            assert members(segment.id) == expected[segment.id], segment.id
            self.check_changes(segment.id, expected[segment.id])
        if self.store.lists(ListQuery(self.account, ids=[self.list], limit=1)):
            q = MemberQuery(self.account, "list", self.list, limit=1000)
            self.check_changes(
                self.list, {decode_profile(doc).id for doc, _ in self.store.members(q)}
            )

    def check_changes(self, group_id: str, members: set[str]) -> None:
        """Every recorded join is of a profile that was not a member, every leave of one that
        was, and replaying them gives the members now (flows enter on these joins)."""
        state: set[str] = set()
        for _, _, _, profile_id, joined, _, _ in self.store.membership_changes(
            self.account, group_id, limit=100_000
        ):
            assert (profile_id in state) != joined, (group_id, profile_id, joined)
            (state.add if joined else state.discard)(profile_id)
        assert state == members, group_id


class _Parsed:
    def __init__(self, row: SegmentRow) -> None:
        self.id = row.id
        self.definition = parse_definition(msgspec.json.decode(row.definition))


class _ScratchEvent:
    def __init__(self, row: Any) -> None:
        self.time, self.value = row.time, row.value
        self.properties = msgspec.json.decode(row.properties)


class _ScratchFacts:
    """A profile's events and lists read afresh; its segments as computed so far."""

    def __init__(self, store: Store, account: str, profile_id: str, segments: dict[str, set[str]]):
        self.store, self.account, self.profile_id = store, account, profile_id
        self.segments = segments

    def events(self, metric_id: str) -> list[_ScratchEvent]:
        q = EventQuery(self.account, metric_id=metric_id, profile_id=self.profile_id, limit=10_000)
        return [_ScratchEvent(r) for r in self.store.events(q)]

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        return measure_events(condition, self.events(condition.metric_id), now)

    def joined(self, group_id: str) -> datetime | None:
        if group_id in self.segments:
            return NOW if self.profile_id in self.segments[group_id] else None
        lists = self.store.profile_groups(self.account, self.profile_id, "list")
        return NOW if group_id in lists else None


@pytest.fixture(params=["sqlite", "postgres"])
def worlds(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """A maker of fresh worlds on the backend: a new SQLite log and store per world, or one
    private PostgreSQL database and processor for all of them."""
    if request.param == "sqlite":

        @contextlib.contextmanager
        def sqlite_world() -> Iterator[World]:
            with tempfile.TemporaryDirectory() as root:
                log = SQLiteLog(Path(root) / "log.sqlite3")
                store = SQLiteStore(Path(root) / "store.sqlite3")
                processor = Processor(log, store, clock=lambda _account: NOW)
                try:
                    yield World(log, store, processor)
                finally:
                    processor.close()
                    log.close()
                    store.close()

        yield sqlite_world
        return
    url = request.getfixturevalue("private_postgres").new_database()
    partitions = migrate(url)
    log, store = PostgresLog(url, partitions), PostgresStore(url, partitions)
    processor = Processor(log, store, clock=lambda _account: NOW)

    @contextlib.contextmanager
    def postgres_world() -> Iterator[World]:
        yield World(log, store, processor)

    try:
        yield postgres_world
    finally:
        processor.close()
        log.close()
        store.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, min_size=10, max_size=60))
# A segment computed afresh changes the members of a segment that names it (S4, "not in S0").
@example(
    ops=[
        ("profile", 0, "gold", 1),
        ("batch",),
        ("create", 4, 4),
        ("page",),
        ("page",),
        ("page",),
        ("edit", 0, 1),
    ]
)
# A profile's measure kept up to date across batches: a second event, a duplicate that does
# not count, values whose float sum depends on the order (S2: sum equals 0.6), and an edit
# to a definition measuring the same events (S1 edited to S6, "count equals 0").
@example(
    ops=[
        ("create", 2, 8),
        ("page",),
        ("event", 0, "MET000", 0.1, None, 0),
        ("batch",),
        ("event", 0, "MET000", 0.2, None, 1),
        ("event", 0, "MET000", 6.0, None, 1),
        ("batch",),
        ("event", 0, "MET000", 0.3, None, 2),
        ("batch",),
        ("edit", 1, 6),
        ("event", 0, "MET000", 1.0, None, 3),
        ("batch",),
    ]
)
# A deleted segment's id comes back with another definition (found by this test: the
# processor kept the old one parsed under the id and version).
@example(
    ops=[
        ("event", 0, "MET000", 0.1, None, 0),
        ("create", 2, 0),
        ("batch",),
        ("delete", 2),
        ("event", 0, "MET000", 0.1, None, 1),
        ("create", 2, 1),
        ("batch",),
    ]
)
def test_live_membership_equals_a_fresh_evaluation(
    worlds: Callable[[], Any], ops: list[tuple[Any, ...]]
) -> None:
    with worlds() as world:
        for op in ops:
            world.run(op)
        world.settle()
        world.check()


def test_a_rolled_back_batch_leaves_nothing_remembered(worlds: Callable[[], Any]) -> None:
    """A batch whose membership was evaluated, then rolled back, must not leave its staged
    measures behind: here p1's second event is rolled back (its entry ends rejected), and
    what the processor remembers of p1 must still count one event, not two."""
    with worlds() as world:
        for op in [("event", 0, "MET000", 1.0, None, 0), ("event", 1, "MET000", 1.0, None, 0),
                   ("batch",), ("batch",)]:  # fmt: skip
            world.run(op)
        p1 = world.profile_id(1)
        membership = world.processor.membership
        original = membership.apply

        def failing(touched: dict[str, set[str]], *args: Any) -> None:
            original(touched, *args)  # evaluated and staged, then the batch fails
            if p1 in touched.get(world.account, set()):
                raise RuntimeError("injected after membership")

        membership.apply = failing  # type: ignore[method-assign]
        world.run(("event", 1, "MET000", 1.0, None, 1))  # rolled back, then rejected
        world.run(("event", 0, "MET000", 1.0, None, 1))
        world.run(("batch",))
        membership.apply = original  # type: ignore[method-assign]
        # p1's content changes: every segment is evaluated on it from what is remembered.
        world.run(("profile", 1, "silver", 1))
        world.settle()
        world.check()  # S1 is "MET000 at least twice": p0 is in it, p1 is not
        s1 = MemberQuery(world.account, "segment", f"{world.prefix}SEG001", limit=10)
        assert {decode_profile(doc).id for doc, _ in world.store.members(s1)} == {
            world.profile_id(0)
        }


def test_a_measure_no_segment_kept_up_to_date_is_not_trusted(worlds: Callable[[], Any]) -> None:
    """While S1 ("MET000 at least twice") is paused no batch keeps its measure of p0's events
    up to date. Once S1 is active again, a batch must not evaluate it from the count it had:
    p0's second event arrived while S1 was paused, so p0's change right after S1 is active
    again makes it join S1 there and then (cause "processing"), not only when S1's
    computation comes round to it."""
    with worlds() as world:
        for op in [("event", 0, "MET000", 1.0, None, 0), ("batch",), ("active", 1, False),
                   ("event", 0, "MET000", 1.0, None, 1), ("batch",), ("active", 1, True),
                   ("profile", 0, "silver", 1), ("batch",)]:  # fmt: skip
            world.run(op)
        changes = world.store.membership_changes(world.account, f"{world.prefix}SEG001", limit=10)
        assert [(c[3], c[4], c[6]) for c in changes] == [(world.profile_id(0), True, "processing")]
        world.settle()
        world.check()
