"""A flow's `definition`, as Klaviyo's FlowDefinition schema gives it, checked strictly.

Each trigger and action is first checked against Klaviyo's own schema for its type, made
strict (flows/spec.py: unknown keys refused); then what a schema cannot say:

- one trigger, of a kind this server runs (`metric` with its `trigger_filter`, `list`,
  `segment`); date, price-drop and low-inventory triggers are refused as unsupported;
- actions of the kinds this server runs (time-delay, conditional-split, trigger-split,
  multi-branch-split, send-webhook, send-email, send-sms, send-mobile-push, update-profile,
  list-update); the others (A/B tests, content experiments, code, WhatsApp, internal alerts,
  back-in-stock, target-date and countdown delays, internal services, action-output splits)
  are refused, saying so;
- new actions carry a `temporary_id` (an `id` is the server's to give), unique in the flow;
  `entry_action_id` and every link name an action of the flow; no link leads back (no cycle);
- filters (`profile_filter`, `trigger_filter`, split and branch filters) are parsed as
  segments' conditions are (segments/definition.py), with the flow's own kinds: a metric
  timeframe `flow-start`, `profile-not-in-flow`, `profile-sample`, `profile-not-sent-*`;
- time zones are IANA names (or "profile"), times of day HH:MM[:SS], delays at most ten years.

Errors are `DefinitionError`s with a JSON pointer into the request body. What the definition
names in the account (metrics, lists, segments) is checked by the API (api/flows.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from trackhouse.flows.spec import first_error
from trackhouse.segments.definition import (
    DATE_OPERATORS,
    Condition,
    DefinitionError,
    Filter,
    parse_condition,
    parse_date_filter,
    parse_filter,
    parse_groups,
    strict_object,
)

MAX_ACTIONS = 100
MAX_ID = 64  # characters of a temporary id
MAX_DELAY_SECONDS = 3650 * 86400
DELAY_UNITS = {"minutes": 60, "hours": 3600, "days": 86400}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME_OF_DAY = re.compile(r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?\Z", re.ASCII)

TRIGGER_TYPES = {"metric": "Metric", "list": "Added to List", "segment": "Added to List"}
UNSUPPORTED_TRIGGERS = {
    "date": "date-based triggers (profile-property and custom-object dates)",
    "price-drop": "price-drop triggers need a product catalog",
    "low-inventory": "low-inventory triggers need a product catalog",
}
ACTION_SCHEMAS = {
    "time-delay": "TimeDelayAction",
    "conditional-split": "ConditionalBranchAction",
    "trigger-split": "TriggerBranchAction",
    "multi-branch-split": "MultiBranchSplitAction",
    "send-webhook": "SendWebhookAction",
    "send-email": "SendEmailAction",
    "send-sms": "SendSmsAction",
    "send-mobile-push": "SendPushNotificationAction",
    "update-profile": "UpdateProfileAction",
    "list-update": "ListUpdateAction",
}
UNSUPPORTED_ACTIONS = {
    "ab-test": "A/B tests",
    "content-experiment": "content experiments",
    "code": "code actions",
    "send-whatsapp": "WhatsApp messages",
    "send-internal-alert": "internal alerts",
    "back-in-stock-delay": "back-in-stock delays need a product catalog",
    "target-date": "target-date delays",
    "countdown-delay": "countdown delays",
    "internal-service": "Klaviyo's internal services",
    "action-output-split": "action-output splits",
}
MESSAGE_CHANNELS = {
    "send-email": "email",
    "send-sms": "sms",
    "send-mobile-push": "push",
    "send-webhook": "webhook",
}
SPLITS = ("conditional-split", "trigger-split")
STATUSES = ("draft", "manual", "live", "disabled")


@dataclass(frozen=True, slots=True)
class FlowMetricCondition:
    """A profile-metric condition of a flow filter whose timeframe is `flow-start`: the
    events since the profile entered the flow (`condition` is its alltime twin)."""

    condition: Condition


@dataclass(frozen=True, slots=True)
class FlowCondition:
    """profile-not-in-flow, profile-sample, profile-not-sent-email|sms|push."""

    type: str
    percentage: int = 0
    timeframe: Filter | None = None


ProfileFilter = tuple[tuple[Condition | FlowMetricCondition | FlowCondition, ...], ...]
# A trigger filter: groups AND, conditions OR; each condition an event property's test.
TriggerFilter = tuple[tuple[tuple[str, Filter], ...], ...]


@dataclass(frozen=True, slots=True)
class Trigger:
    type: str  # metric | list | segment
    id: str
    filter: TriggerFilter | None = None


@dataclass(slots=True)
class Action:
    key: str  # its temporary id while it is being created, its id once stored
    type: str
    status: str  # draft | manual | live | disabled
    links: dict[str, str | None]  # next, or next_if_true / next_if_false
    raw: dict[str, Any]  # as given (checked), with ids as stored
    filter: ProfileFilter | TriggerFilter | None = None
    branches: list[tuple[str | None, ProfileFilter | None]] = field(default_factory=list)

    @property
    def channel(self) -> str | None:
        """The channel of its message (email, sms, push, webhook), if it sends one."""
        return MESSAGE_CHANNELS.get(self.type)


@dataclass(slots=True)
class FlowDefinition:
    trigger: Trigger
    actions: list[Action]
    entry: str | None
    profile_filter: ProfileFilter | None
    reentry: tuple[int, str] | None  # (duration, unit)
    raw: dict[str, Any]

    @property
    def trigger_type(self) -> str:
        return TRIGGER_TYPES[self.trigger.type]

    def action(self, key: str) -> Action | None:
        for action in self.actions:
            if action.key == key:
                return action
        return None

    def named(self) -> dict[str, set[str]]:
        """What the definition names in the account: metrics, lists, segments."""
        found: dict[str, set[str]] = {"metric": set(), "list": set(), "segment": set()}
        found[self.trigger.type].add(self.trigger.id)
        for action in self.actions:
            if action.type == "list-update":
                found["list"].add(action.raw["data"]["list_id"])
        return found


def _fail(pointer: str, detail: str) -> DefinitionError:
    return DefinitionError(pointer, detail)


def _check_shape(schema: str, value: Any, pointer: str) -> None:
    error = first_error(schema, value, pointer)
    if error is not None:
        raise _fail(*error)


def _flow_condition(value: Any, pointer: str) -> Condition | FlowMetricCondition | FlowCondition:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "profile-metric":
        frame = value.get("timeframe_filter")
        if isinstance(frame, dict) and frame.get("operator") == "flow-start":
            strict_object(frame, pointer + "/timeframe_filter", {"type", "operator"}, set())
            if frame["type"] != "date":
                raise _fail(pointer + "/timeframe_filter/type", "must be 'date'")
            alltime = {**value, "timeframe_filter": {"type": "date", "operator": "alltime"}}
            return FlowMetricCondition(parse_condition(alltime, pointer))
    if kind == "profile-sample":
        raw = strict_object(value, pointer, {"type", "percentage"}, set())
        percentage = raw["percentage"]
        if isinstance(percentage, bool) or not isinstance(percentage, int):
            raise _fail(pointer + "/percentage", "must be an integer")
        if not 0 <= percentage <= 100:
            raise _fail(pointer + "/percentage", "must be between 0 and 100")
        return FlowCondition(kind, percentage=percentage)
    if kind in ("profile-not-in-flow", "profile-not-sent-email", "profile-not-sent-sms",
                "profile-not-sent-push"):  # fmt: skip
        raw = strict_object(value, pointer, {"type", "timeframe_filter"}, set())
        frame = parse_date_filter(raw["timeframe_filter"], pointer + "/timeframe_filter",
                                  {"alltime", "in-the-last"})  # fmt: skip
        return FlowCondition(kind, timeframe=frame)
    return parse_condition(value, pointer)


def parse_profile_filter(value: Any, pointer: str) -> ProfileFilter | None:
    if value is None:
        return None
    found: ProfileFilter = parse_groups(value, pointer, _flow_condition, "filter")
    return found


def _property_condition(metric_id: str) -> Callable[[Any, str], tuple[str, Filter]]:
    def parse(value: Any, pointer: str) -> tuple[str, Filter]:
        raw = strict_object(value, pointer, {"type", "metric_id", "field", "filter"}, set())
        if raw["type"] != "metric-property":
            raise _fail(pointer + "/type", "must be 'metric-property'")
        if raw["metric_id"] != metric_id:
            raise _fail(pointer + "/metric_id", "must be the trigger's metric")
        name = raw["field"]
        if not isinstance(name, str) or not name or len(name) > 1000:
            raise _fail(pointer + "/field", "must name an event property")
        if name == "$extra":
            raise _fail(pointer + "/field", "'$extra' holds values that are not segmentable")
        return name, _event_filter(raw["filter"], pointer + "/filter")

    return parse


def _event_filter(value: Any, pointer: str) -> Filter:
    if (
        isinstance(value, dict)
        and value.get("type") == "numeric"
        and (value.get("operator") == "between")
    ):
        raw = strict_object(value, pointer, {"type", "operator", "start", "end"}, set())
        for key in ("start", "end"):
            if isinstance(raw[key], bool) or not isinstance(raw[key], int | float):
                raise _fail(f"{pointer}/{key}", "must be a number")
        if raw["end"] < raw["start"]:
            raise _fail(pointer + "/end", "must not be less than start")
        return Filter("numeric", "between", start=raw["start"], end=raw["end"])
    if isinstance(value, dict) and value.get("type") == "date":
        return parse_date_filter(value, pointer, set(DATE_OPERATORS))
    return parse_filter(value, pointer)


def parse_trigger_filter(value: Any, pointer: str, metric_id: str) -> TriggerFilter | None:
    if value is None:
        return None
    found: TriggerFilter = parse_groups(value, pointer, _property_condition(metric_id), "filter")
    return found


def _trigger(value: Any, pointer: str) -> Trigger:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in UNSUPPORTED_TRIGGERS:
        raise _fail(pointer + "/type", f"{UNSUPPORTED_TRIGGERS[kind]}: not supported by this"
                                       " server")  # fmt: skip
    schemas = {"metric": "MetricTrigger", "list": "ListTrigger", "segment": "SegmentTrigger"}
    if kind not in schemas:
        raise _fail(pointer + "/type", "must be one of metric, list, segment")
    _check_shape(schemas[kind], value, pointer)
    trigger_id = value.get("id")
    if not isinstance(trigger_id, str) or not trigger_id:
        raise _fail(pointer + "/id", f"the {kind} to trigger on is required")
    found = None
    if kind == "metric":
        found = parse_trigger_filter(value.get("trigger_filter"), pointer + "/trigger_filter",
                                     trigger_id)  # fmt: skip
    return Trigger(kind, trigger_id, found)


def _zone(value: Any, pointer: str) -> None:
    if value is None or value == "profile":
        return
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(pointer, "must be an IANA time zone name or 'profile'") from None


def _time_delay(data: dict[str, Any], pointer: str) -> None:
    unit = data.get("unit", "days")
    value = data["value"]
    if value < 0 or value * DELAY_UNITS[unit] > MAX_DELAY_SECONDS:
        raise _fail(pointer + "/value", "a delay is 0 or more, and at most ten years")
    if data.get("secondary_value") is not None:
        raise _fail(pointer + "/secondary_value", "not supported by this server")
    _zone(data.get("timezone"), pointer + "/timezone")
    moment = data.get("delay_until_time")
    if moment is not None and not _TIME_OF_DAY.match(moment):
        raise _fail(pointer + "/delay_until_time", "must be a time of day, HH:MM or HH:MM:SS")
    days = data.get("delay_until_weekdays")
    if days is not None and (not days or len(set(days)) != len(days)):
        raise _fail(pointer + "/delay_until_weekdays", "must name one or more distinct days")


def _webhook(message: dict[str, Any], pointer: str) -> None:
    url = message.get("url")
    if not isinstance(url, str) or len(url) > 2000:
        raise _fail(pointer + "/url", "must be an http or https URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise _fail(pointer + "/url", "must be an http or https URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(pointer + "/url", "must be an http or https URL")
    headers = message.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > 50:
        raise _fail(pointer + "/headers", "must be an object of at most 50 headers")
    for name, text in headers.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}", name):
            raise _fail(f"{pointer}/headers/{name[:100]}", "not a valid HTTP header name")
        if not isinstance(text, str) or len(text) > 8000 or re.search(r"[\r\n\x00]", text):
            raise _fail(f"{pointer}/headers/{name}", "must be a string on one line")


def _action(value: Any, pointer: str, creating: bool) -> Action:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in UNSUPPORTED_ACTIONS:
        raise _fail(pointer + "/type", f"{UNSUPPORTED_ACTIONS[kind]}: not supported by this"
                                       " server")  # fmt: skip
    if kind not in ACTION_SCHEMAS:
        raise _fail(pointer + "/type", "unknown action type")
    _check_shape(ACTION_SCHEMAS[kind], value, pointer)
    if creating:
        if value.get("id") is not None:
            raise _fail(pointer + "/id", "a new action has a temporary_id; its id is given")
        key = value.get("temporary_id")
    else:
        key = value.get("id") or value.get("temporary_id")
    if not isinstance(key, str) or not key or len(key) > MAX_ID:
        raise _fail(pointer + "/temporary_id", f"1 to {MAX_ID} characters, unique in the flow")
    data = value.get("data") or {}
    status = data.get("status", "draft") if isinstance(data, dict) else "draft"
    links: dict[str, str | None]
    if kind in SPLITS:
        raw_links = value.get("links")
        if raw_links is None:
            raise _fail(pointer + "/links", "next_if_true and next_if_false are required")
        links = {"next_if_true": raw_links["next_if_true"],
                 "next_if_false": raw_links["next_if_false"]}  # fmt: skip
    elif kind == "multi-branch-split":
        if value.get("links") is not None:
            raise _fail(pointer + "/links", "a multi-branch split links through its branches")
        links = {}
    else:
        links = {"next": (value.get("links") or {}).get("next")}
    action = Action(key, kind, status, links, value)
    at = pointer + "/data"
    if kind == "time-delay":
        _time_delay(data, at)
    elif kind == "conditional-split":
        action.filter = parse_profile_filter(data["profile_filter"], at + "/profile_filter")
    elif kind == "multi-branch-split":
        elses = 0
        for n, branch in enumerate(data["branches"]):
            bp = f"{at}/branches/{n}"
            elses += bool(branch.get("is_else"))
            found = None
            if not branch.get("is_else"):
                if branch.get("branch_filter") is None:
                    raise _fail(bp + "/branch_filter", "a branch other than else needs a filter")
                found = parse_profile_filter(branch["branch_filter"], bp + "/branch_filter")
            action.branches.append(((branch.get("links") or {}).get("next"), found))
        if elses != 1 or len(data["branches"]) < 2:
            raise _fail(at + "/branches", "one else branch and at least one other")
    elif kind == "send-webhook":
        _webhook(data["message"], at + "/message")
    elif kind == "update-profile" and not data["profile_operations"]:
        raise _fail(at + "/profile_operations", "at least one operation")
    for name in ("additional_filters",):
        message = data.get("message") if isinstance(data, dict) else None
        if isinstance(message, dict) and message.get(name) is not None:
            parse_profile_filter(message[name], f"{at}/message/{name}")
    return action


def _trigger_split(action: Action, trigger: Trigger, pointer: str) -> None:
    data = action.raw["data"]
    if data["trigger_type"] != trigger.type or data["trigger_id"] != trigger.id:
        raise _fail(pointer + "/data/trigger_id", "a trigger split tests the flow's own trigger")
    if trigger.type != "metric":
        raise _fail(pointer + "/data/trigger_type", "only a metric trigger has event properties")
    action.filter = parse_trigger_filter(data["trigger_filter"], pointer + "/data/trigger_filter",
                                         trigger.id)  # fmt: skip


def _next(action: Action) -> list[tuple[str, str | None]]:
    """(pointer below the action, target) of each of its links."""
    if action.type == "multi-branch-split":
        return [(f"/data/branches/{n}/links/next", target)
                for n, (target, _) in enumerate(action.branches)]  # fmt: skip
    return [(f"/links/{name}", target) for name, target in action.links.items()]


def parse_flow_definition(
    value: Any, pointer: str = "/data/attributes/definition", *, creating: bool = True
) -> FlowDefinition:
    raw = strict_object(value, pointer, {"triggers", "actions", "entry_action_id"},
                  {"profile_filter", "reentry_criteria"})  # fmt: skip
    triggers = raw["triggers"]
    if not isinstance(triggers, list) or len(triggers) != 1:
        raise _fail(pointer + "/triggers", "a flow has exactly one trigger")
    trigger = _trigger(triggers[0], pointer + "/triggers/0")
    profile_filter = parse_profile_filter(raw.get("profile_filter"), pointer + "/profile_filter")
    reentry = None
    if raw.get("reentry_criteria") is not None:
        _check_shape("ReentryCriteria", raw["reentry_criteria"], pointer + "/reentry_criteria")
        duration = raw["reentry_criteria"]["duration"]
        if not 0 <= duration <= 100_000:
            raise _fail(pointer + "/reentry_criteria/duration", "must be 0 to 100000")
        reentry = (duration, raw["reentry_criteria"]["unit"])
    actions_raw = raw["actions"]
    if not isinstance(actions_raw, list) or len(actions_raw) > MAX_ACTIONS:
        raise _fail(pointer + "/actions", f"must be a list of at most {MAX_ACTIONS} actions")
    actions = []
    where: dict[str, int] = {}
    for n, item in enumerate(actions_raw):
        at = f"{pointer}/actions/{n}"
        action = _action(item, at, creating)
        if action.key in where:
            raise _fail(at + "/temporary_id", "another action of the flow has this id")
        if action.type == "trigger-split":
            _trigger_split(action, trigger, at)
        where[action.key] = n
        actions.append(action)
    entry = raw["entry_action_id"]
    if entry is not None and entry not in where:
        raise _fail(pointer + "/entry_action_id", "must be the id of one of the flow's actions")
    if entry is None and actions:
        raise _fail(pointer + "/entry_action_id", "the flow's first action is required")
    for n, action in enumerate(actions):
        for below, target in _next(action):
            if target is not None and target not in where:
                raise _fail(f"{pointer}/actions/{n}{below}", "must be the id of one of the"
                                                             " flow's actions")  # fmt: skip
    _no_cycle(actions, where, pointer)
    return FlowDefinition(trigger, actions, entry, profile_filter, reentry, raw)


def _no_cycle(actions: list[Action], where: dict[str, int], pointer: str) -> None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for start in where:
        if start in state:
            continue
        stack: list[tuple[str, list[tuple[str, str | None]]]] = [(start, [])]
        stack[-1] = (start, _next(actions[where[start]]))
        state[start] = 1
        while stack:
            key, todo = stack[-1]
            if not todo:
                state[key] = 2
                stack.pop()
                continue
            below, target = todo.pop()
            if target is None or state.get(target) == 2:
                continue
            if state.get(target) == 1:
                raise _fail(f"{pointer}/actions/{where[key]}{below}",
                            "this link leads back to an earlier action: a cycle")  # fmt: skip
            state[target] = 1
            stack.append((target, _next(actions[where[target]])))


def with_ids(definition: FlowDefinition, new_id: Callable[[], str]) -> dict[str, Any]:
    """The definition as stored and answered: each action's `temporary_id` replaced by an id
    of its own (`new_id`), links and `entry_action_id` following; the statuses filled in."""
    ids = {action.key: new_id() for action in definition.actions}
    raw = copy.deepcopy(definition.raw)
    for action, stored in zip(definition.actions, raw["actions"], strict=True):
        stored.pop("temporary_id", None)
        stored["id"] = action.key = ids[action.key]
        links = stored.get("links")
        if isinstance(links, dict):
            for name, target in links.items():
                links[name] = None if target is None else ids[target]
        data = stored.get("data")
        if isinstance(data, dict):
            for branch in data.get("branches") or []:
                branch_links = branch.get("links")
                if isinstance(branch_links, dict) and branch_links.get("next") is not None:
                    branch_links["next"] = ids[branch_links["next"]]
            if (
                action.type in MESSAGE_CHANNELS
                or "status" in data
                or action.type in ("update-profile", "list-update")
            ):
                data.setdefault("status", action.status)
        action.links = {n: None if t is None else ids[t] for n, t in action.links.items()}
        action.branches = [(None if t is None else ids[t], f) for t, f in action.branches]
        action.raw = stored
    if definition.entry is not None:
        raw["entry_action_id"] = definition.entry = ids[definition.entry]
    definition.raw = raw
    return raw


# -- editing a stored definition (PATCH and DELETE /api/flow-actions/{id}) ---------------------


def _targets(action: dict[str, Any]) -> list[dict[str, Any]]:
    """The dicts holding an action's links (its `links`, or each branch's)."""
    found = [action["links"]] if isinstance(action.get("links"), dict) else []
    data = action.get("data")
    if isinstance(data, dict):
        found += [b["links"] for b in data.get("branches") or []
                  if isinstance(b, dict) and isinstance(b.get("links"), dict)]  # fmt: skip
    return found


def replaced_action(
    stored: dict[str, Any], action_id: str, new: Any, pointer: str
) -> dict[str, Any]:
    """The stored definition with action `action_id` replaced by `new` (its id kept, its type
    unchanged); checked again as a whole by the caller. Errors point into `new` at `pointer`."""
    if not isinstance(new, dict):
        raise _fail(pointer, "must be an object: the action's definition")
    if new.get("temporary_id") is not None:
        raise _fail(pointer + "/temporary_id", "an action that exists is named by its id")
    if new.get("id") is not None and new["id"] != action_id:
        raise _fail(pointer + "/id", "must be the id of the action in the URL")
    raw = copy.deepcopy(stored)
    for n, action in enumerate(raw["actions"]):
        if action.get("id") == action_id:
            if new.get("type") != action.get("type"):
                raise _fail(pointer + "/type", f"an action's type cannot change (it is "
                                               f"{action.get('type')})")  # fmt: skip
            raw["actions"][n] = {**copy.deepcopy(new), "id": action_id}
            return raw
    raise _fail(pointer, "the action is not in its flow's definition")


def without_action(stored: dict[str, Any], action_id: str) -> dict[str, Any]:
    """The stored definition without action `action_id`: what linked to it (and the entry)
    now leads where it led. A split can go only when at most one of its branches leads on."""
    raw = copy.deepcopy(stored)
    index = next((n for n, a in enumerate(raw["actions"]) if a.get("id") == action_id), None)
    if index is None:
        raise _fail("", "the action is not in its flow's definition")
    gone = raw["actions"].pop(index)
    onward = {t.get("next", t.get("next_if_true")) for t in _targets(gone)}
    onward |= {t.get("next_if_false") for t in _targets(gone) if "next_if_false" in t}
    onward.discard(None)
    if len(onward) > 1:
        raise _fail("", "a split with more than one branch leading on cannot be deleted; "
                        "delete the actions of all its branches but one first")  # fmt: skip
    after = next(iter(onward), None)
    for action in raw["actions"]:
        for links in _targets(action):
            for name, target in links.items():
                if target == action_id:
                    links[name] = after
    if raw.get("entry_action_id") == action_id:
        raw["entry_action_id"] = after
    return raw
