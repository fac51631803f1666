"""Which stored events enter which flows, decided in the processing transaction that stored
them (design.md): a flow enters a profile at most once per triggering event, and every
decision is recorded, per event and flow, for the event's receipt and its bulk job:

- `backfill`: the event was sent with `backfill: true` (recorded, never triggers);
- `flow_not_live`: the flow is a draft (a manual flow enters profiles, as Klaviyo's queues
  them: its actions are manual, so its messages wait in the outbox as `queued`);
- `trigger_filter`: the event fails the trigger's filter;
- `profile_filter`: the profile fails the flow's filter;
- `reentry`: the profile entered the flow within its `reentry_criteria`;
- `entered`: a run begins, its first step due at the event's time (steps are anchored to the
  trigger, so an event from the past runs its overdue steps at once, flows/runner.py).

Joins of lists and segments enter the flows they trigger too (`enter_joins`). Accounts with no
flow triggered by a metric of the batch pay one query a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from trackhouse.flows.definition import FlowDefinition, ProfileFilter, parse_flow_definition
from trackhouse.flows.filters import FlowFacts, FlowTest, compile_filter, event_matches
from trackhouse.ids import new_ulid
from trackhouse.process.identity import ProfileBook
from trackhouse.segments.definition import DefinitionError
from trackhouse.store.base import EVENTS_PER_ENTRY, FlowRow, MembershipChange, StoreWriter
from trackhouse.store.flows import Decision, FlowRunWrites, RunRow

# A stored event as processing has it: (insert row, properties); the row's fields are those
# of store.base.EventInsert.
Stored = list[tuple[tuple[Any, ...], dict[str, Any]]]
UNIT_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}


class Flows:
    """The account's flows as processing reads them, each definition parsed once per change."""

    def __init__(self, runs: FlowRunWrites) -> None:
        self.runs = runs
        self._parsed: dict[str, tuple[str, str, FlowDefinition | None]] = {}
        self._tests: dict[int, tuple[Any, FlowTest]] = {}

    def definition(self, row: FlowRow) -> FlowDefinition | None:
        known = self._parsed.get(row.id)
        if known is not None and known[:2] == (row.updated, row.definition):
            return known[2]
        try:
            found: FlowDefinition | None = parse_flow_definition(
                msgspec.json.decode(row.definition), "", creating=False
            )
        except (DefinitionError, msgspec.DecodeError, KeyError, TypeError):
            found = None  # stored by a version that checked otherwise: it runs no one
        self._parsed[row.id] = (row.updated, row.definition, found)
        return found

    def test(self, groups: ProfileFilter) -> FlowTest:
        """A profile filter of a parsed definition as a test (compiled once)."""
        key = id(groups)
        test = self._tests.get(key)
        if test is None or test[0] is not groups:
            test = self._tests[key] = (groups, compile_filter(groups))
        return test[1]


def reentry_blocked(definition: FlowDefinition, last: float | None, anchor: float) -> bool:
    """Whether `reentry_criteria` keeps a profile last triggered at `last` out now."""
    if last is None or definition.reentry is None:
        return False
    duration, unit = definition.reentry
    if duration == 0:
        return False  # always again
    if unit == "alltime":
        return True  # never again
    return abs(anchor - last) < duration * UNIT_SECONDS[unit]  # (events may come out of order)


