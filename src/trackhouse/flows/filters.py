"""Flow filters evaluated: a flow's `profile_filter` and conditional or multi-branch splits'
filters on a profile (segment conditions, as segments/evaluate.py evaluates them, plus the
flow's own: orders since the flow started, a random sample, not in this flow, not sent a
message lately), and trigger filters on the triggering event's properties.

What a profile filter needs beyond the profile is read from the store when it is evaluated
(`FlowFacts.load`): memberships, the events of the metrics it measures, the profile's earlier
runs of the flow and when it was last sent a message on each channel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.flows.definition import (
    FlowCondition,
    FlowMetricCondition,
    ProfileFilter,
    TriggerFilter,
)
from trackhouse.process.profiles import Profile
from trackhouse.segments.definition import Filter, MembershipCondition, MetricCondition
from trackhouse.segments.evaluate import (
    Measure,
    compile_condition,
    event_value_passes,
    measure_events,
)
from trackhouse.store.base import StoreWriter
from trackhouse.store.flows import FlowRunWrites

CHANNELS = {"profile-not-sent-email": "email", "profile-not-sent-sms": "sms",
            "profile-not-sent-push": "push"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    time: int
    value: float | None
    raw: bytes | None

    @property
    def properties(self) -> dict[str, Any]:
        found: dict[str, Any] = msgspec.json.decode(self.raw) if self.raw else {}
        return found


@dataclass
class FlowFacts:
    """What a flow filter reads beyond the profile itself."""

    groups: dict[str, str] = field(default_factory=dict)  # list or segment → joined at
    events: dict[str, list[Event]] = field(default_factory=dict)  # metric → its events
    started: float = 0.0  # when the profile's run began (its trigger's time)
    other_entries: list[float] = field(default_factory=list)  # earlier runs of this flow
    last_sent: dict[str, float | None] = field(default_factory=dict)  # channel → when
    flow_id: str = ""

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        return measure_events(condition, self.events.get(condition.metric_id, []), now)

    def joined(self, group_id: str) -> datetime | None:
        at = self.groups.get(group_id)
        return None if at is None else datetime.fromisoformat(at)

    @classmethod
    def load(
        cls, store: StoreWriter, runs: FlowRunWrites, account_id: str, profile_id: str,
        groups: ProfileFilter, started: float, flow_id: str, run_id: str | None,
    ) -> FlowFacts:  # fmt: skip
        facts = cls(started=started, flow_id=flow_id)
        conditions = [c for group in groups for c in group]
        metric_conditions = [c.condition if isinstance(c, FlowMetricCondition) else c
                             for c in conditions]  # fmt: skip
        metrics = sorted({c.metric_id for c in metric_conditions
                          if isinstance(c, MetricCondition)})  # fmt: skip
        if any(isinstance(c, MembershipCondition) for c in conditions):
            facts.groups = store.memberships(account_id, [profile_id]).get(profile_id, {})
        if metrics:
            filtered = sorted({c.metric_id for c in metric_conditions
                               if isinstance(c, MetricCondition) and c.metric_filters})  # fmt: skip
            for _, metric, t, value, raw in store.metric_events(account_id, [profile_id],
                                                                metrics, filtered):  # fmt: skip
                facts.events.setdefault(metric, []).append(Event(t, value, raw))
        kinds = {c.type for c in conditions if isinstance(c, FlowCondition)}
        if "profile-not-in-flow" in kinds:
            entries = runs.entries_of(account_id, flow_id, profile_id)
            facts.other_entries = [at for rid, at in entries if rid != run_id]
        for kind, channel in CHANNELS.items():
            if kind in kinds:
                facts.last_sent[channel] = runs.last_sent(account_id, profile_id, channel)
        return facts


class _SinceStart:
    """The facts of a `flow-start` metric condition: only events since the run began."""

    def __init__(self, facts: FlowFacts) -> None:
        self.facts = facts

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        events = [e for e in self.facts.events.get(condition.metric_id, [])
                  if e.time >= self.facts.started]  # fmt: skip
        return measure_events(condition, events, now)

    def joined(self, group_id: str) -> datetime | None:
        return self.facts.joined(group_id)


FlowTest = Callable[[Profile, datetime, FlowFacts], bool]


def _within(timeframe: Filter | None, at: float | None, now: datetime) -> bool:
    """Whether `at` falls in the timeframe (all time, or the last N seconds) before now."""
    if at is None:
        return False
    if timeframe is None or timeframe.operator == "alltime":
        return True
    return now.timestamp() - at <= timeframe.seconds


def _sampled(profile_id: str, flow_id: str, percentage: int) -> bool:
    """A profile's place in a flow's random sample: the same every time it is asked."""
    digest = hashlib.sha256(f"{flow_id}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percentage


def _compile(c: Any) -> FlowTest:
    if isinstance(c, FlowMetricCondition):
        inner = compile_condition(c.condition)
        return lambda profile, now, facts: inner(profile, now, _SinceStart(facts))
    if isinstance(c, FlowCondition):
        if c.type == "profile-sample":
            return lambda profile, now, facts: _sampled(profile.id, facts.flow_id, c.percentage)
        if c.type == "profile-not-in-flow":
            return lambda profile, now, facts: (
                not any(_within(c.timeframe, at, now) for at in facts.other_entries)
            )
        channel = CHANNELS[c.type]
        return lambda profile, now, facts: (
            not _within(c.timeframe, facts.last_sent.get(channel), now)
        )
    test = compile_condition(c)
    return lambda profile, now, facts: test(profile, now, facts)


def compile_filter(groups: ProfileFilter) -> FlowTest:
    """Groups AND, conditions inside a group OR."""
    tests = [[_compile(c) for c in group] for group in groups]

    def test(profile: Profile, now: datetime, facts: FlowFacts) -> bool:
        return all(any(t(profile, now, facts) for t in group) for group in tests)

    return test


def event_matches(groups: TriggerFilter, value: float | None, properties: dict[str, Any],
                  now: datetime) -> bool:  # fmt: skip
    """Whether the triggering event passes a trigger filter (`$value` is the event's value)."""
    for group in groups:
        for name, f in group:
            found = value if name == "$value" else properties.get(name)
            if f.type == "numeric" and f.operator == "between":
                ok = (not isinstance(found, bool) and isinstance(found, int | float)
                      and f.start <= found <= f.end)  # fmt: skip
            else:
                ok = event_value_passes(f, found, now)
            if ok:
                break
        else:
            return False
    return True


def moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
