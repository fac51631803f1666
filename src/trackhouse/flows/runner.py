"""Flow steps run when they fall due on their account's clock, each exactly once: a step is
claimed in the store by the transaction that records what it did and schedules the next one
(`FlowRunWrites.due_steps` skips steps another worker holds), so a crash anywhere redoes or
loses nothing. Processing runs them between batches (process/processor.py), and applies the
profile and list changes they make in the same transaction.

A step runs as of its due time (or as of when its profile entered, if that was later: an old
event's overdue steps run at once, as of then): filters, templates and the outbox see that
instant, whenever the worker reached it. So `advance` (api/clock.py) can move the clock past
many steps at once and each still runs as of its own time, in time order.

Actions:
- `time-delay`: the next step is due after the delay, counted from this step's due time
  (24-hour days; `delay_until_time` a calendar day's time in the delay's zone, or the
  profile's; `delay_until_weekdays` the next of those days);
- `conditional-split`, `trigger-split`, `multi-branch-split`: the branch whose filter passes;
- `send-email`, `send-sms`, `send-mobile-push`: rendered into the outbox — `sent` when the
  action is live, `queued` when manual, `skipped` with the reason when it is draft or
  disabled, the profile has no address, or smart sending (email 16 h, SMS and push 24 h) holds;
- `send-webhook`: its body and headers rendered, and a delivery queued (flows/webhooks.py);
- `update-profile`: the profile's properties set, deleted, or added to or removed from;
- `list-update`: the profile added to or removed from the list.

The flow's `profile_filter` is checked before every action; a profile that fails it leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from trackhouse.flows.definition import DELAY_UNITS, WEEKDAYS, Action, FlowDefinition
from trackhouse.flows.entry import Flows
from trackhouse.flows.filters import FlowFacts, event_matches
from trackhouse.flows.render import person_of, render
from trackhouse.ids import new_ulid
from trackhouse.process.identity import ProfileBook
from trackhouse.process.profiles import MAX_STORED_PROFILE_BYTES, Profile, encode_profile
from trackhouse.store.base import FlowRow, StoreWriter
from trackhouse.store.flows import DeliveryRow, FlowRunWrites, OutboxRow, RunRow, StepRow

logger = logging.getLogger("trackhouse.flows")

# Klaviyo's smart sending: no second message on a channel within this long.
SMART_SENDING = {"email": 16 * 3600, "sms": 24 * 3600, "push": 24 * 3600}
RECIPIENTS = {"email": "email", "sms": "phone_number"}
# A list change for processing to apply: (account, list, profile, add, at ISO 8601).
ListChange = tuple[str, str, str, bool, str]


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if isinstance(name, str) and name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _time_of_day(text: str) -> day_time:
    parts = [int(p) for p in text.split(":")]
    return day_time(parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


def delay_end(data: dict[str, Any], start: float, profile_zone: str | None) -> float:
    """When a time-delay that began at `start` ends."""
    unit = data.get("unit", "days")
    value = int(data["value"])
    end = start + value * DELAY_UNITS[unit]
    until, weekdays = data.get("delay_until_time"), data.get("delay_until_weekdays")
    if until is None and not weekdays:
        return end
    name = data.get("timezone") or "profile"
    zone = _zone(profile_zone if name == "profile" else name)
    if until is not None and unit == "days":  # calendar days, then that time of day
        local = datetime.fromtimestamp(start, zone)
        day: date = local.date() + timedelta(days=value)
        moment = datetime.combine(day, _time_of_day(until), zone)
        if moment.timestamp() < start:
            moment = datetime.combine(day + timedelta(days=1), _time_of_day(until), zone)
    else:
        local = datetime.fromtimestamp(end, zone)
        clock = _time_of_day(until) if until is not None else local.timetz().replace(tzinfo=None)
        moment = datetime.combine(local.date(), clock, zone)
        if moment.timestamp() < end:
            moment = datetime.combine(local.date() + timedelta(days=1), clock, zone)
    if weekdays:
        wanted = {WEEKDAYS.index(d) for d in weekdays}
        while moment.weekday() not in wanted:
            moment = datetime.combine(moment.date() + timedelta(days=1), moment.timetz())
    return moment.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(
        self, store: StoreWriter, runs: FlowRunWrites, book: ProfileBook, flows: Flows,
        wall: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.store = store
        self.runs = runs
        self.book = book
        self.flows = flows
        self.wall = wall
        self.queued_deliveries = False  # set when a step queues a webhook delivery
        # With a lease set (the processor's), each delivery a step queues is claimed by this
        # worker in the step's transaction: its first attempt counted and leased, and the row
        # kept in `ready` to be sent as soon as the transaction commits (no claim of its own).
        # Dropped on a rollback; if this worker dies, the lease runs out and another sends it.
        self.lease: float | None = None
        self.ready: list[DeliveryRow] = []

    def run_due(
        self, limit: int, touched: dict[str, set[str]], list_changes: list[ListChange]
    ) -> int:
        """Run up to `limit` due steps in the caller's transaction; the profiles they changed
        are added to `touched` and their list changes to `list_changes`. How many ran."""
        steps = self.runs.due_steps(self.wall(), limit)
        flows: dict[str, dict[str, FlowRow]] = {}
        soonest: float | None = None  # the earliest next step this transaction scheduled
        ran = 0
        for step in steps:
            if soonest is not None and soonest < step.due_at:
                break  # in time order: that next step first (the rest stay due, unclaimed)
            if step.account_id not in flows:
                flows[step.account_id] = {f.id: f for f in self.runs.account_flows(step.account_id)}
            scheduled = self._step(step, flows[step.account_id], touched, list_changes)
            if scheduled is not None:
                soonest = scheduled if soonest is None else min(soonest, scheduled)
            ran += 1
        return ran

    def _step(
        self, step: StepRow, flows: dict[str, FlowRow], touched: dict[str, set[str]],
        list_changes: list[ListChange],
    ) -> float | None:  # fmt: skip
        """Run one step; when the step it schedules next is due, if any."""
        run = self.runs.flow_run(step.account_id, step.run_id)
        at = step.due_at if run is None else max(step.due_at, run.entered_at)
        if run is None or run.status != "active":
            self._finish(step, at, "skipped", "the run has ended")
            return None
        row = flows.get(run.flow_id)
        definition = None if row is None else self.flows.definition(row)
        action = None if definition is None else definition.action(step.action_id)
        profile = self.book.get(run.account_id, run.profile_id)
        try:
            reason = None
            if row is None or definition is None:
                reason = "flow_deleted"
            elif action is None:
                reason = "action_deleted"
            elif profile is None:
                reason = "profile_deleted"
            elif definition.profile_filter is not None and not self._passes(
                definition, definition.profile_filter, profile, run, at
            ):
                reason = "profile_filter"
            if reason is not None or action is None or profile is None or definition is None:
                self._finish(step, at, "exited", reason)
                self.runs.end_run(run.id, "exited", at, reason)
                return None
            outcome, detail, next_id, next_due = self._act(
                action, definition, run, profile, step.due_at, at, touched, list_changes
            )
        except Exception as exc:  # a bug, or data no check foresaw: the run stops here
            logger.exception("flow step %d failed", step.id)
            self._finish(step, at, "failed", repr(exc)[:500])
            self.runs.end_run(run.id, "exited", at, "failed")
            return None
        self._finish(step, at, outcome, detail)
        if next_id is None:
            self.runs.end_run(run.id, "completed", at, None)
            return None
        self.runs.add_steps([(run.account_id, run.id, next_id, next_due)])
        return next_due

    def _finish(self, step: StepRow, at: float, outcome: str, detail: str | None) -> None:
        if not self.runs.finish_step(step.id, at, outcome, detail):
            # Claimed by this transaction, so never: roll back whatever it did.
            raise RuntimeError(f"flow step {step.id} was run by another worker")

    def _passes(self, definition: FlowDefinition, groups: Any, profile: Profile, run: RunRow,
                at: float) -> bool:  # fmt: skip
        facts = FlowFacts.load(self.store, self.runs, run.account_id, run.profile_id, groups,
                               run.anchor, run.flow_id, run.id)  # fmt: skip
        return self.flows.test(groups)(profile, datetime.fromtimestamp(at, UTC), facts)

    def _event(self, run: RunRow) -> tuple[float | None, dict[str, Any]]:
        if run.event_number is None:
            return None, {}
        found = self.runs.event_of_run(run.account_id, run.event_number)
        if found is None:
            return None, {}
        value, raw = found
        properties: dict[str, Any] = msgspec.json.decode(raw) if raw else {}
        return value, properties

    def _act(
        self, action: Action, definition: FlowDefinition, run: RunRow, profile: Profile,
        due: float, at: float, touched: dict[str, set[str]], list_changes: list[ListChange],
    ) -> tuple[str, str | None, str | None, float]:  # fmt: skip
        """(outcome, detail, the next action, when it is due): the step was due at `due`
        and runs as of `at`; the next step is scheduled from `due` (the trigger's time plus
        the delays so far), so overdue steps still run at once."""
        kind = action.type
        data = action.raw.get("data") or {}
        nxt = action.links.get("next")
        if kind == "time-delay":
            end = delay_end(data, due, profile.location.get("timezone"))
            return "waited", f"until {_iso(end)}", nxt, end
        if kind == "conditional-split":
            passed = action.filter is None or self._passes(definition, action.filter, profile,
                                                           run, at)  # fmt: skip
            branch = action.links["next_if_true" if passed else "next_if_false"]
            return ("true" if passed else "false"), None, branch, due
        if kind == "trigger-split":
            value, properties = self._event(run)
            moment = datetime.fromtimestamp(at, UTC)
            passed = action.filter is None or event_matches(action.filter, value,  # type: ignore[arg-type]
                                                            properties, moment)  # fmt: skip
            branch = action.links["next_if_true" if passed else "next_if_false"]
            return ("true" if passed else "false"), None, branch, due
        if kind == "multi-branch-split":
            for n, (target, groups) in enumerate(action.branches):
                if groups is not None and self._passes(definition, groups, profile, run, at):
                    return "branch", str(n), target, due
            for n, (target, groups) in enumerate(action.branches):
                if groups is None:
                    return "branch", f"{n} (else)", target, due
            return "branch", "none", None, due
        if kind in ("send-email", "send-sms", "send-mobile-push"):
            outcome, detail = self._message(action, run, profile, at)
            return outcome, detail, nxt, due
        if action.status in ("draft", "disabled"):
            return "skipped", action.status, nxt, due
        if kind == "update-profile":
            detail = self._update_profile(data["profile_operations"], profile, at)
            touched.setdefault(run.account_id, set()).add(profile.id)
            return "updated", detail, nxt, due
        if kind == "list-update":
            list_id, add = data["list_id"], bool(data["on_execution"])
            if not self.store.list_exists(run.account_id, list_id):
                return "skipped", f"no list with id {list_id} exists", nxt, due
            list_changes.append((run.account_id, list_id, profile.id, add, _iso(at)))
            touched.setdefault(run.account_id, set()).add(profile.id)
            return ("added" if add else "removed"), list_id, nxt, due
        return (*self._webhook(action, run, profile, at), nxt, due)

    def _message(self, action: Action, run: RunRow, profile: Profile,
                 at: float) -> tuple[str, str | None]:  # fmt: skip
        channel = action.channel or "email"
        message = (action.raw.get("data") or {}).get("message") or {}
        key = RECIPIENTS.get(channel)
        recipient = profile.identifiers.get(key) if key else None
        status, reason = "sent", None
        if action.status in ("draft", "disabled"):
            status, reason = "skipped", action.status
        elif recipient is None:
            status, reason = "skipped", {"email": "no email address", "sms": "no phone number",
                                         "push": "no push token"}[channel]  # fmt: skip
        elif message.get("smart_sending_enabled", True) and not message.get("transactional"):
            last = self.runs.last_sent(run.account_id, profile.id, channel, at)
            if last is not None and at - last < SMART_SENDING[channel]:
                status, reason = "skipped", "smart_sending"
        if status == "sent" and action.status == "manual":
            status, reason = "queued", "manual"
        subject = body = None
        value, properties = self._event(run)
        person, event = person_of(profile), {**properties, "$value": value}
        try:
            if channel == "email":
                subject = render(message.get("subject_line"), person, event)
                body = render(message.get("preview_text"), person, event, html=True)
            elif channel == "sms":
                body = render(message.get("body"), person, event)
            else:
                subject = render(message.get("title"), person, event)
                body = render(message.get("body"), person, event)
        except Exception as exc:  # a template that cannot render (e.g. an include)
            status, reason = "skipped", f"the template could not be rendered: {exc}"[:300]
        self.runs.add_outbox(OutboxRow(new_ulid(), run.account_id, channel, recipient,
                                       run.flow_id, action.key, None, run.id, profile.id,
                                       subject, body, status, reason, at))  # fmt: skip
        return status, reason

    def _webhook(self, action: Action, run: RunRow, profile: Profile,
                 at: float) -> tuple[str, str | None]:  # fmt: skip
        """The delivery of the rendered request, queued for the delivery thread (the step
        does not wait for the answer, as Klaviyo's do not)."""
        if action.status in ("draft", "disabled", "manual"):
            return "skipped", action.status
        message = (action.raw.get("data") or {}).get("message") or {}
        value, properties = self._event(run)
        person, event = person_of(profile), {**properties, "$value": value}
        try:
            body = render(message.get("body"), person, event)
            headers = {name: render(text, person, event) or ""
                       for name, text in (message.get("headers") or {}).items()}  # fmt: skip
        except Exception as exc:  # a template that cannot render (e.g. an include)
            return "skipped", f"the template could not be rendered: {exc}"[:300]
        if any("\r" in v or "\n" in v for v in headers.values()):
            return "skipped", "a rendered header holds a line break"
        delivery_id = new_ulid()
        leased = None if self.lease is None else self.wall() + self.lease
        delivery = DeliveryRow(
            delivery_id, run.account_id, run.flow_id, action.key, run.id, profile.id,
            message["url"], msgspec.json.encode(headers).decode(), body,
            f"{run.id}:{action.key}", "pending", 0 if leased is None else 1, at, leased, at,
        )  # fmt: skip
        self.runs.add_delivery(delivery)
        if leased is not None:
            self.ready.append(delivery)
        self.queued_deliveries = True
        return "queued", delivery_id

    def _update_profile(self, operations: list[dict[str, Any]], profile: Profile,
                        at: float) -> str | None:  # fmt: skip
        before = dict(profile.properties)
        for op in operations:
            key = op["property_key"]
            if op["operator"] == "delete":
                profile.properties.pop(key, None)
                continue
            value = op["property_value"]
            kind = op["property_type"]
            if kind == "date" and value == "today":
                value = datetime.fromtimestamp(at, UTC).date().isoformat()
            if kind == "list":
                items = profile.properties.get(key)
                items = list(items) if isinstance(items, list) else []
                if op.get("property_operation") == "remove":
                    items = [i for i in items if i != value]
                elif value not in items:
                    items.append(value)
                value = items
            profile.properties[key] = value
        if len(encode_profile(profile)) > MAX_STORED_PROFILE_BYTES:
            profile.properties = before
            return "not applied: the profile would be too large"
        self.book.touch(profile, _iso(at))
        return None