class Entry:
    def __init__(
        self, store: StoreWriter, runs: FlowRunWrites, book: ProfileBook, flows: Flows,
        clock: Callable[[str], datetime],
    ) -> None:  # fmt: skip
        self.store = store
        self.runs = runs
        self.book = book
        self.flows = flows
        self.clock = clock
        # Set when a transaction's entries scheduled first steps (they may be due at once:
        # the processor runs them in that same transaction, and clears this).
        self.steps_added = False

    def enter(self, stored: Stored) -> None:
        """Decide each stored event's flows (in the batch's transaction)."""
        by_account: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        for row, properties in stored:
            by_account.setdefault(row[1], []).append((row, properties))
        for account_id, events in by_account.items():
            triggered: dict[str, list[tuple[FlowRow, FlowDefinition | None]]] = {}
            for flow in self.runs.account_flows(account_id):
                if flow.trigger[0] == "metric":
                    triggered.setdefault(flow.trigger[1], []).append(
                        (flow, self.flows.definition(flow))
                    )
            if triggered:
                self._enter_account(account_id, events, triggered)

    def enter_joins(self, joins: list[MembershipChange]) -> None:
        """Joins of lists and segments (in their transaction) enter the flows they trigger:
        a list's on every join; a segment's when the profile newly qualifies because of its
        data or the clock, never because the definition was made or edited (Klaviyo's
        rule). No receipt shows these decisions: the runs do (GET /admin/flow-runs)."""
        by_account: dict[str, list[MembershipChange]] = {}
        for join in joins:
            if join[5] != "definition":
                by_account.setdefault(join[1], []).append(join)
        for account_id, found in by_account.items():
            triggered: dict[tuple[str, str], list[tuple[FlowRow, FlowDefinition]]] = {}
            for flow in self.runs.account_flows(account_id):
                definition = self.flows.definition(flow)
                if flow.trigger[0] != "metric" and flow.status != "draft" and definition:
                    triggered.setdefault(flow.trigger, []).append((flow, definition))
            if not triggered:
                continue
            now = self.clock(account_id)
            runs: list[RunRow] = []
            steps: list[tuple[str, str, str, float]] = []
            last: dict[tuple[str, str], float | None] = {}
            for kind, _, group_id, profile_id, at, _ in found:
                anchor = datetime.fromisoformat(at).timestamp()
                for flow, definition in triggered.get((kind, group_id), ()):
                    key = (flow.id, profile_id)
                    if key not in last:
                        earlier = self.runs.last_entries(account_id, flow.id, [profile_id])
                        last[key] = earlier.get(profile_id)
                    if reentry_blocked(definition, last[key], anchor):
                        continue
                    if definition.profile_filter is not None:
                        profile = self.book.get(account_id, profile_id)
                        facts = FlowFacts.load(
                            self.store, self.runs, account_id, profile_id,
                            definition.profile_filter, anchor, flow.id, None,
                        )  # fmt: skip
                        test = self.flows.test(definition.profile_filter)
                        if profile is None or not test(profile, now, facts):
                            continue
                    run_id = new_ulid()
                    last[key] = anchor
                    status = "active" if definition.entry else "completed"
                    runs.append(RunRow(run_id, account_id, flow.id, profile_id, kind, None,
                                       anchor, now.timestamp(), status))  # fmt: skip
                    if definition.entry:
                        steps.append((account_id, run_id, definition.entry, anchor))
            if runs:
                self.runs.add_runs(runs, steps)
                self.steps_added = self.steps_added or bool(steps)

    def _enter_account(
        self, account_id: str, events: list[tuple[tuple[Any, ...], dict[str, Any]]],
        triggered: dict[str, list[tuple[FlowRow, FlowDefinition | None]]],
    ) -> None:  # fmt: skip
        now = self.clock(account_id)
        decisions: list[Decision] = []
        runs: list[RunRow] = []
        steps: list[tuple[str, str, str, float]] = []
        last: dict[tuple[str, str], float] = {}  # (flow, profile) → last trigger time
        wanted: dict[str, set[str]] = {}
        for row, _ in events:
            for flow, _ in triggered.get(row[3], ()):
                wanted.setdefault(flow.id, set()).add(row[2])
        for flow_id, pids in wanted.items():
            for pid, at in self.runs.last_entries(account_id, flow_id, sorted(pids)).items():
                last[(flow_id, pid)] = at
        for row, properties in events:
            number, _, profile_id, metric_id, time, *_ = row
            backfill, value = row[8], row[6]
            seq, idx = divmod(number, EVENTS_PER_ENTRY)
            for flow, definition in triggered.get(metric_id, ()):
                decision = self._decide(
                    account_id, flow, definition, profile_id, time, value, properties,
                    backfill, now, last.get((flow.id, profile_id)),
                )  # fmt: skip
                run_id = None
                if decision == "entered" and definition is not None:
                    run_id = new_ulid()
                    last[(flow.id, profile_id)] = time
                    status = "active" if definition.entry else "completed"
                    runs.append(RunRow(run_id, account_id, flow.id, profile_id, "metric", number,
                                       float(time), now.timestamp(), status))  # fmt: skip
                    if definition.entry:
                        steps.append((account_id, run_id, definition.entry, float(time)))
                decisions.append((account_id, seq, idx, flow.id, decision, run_id))
        if runs:
            self.runs.add_runs(runs, steps)
            self.steps_added = self.steps_added or bool(steps)
        self.runs.record_decisions(decisions)

    def _decide(
        self, account_id: str, flow: FlowRow, definition: FlowDefinition | None,
        profile_id: str, time: int, value: float | None, properties: dict[str, Any],
        backfill: bool, now: datetime, last: float | None,
    ) -> str:  # fmt: skip
        if backfill:
            return "backfill"
        if flow.status == "draft" or definition is None:
            return "flow_not_live"
        trigger_filter = definition.trigger.filter
        if trigger_filter is not None and not event_matches(trigger_filter, value, properties,
                                                            now):  # fmt: skip
            return "trigger_filter"
        if reentry_blocked(definition, last, float(time)):
            return "reentry"
        if definition.profile_filter is not None:
            profile = self.book.get(account_id, profile_id)
            if profile is None:
                return "profile_filter"
            facts = FlowFacts.load(
                self.store, self.runs, account_id, profile_id, definition.profile_filter,
                float(time), flow.id, None,
            )  # fmt: skip
            if not self.flows.test(definition.profile_filter)(profile, now, facts):
                return "profile_filter"
        return "entered"
