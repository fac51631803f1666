"""Bulk create: POST /api/event-bulk-create-jobs, GET /api/event-bulk-create-jobs/{id}, and
POST /client/event-bulk-create.

A bulk request becomes one log submission per profile group, committed together with its job
record in one transaction: the 202 means every event of the request is in the log.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import limits, translate
from trackhouse.api.accept import (
    RECEIPT_HEADER,
    Caller,
    absolute_url,
    append,
    event_log,
    identify_caller,
    jsonapi_response,
)
from trackhouse.api.body import MB, decode_json, read_body, require_json_content_type
from trackhouse.api.errors import APIError, invalid
from trackhouse.api.flow_admin import decisions_of
from trackhouse.api.revision import (
    BULK_CREATE_JOBS_SINCE,
    CLIENT_BULK_CREATE_SINCE,
    require_since,
)
from trackhouse.api.wire import BulkGroup, BulkJobCreate, ClientBulkCreate
from trackhouse.ids import new_ulid
from trackhouse.log import BulkJob
from trackhouse.model import Event, ProfileChange, Submission
from trackhouse.store.base import OUTCOMES, Outcome, event_id

MAX_BODY = 5 * MB
MAX_EVENTS = 1000
JOB_TYPE = "event-bulk-create-job"


def parse_groups(
    groups: list[BulkGroup],
    wheres: list[str],
    list_at: str,
    caller: Caller,
    now: int,
    *,
    from_client: bool,
) -> list[tuple[ProfileChange, list[Event]]]:
    """The groups, each with the JSON pointer of where it stands in the request."""
    count = sum(len(g.attributes.events.data) for g in groups)
    if count > MAX_EVENTS:
        raise limits.too_many_events(count, list_at)
    parsed = [
        translate.bulk_group(g, where, caller.rules, now, from_client=from_client)
        for g, where in zip(groups, wheres, strict=True)
    ]
    if caller.rules.bulk_repeated_unique_id_fails:
        translate.check_repeated_unique_ids(parsed, wheres)
    return parsed


def submissions(
    parsed: list[tuple[ProfileChange, list[Event]]],
    caller: Caller,
    received_at: float,
    source: str,
    job_id: str | None,
    receipt_id: str | None = None,
) -> list[Submission]:
    return [
        Submission(
            account_id=caller.account_id,
            received_at=received_at,
            source=source,
            revision=caller.rules.revision,
            profile=profile,
            events=events,
            metric_cap=caller.rules.metric_cap,
            job_id=job_id,
            job_group=None if job_id is None else n,
            receipt_id=receipt_id,
        )
        for n, (profile, events) in enumerate(parsed)
    ]


def rejected_events(job: BulkJob, outcomes: list[Outcome]) -> list[dict[str, str | None]]:
    """Each rejected event, pointed at where it stood in the request."""
    return [
        {
            "pointer": "/data/attributes/events-bulk-create/data/"
            # Outcomes stored before groups were recorded: then a job's groups were
            # consecutive log entries from first_seq on.
            f"{o.seq - job.first_seq if o.job_group is None else o.job_group}"
            f"/attributes/events/data/{o.idx}",
            "detail": o.detail,
        }
        for o in outcomes
        if o.outcome == "rejected"
    ]


def flow_decisions(request: Request, job: BulkJob, outcomes: list[Outcome]) -> list[dict]:
    """What each flow the job's stored events could trigger decided, event by event."""
    if not outcomes:
        return []
    decided = decisions_of(request, job.account_id, outcomes)
    return [
        {"event_id": event_id(o.event_number), **d}
        for o in outcomes
        if o.event_number is not None and o.outcome == "stored"
        for d in decided.get((o.seq, o.idx), [])
    ]


def job_document(request: Request, job: BulkJob, outcomes: list[Outcome]) -> dict:
    """The job, with what processing made of its events so far."""
    url = absolute_url(request, f"/api/event-bulk-create-jobs/{job.id}")
    counts = Counter(o.outcome for o in outcomes)
    done = len(outcomes)
    status = "complete" if done >= job.event_count else "processing" if done else "queued"
    return {
        "data": {
            "type": JOB_TYPE,
            "id": job.id,
            "attributes": {
                "status": status,
                "created_at": job.created_at,
                "total_count": job.event_count,
                "completed_count": done,
                "failed_count": counts["rejected"],
                "outcomes": {name: counts[name] for name in OUTCOMES},
                "rejected_events": rejected_events(job, outcomes),
                "flow_decisions": flow_decisions(request, job, outcomes),
            },
            "links": {"self": url},
        },
        "links": {"self": url},
    }


async def create_bulk_job(request: Request) -> Response:
    caller = identify_caller(request, scope="events:write", endpoint_class="bulk")
    require_since(caller.day, BULK_CREATE_JOBS_SINCE)
    require_json_content_type(request)
    received_at = time.time()
    body = await read_body(request, MAX_BODY)
    groups = decode_json(body, BulkJobCreate).data.attributes.events_bulk_create.data
    groups_at = "/data/attributes/events-bulk-create/data"
    if not groups:
        raise invalid("A bulk request needs at least one profile group.", groups_at)
    wheres = [f"{groups_at}/{i}" for i in range(len(groups))]
    now = int(request.app.state.clocks.now(caller.account_id))
    parsed = parse_groups(groups, wheres, groups_at, caller, now, from_client=False)
    job = BulkJob(
        id=new_ulid(),
        account_id=caller.account_id,
        created_at=datetime.fromtimestamp(received_at, UTC).isoformat(timespec="seconds"),
        event_count=sum(len(events) for _, events in parsed),
        submission_count=len(parsed),
    )
    await append(request, submissions(parsed, caller, received_at, "api", job.id), job)
    return jsonapi_response(202, job_document(request, job, []), caller.headers)


async def get_bulk_job(request: Request) -> Response:
    caller = identify_caller(request, scope="events:read", endpoint_class="job")
    job_id = request.path_params["job_id"]
    job = event_log(request).get_job(caller.account_id, job_id)
    store = request.app.state.store
    if job is not None and job.first_seq <= store.reset_position(caller.account_id):
        job = None  # its account was reset (test control) after it was accepted
    if job is None:
        raise APIError(404, "not_found", f"A bulk create job with id {job_id[:64]} does not exist.")
    outcomes = store.job_outcomes(caller.account_id, job_id)
    return jsonapi_response(200, job_document(request, job, outcomes), caller.headers)


async def create_client_bulk(request: Request) -> Response:
    caller = identify_caller(request, scope=None, endpoint_class="bulk", public=True)
    require_since(caller.day, CLIENT_BULK_CREATE_SINCE)
    require_json_content_type(request)
    received_at = time.time()
    body = await read_body(request, MAX_BODY)
    group = decode_json(body, ClientBulkCreate).data
    parsed = parse_groups(
        [group],
        ["/data"],
        "/data/attributes/events/data",
        caller,
        int(request.app.state.clocks.now(caller.account_id)),
        from_client=True,
    )
    # One profile group, so one submission: its receipt tells what became of each event.
    receipt_id = new_ulid()
    await append(request, submissions(parsed, caller, received_at, "client", None, receipt_id))
    return jsonapi_response(202, headers=caller.headers | {RECEIPT_HEADER: receipt_id})
