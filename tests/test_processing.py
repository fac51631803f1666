"""Processing through the HTTP API: identity, profiles, metrics, dedup, outcomes, test control."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid

import httpx
from conftest import (
    ADMIN_KEY,
    NEWEST,
    PRIVATE_KEY,
    PUBLIC_KEY,
    bulk_body,
    bulk_event,
    event_body,
    single_error,
)

from trackhouse.backends import STORE_FILE

AUTH = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}


def unique_email() -> str:
    return f"{uuid.uuid4().hex[:12]}@klaviyo-demo.com"


def send(api, body, revision=NEWEST, path="/api/events") -> str:
    r = api.post(path, json=body, headers={"revision": revision})
    assert r.status_code == 202, r.text
    return r.headers["Trackhouse-Receipt"]


def outcomes(api, server, receipt: str) -> list[dict]:
    server.settle()
    r = api.get(f"/api/event-receipts/{receipt}")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["attributes"]["status"] == "processed"
    return r.json()["data"]["attributes"]["outcomes"]


def only_outcome(api, server, receipt: str) -> dict:
    (outcome,) = outcomes(api, server, receipt)
    return outcome


def profile(api, profile_id: str) -> dict:
    r = api.get(f"/api/profiles/{profile_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]["attributes"]


# -- identity --------------------------------------------------------------------------------


def test_same_person_by_email_then_phone_then_external_id_lands_on_one_profile(api, server):
    email = unique_email()
    phone = "+1323916" + str(uuid.uuid4().int)[:4]
    external = uuid.uuid4().hex
    first = only_outcome(
        api,
        server,
        send(api, event_body(profile_attributes={"email": email, "phone_number": phone})),
    )
    second = only_outcome(
        api,
        server,
        send(
            api,
            event_body(
                "x", "Second", profile_attributes={"phone_number": phone, "external_id": external}
            ),
        ),
    )
    third = only_outcome(
        api,
        server,
        send(api, event_body("x", "Third", profile_attributes={"external_id": external})),
    )
    assert first["outcome"] == second["outcome"] == third["outcome"] == "stored"
    assert first["profile_id"] == second["profile_id"] == third["profile_id"]
    assert len(first["profile_id"]) == 26  # ULID style, like Klaviyo's profile ids
    p = profile(api, first["profile_id"])
    assert (p["email"], p["phone_number"], p["external_id"]) == (email, phone, external)


def test_email_matches_case_insensitively(api, server):
    email = unique_email()
    a = only_outcome(api, server, send(api, event_body(email=email)))
    b = only_outcome(api, server, send(api, event_body(email=email.upper(), metric="Other")))
    assert a["profile_id"] == b["profile_id"]


def test_conflicting_identifiers_never_merge_two_people(api, server):
    email_a, email_b = unique_email(), unique_email()
    phone_b = "+1415555" + str(uuid.uuid4().int)[:4]
    a = only_outcome(api, server, send(api, event_body(email=email_a)))
    b = only_outcome(
        api,
        server,
        send(api, event_body(profile_attributes={"email": email_b, "phone_number": phone_b})),
    )
    # Email says person A, phone says person B: lands on A (email is tried first), B keeps
    # its phone, and the outcome says so.
    both = only_outcome(
        api,
        server,
        send(
            api,
            event_body(
                metric="Both", profile_attributes={"email": email_a, "phone_number": phone_b}
            ),
        ),
    )
    assert both["outcome"] == "stored"
    assert both["profile_id"] == a["profile_id"] != b["profile_id"]
    assert f"phone_number belongs to profile {b['profile_id']}" in both["detail"]
    assert profile(api, a["profile_id"])["phone_number"] is None
    assert profile(api, b["profile_id"])["phone_number"] == phone_b


def test_profile_id_wins_over_other_identifiers_and_unknown_id_alone_is_rejected(api, server):
    known = only_outcome(api, server, send(api, event_body(email=unique_email())))
    body = event_body(metric="By id", profile_attributes={"email": unique_email()})
    body["data"]["attributes"]["profile"]["data"]["id"] = known["profile_id"]
    by_id = only_outcome(api, server, send(api, body))
    assert by_id["profile_id"] == known["profile_id"]
    assert "email belongs" not in (by_id["detail"] or "")

    unknown = event_body(profile_attributes={})
    unknown["data"]["attributes"]["profile"]["data"]["id"] = "01GDDKASAP8TKDDA2GRZDSVP4H"
    rejected = only_outcome(api, server, send(api, unknown))
    assert rejected["outcome"] == "rejected"
    assert "no profile with id 01GDDKASAP8TKDDA2GRZDSVP4H" in rejected["detail"]


def test_server_endpoint_changes_an_identifier_client_endpoint_does_not(api, server):
    external, old, new = uuid.uuid4().hex, unique_email(), unique_email()
    first = only_outcome(
        api,
        server,
        send(api, event_body(profile_attributes={"external_id": external, "email": old})),
    )
    client_body = event_body(
        metric="Client", profile_attributes={"external_id": external, "email": new}
    )
    client = only_outcome(
        api, server, send(api, client_body, path=f"/client/events?company_id={PUBLIC_KEY}")
    )
    assert client["profile_id"] == first["profile_id"]
    assert "client endpoints cannot change" in client["detail"]
    assert profile(api, first["profile_id"])["email"] == old

    only_outcome(
        api,
        server,
        send(
            api,
            event_body(metric="Server", profile_attributes={"external_id": external, "email": new}),
        ),
    )
    assert profile(api, first["profile_id"])["email"] == new
    # The old address is free again: it now makes a new profile.
    again = only_outcome(api, server, send(api, event_body(email=old, metric="Old")))
    assert again["profile_id"] != first["profile_id"]


# -- profile attributes ----------------------------------------------------------------------


def test_attributes_location_properties_and_patch_operations(api, server):
    email = unique_email()
    attrs = {
        "email": email,
        "first_name": "Sarah",
        "title": "Manager",
        "location": {"city": "New York", "zip": "10017"},
        "properties": {"plan": "trial", "skus": "40571", "old": 1},
    }
    first = only_outcome(api, server, send(api, event_body(profile_attributes=attrs)))
    patch = {
        "email": email,
        "last_name": "Mason",
        "location": {"city": "Boston"},
        "properties": {"plan": "paid"},
        "meta": {
            "patch_properties": {
                "append": {"skus": ["92538", "11111"], "tags": "new"},
                "unset": ["old"],
            }
        },
    }
    send(api, event_body(metric="Patch 1", profile_attributes=patch), revision="2026-07-15")
    unappend = {"email": email, "meta": {"patch_properties": {"unappend": {"skus": "92538"}}}}
    send(api, event_body(metric="Patch 2", profile_attributes=unappend), revision="2026-07-15")
    server.settle()
    p = profile(api, first["profile_id"])
    assert (p["first_name"], p["last_name"], p["title"]) == ("Sarah", "Mason", "Manager")
    assert p["location"]["city"] == "Boston" and p["location"]["zip"] == "10017"
    # A scalar appended to becomes an array (reference § 2.15).
    assert p["properties"] == {"plan": "paid", "skus": ["11111"], "tags": ["new"]}
    assert p["created"] <= p["updated"] and p["last_event_date"] is not None


def test_patch_identifiers_adds_and_removes_secondary_emails(api, server):
    primary, second, third = unique_email(), unique_email(), unique_email()
    meta = {"patch_identifiers": {"append": {"email": [second, third]}}}
    body = event_body(profile_attributes={"email": primary})
    body["data"]["attributes"]["profile"]["data"]["meta"] = meta  # 2026-10-15: beside attributes
    first = only_outcome(api, server, send(api, body))
    assert profile(api, first["profile_id"])["secondary_emails"] == [second, third]
    # A secondary email identifies the profile.
    by_second = only_outcome(api, server, send(api, event_body(email=second, metric="2nd")))
    assert by_second["profile_id"] == first["profile_id"]
    body["data"]["attributes"]["profile"]["data"]["meta"] = {
        "patch_identifiers": {"unappend": {"email": second}}
    }
    body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] = "Remove"
    only_outcome(api, server, send(api, body))
    assert profile(api, first["profile_id"])["secondary_emails"] == [third]


def test_legacy_dollar_fields_reach_the_profile_and_event(api, server):
    email = unique_email()
    payload = {
        "token": PUBLIC_KEY,
        "event": "Ordered Product",
        "customer_properties": {
            "$email": email,
            "$first_name": "Leg",
            "$city": "Paris",
            "vip": True,
        },
        "properties": {"$event_id": "legacy-1", "$value": 42.5, "item": "Boots"},
        "time": 1700000000,
    }
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    for _ in range(2):  # the same $event_id twice: stored once
        assert httpx.get(f"{server.url}/api/track", params={"data": data}).text == "1"
    server.settle()
    profile_id = next(
        o["profile_id"]
        for o in outcomes(api, server, send(api, event_body(email=email, metric="Lookup")))
    )
    p = profile(api, profile_id)
    assert (p["first_name"], p["location"]["city"], p["properties"]) == (
        "Leg",
        "Paris",
        {"vip": True},
    )
    rows = stored_events(server, profile_id, "Ordered Product")
    assert rows == [("legacy-1", 42.5, 1700000000, {"item": "Boots"})]


# -- metrics ---------------------------------------------------------------------------------


def test_metric_cap_of_200_for_old_revisions_is_a_rejected_outcome(start_server):
    server = start_server()
    with server.client(**AUTH) as api:
        names = [f"Metric {i}" for i in range(200)]
        body = bulk_body([({"email": "metrics@klaviyo-demo.com"}, [bulk_event(n) for n in names])])
        assert api.post("/api/event-bulk-create-jobs", json=body).status_code == 202
        # Processed first: on a partitioned log, another person's event may be processed
        # before it otherwise (the cap counts the metrics that exist when it is processed).
        server.settle()
        old = {
            "data": {
                "type": "event",
                "attributes": {
                    "profile": {"$email": "old@klaviyo-demo.com"},
                    "metric": {"name": "Metric 201"},
                    "properties": {},
                },
            }
        }
        rejected = only_outcome(api, server, send(api, old, revision="2023-01-24"))
        assert rejected["outcome"] == "rejected"
        assert "200 metrics" in rejected["detail"]
        old["data"]["attributes"]["metric"]["name"] = "Metric 7"  # an existing metric is fine
        assert (
            only_outcome(api, server, send(api, old, revision="2023-01-24"))["outcome"] == "stored"
        )
        # Newer revisions have no cap.
        assert (
            only_outcome(api, server, send(api, event_body(metric="Metric 201")))["outcome"]
            == "stored"
        )
        services = server.query(STORE_FILE, "SELECT DISTINCT service FROM metrics")
        assert [
            bytes(s) if isinstance(s, bytes | memoryview) else s.encode() for (s,) in services
        ] == [b"api"]
        assert server.query(STORE_FILE, "SELECT count(*) FROM metrics") == [(201,)]


# -- dedup -----------------------------------------------------------------------------------


def test_repeated_unique_id_is_stored_once_naming_the_key(api, server):
    email = unique_email()
    first = only_outcome(api, server, send(api, event_body(email=email, unique_id="order-9")))
    again = only_outcome(
        api,
        server,
        send(api, event_body(email=email, unique_id="order-9", time="2024-01-01T00:00:00Z")),
    )
    other_metric = only_outcome(
        api, server, send(api, event_body(email=email, metric="Other", unique_id="order-9"))
    )
    assert first["outcome"] == "stored" and other_metric["outcome"] == "stored"
    assert again["outcome"] == "deduplicated"
    assert again["event_id"] == first["event_id"]
    assert "unique_id 'order-9'" in again["detail"]


def test_of_two_repeats_in_one_batch_the_first_sent_is_kept(api, server):
    """One bulk group repeating a unique_id (allowed before 2025-01-15) is one log entry, so
    both events are in one insert: the dedup key keeps the first (the batch's order), and the
    second's outcome names it."""
    email = unique_email()
    events = [bulk_event(unique_id="twice", properties={"n": n}) for n in (1, 2)]
    r = api.post("/api/event-bulk-create-jobs", json=bulk_body([({"email": email}, events)]),
                 headers={"revision": "2024-10-15"})  # fmt: skip
    assert r.status_code == 202, r.text
    server.settle()
    status = api.get(f"/api/event-bulk-create-jobs/{r.json()['data']['id']}").json()
    assert status["data"]["attributes"]["outcomes"] == {"stored": 1, "deduplicated": 1,
                                                        "rejected": 0}  # fmt: skip
    profile = api.get("/api/profiles", params={"filter": f'equals(email,"{email}")'}).json()
    (profile_id,) = [p["id"] for p in profile["data"]]
    stored = api.get("/api/events", params={"filter": f'equals(profile_id,"{profile_id}")'})
    (event,) = stored.json()["data"]
    assert event["attributes"]["event_properties"]["n"] == 1


def test_without_unique_id_one_event_per_profile_metric_and_second(api, server):
    email = unique_email()
    at = "2025-03-01T12:00:00.100+00:00"
    first = only_outcome(api, server, send(api, event_body(email=email, time=at)))
    same_second = only_outcome(
        api, server, send(api, event_body(email=email, time="2025-03-01T12:00:00.900Z"))
    )
    next_second = only_outcome(
        api, server, send(api, event_body(email=email, time="2025-03-01T12:00:01Z"))
    )
    assert first["outcome"] == "stored" and next_second["outcome"] == "stored"
    assert same_second["outcome"] == "deduplicated"
    assert "time (no unique_id)" in same_second["detail"]


def test_bulk_job_status_counts_outcomes_and_names_rejected_events(api, server):
    email = unique_email()
    unknown = {"type": "profile", "id": "01GDDKASAP8TKDDA2GRZDSVP4H", "attributes": {}}
    body = bulk_body(
        [
            (
                {"email": email},
                [bulk_event(unique_id="a"), bulk_event(unique_id="a"), bulk_event(unique_id="b")],
            ),
            ({"email": email}, [bulk_event(unique_id="c")]),
        ]
    )
    groups = body["data"]["attributes"]["events-bulk-create"]["data"]
    groups.append(json.loads(json.dumps(groups[1])))
    groups[2]["attributes"]["profile"]["data"] = unknown
    r = api.post("/api/event-bulk-create-jobs", json=body, headers={"revision": "2024-10-15"})
    assert r.status_code == 202
    job = r.json()["data"]
    assert job["attributes"]["status"] == "queued"
    server.settle()
    status = api.get(f"/api/event-bulk-create-jobs/{job['id']}").json()["data"]["attributes"]
    assert status["status"] == "complete"
    assert status["total_count"] == status["completed_count"] == 5
    assert status["outcomes"] == {"stored": 3, "deduplicated": 1, "rejected": 1}
    assert status["failed_count"] == 1
    (rejected,) = status["rejected_events"]
    assert (
        rejected["pointer"] == "/data/attributes/events-bulk-create/data/2/attributes/events/data/0"
    )
    assert "no profile with id" in rejected["detail"]


def test_backfill_is_stored_with_the_event(api, server):
    email = unique_email()
    stored = only_outcome(api, server, send(api, event_body(email=email, backfill=True)))
    backfill = server.query(
        STORE_FILE, "SELECT backfill FROM events WHERE profile_id = ?", (stored["profile_id"],)
    )
    assert backfill == [(1,)] or backfill == [(True,)]


def stored_events(server, profile_id: str, metric: str) -> list[tuple]:
    """(dedup key, value, time, properties) of a profile's stored events of a metric."""
    if server.backend == "postgres":  # keys and names are bytea there
        sql = (
            "SELECT convert_from(e.dedup_key, 'UTF8'), e.value, e.time, e.properties FROM events e"
            " JOIN metrics m ON m.id = e.metric_id WHERE e.profile_id = ?"
            " AND m.name = convert_to(?, 'UTF8') ORDER BY e.number"
        )
    else:
        sql = (
            "SELECT e.dedup_key, e.value, e.time, e.properties FROM events e JOIN metrics m"
            " ON m.id = e.metric_id WHERE e.profile_id = ? AND m.name = ? ORDER BY e.rowid"
        )
    rows = server.query(STORE_FILE, sql, (profile_id, metric))
    return [(k, v, t, json.loads(bytes(p))) for k, v, t, p in rows]


# -- test control ----------------------------------------------------------------------------


def test_queued_until_processed(start_server):
    server = start_server("--no-process")
    with server.client(**AUTH) as api:
        receipt = send(api, event_body())
        r = api.get(f"/api/event-receipts/{receipt}")
        assert r.json()["data"]["attributes"] == {"status": "queued", "outcomes": []}
        wait = [sys.executable, "-m", "trackhouse", "wait", *server.where()]
        timed_out = subprocess.run([*wait, "--timeout", "0.5"], capture_output=True, text=True)
        assert timed_out.returncode == 1 and "timed out at log position 0 of 1" in timed_out.stderr
        processor = subprocess.Popen(
            [sys.executable, "-m", "trackhouse", "process", *server.where()]
        )
        try:
            subprocess.run([*wait, "--timeout", "30"], check=True, capture_output=True)
        finally:
            processor.terminate()
            assert processor.wait(timeout=15) == 0
        r = api.get(f"/api/event-receipts/{receipt}")
        assert r.json()["data"]["attributes"]["status"] == "processed"


def test_admin_endpoints_refuse_ordinary_keys(api):
    assert single_error(api.post("/admin/wait"), 403)["code"] == "permission_denied"
    assert single_error(api.post("/admin/reset"), 403)["code"] == "permission_denied"


def test_reset_deletes_the_account_data(start_server):
    server = start_server()
    with server.client(**AUTH) as api:
        outcome = only_outcome(api, server, send(api, event_body()))
        assert profile(api, outcome["profile_id"])
        r = httpx.post(
            f"{server.url}/admin/reset", headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["events"] == 1
        assert single_error(api.get(f"/api/profiles/{outcome['profile_id']}"), 404)
        again = only_outcome(api, server, send(api, event_body(metric="After reset")))
        assert again["outcome"] == "stored" and again["profile_id"] != outcome["profile_id"]


def test_reset_while_events_arrive_leaves_no_event_without_an_answer(start_server):
    import threading

    server = start_server()
    receipts: list[str] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with server.client(**AUTH) as c:
            n = 0
            while not stop.is_set():
                body = event_body(email=f"r{n}@klaviyo-demo.com")
                r = c.post("/api/events", json=body)
                assert r.status_code == 202
                receipts.append(r.headers["Trackhouse-Receipt"])
                n += 1

    senders = [threading.Thread(target=keep_sending) for _ in range(3)]
    for t in senders:
        t.start()
    try:
        for _ in range(3):
            r = httpx.post(
                f"{server.url}/admin/reset",
                headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
    finally:
        stop.set()
        for t in senders:
            t.join()
    server.settle()
    with server.client(**AUTH) as api:
        statuses = []
        for receipt in receipts:
            r = api.get(f"/api/event-receipts/{receipt}")
            statuses.append(
                r.json()["data"]["attributes"]["status"] if r.status_code == 200 else 404
            )
    # Before a reset: gone (404). After it: processed. Never stuck "queued".
    assert "queued" not in statuses
    assert statuses.count("processed") > 0


def test_job_pointers_name_the_group_across_batches(api, server):
    groups = [
        ({"email": f"g{i}.{uuid.uuid4().hex[:6]}@klaviyo-demo.com"}, [bulk_event()])
        for i in range(600)
    ]
    body = bulk_body(groups)
    body["data"]["attributes"]["events-bulk-create"]["data"][550]["attributes"]["profile"][
        "data"
    ] = {
        "type": "profile",
        "id": "01GDDKASAP8TKDDA2GRZDSVP4H",
        "attributes": {},
    }
    r = api.post("/api/event-bulk-create-jobs", json=body)
    assert r.status_code == 202
    server.settle()
    status = api.get(f"/api/event-bulk-create-jobs/{r.json()['data']['id']}").json()["data"]
    (rejected,) = status["attributes"]["rejected_events"]
    assert (
        rejected["pointer"]
        == "/data/attributes/events-bulk-create/data/550/attributes/events/data/0"
    )
    assert status["attributes"]["outcomes"] == {"stored": 599, "deduplicated": 0, "rejected": 1}


def test_client_endpoints_cannot_remove_secondary_emails(api, server):
    primary, second = unique_email(), unique_email()
    body = event_body(profile_attributes={"email": primary})
    body["data"]["attributes"]["profile"]["data"]["meta"] = {
        "patch_identifiers": {"append": {"email": [second]}}
    }
    first = only_outcome(api, server, send(api, body))
    body["data"]["attributes"]["profile"]["data"]["meta"] = {
        "patch_identifiers": {"unappend": {"email": [second]}}
    }
    body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] = "Client remove"
    client = only_outcome(
        api, server, send(api, body, path=f"/client/events?company_id={PUBLIC_KEY}")
    )
    assert "client endpoints cannot remove" in client["detail"]
    assert profile(api, first["profile_id"])["secondary_emails"] == [second]


def test_a_duplicate_still_reports_identifier_conflicts(api, server):
    email_a, email_b = unique_email(), unique_email()
    phone = "+1415555" + str(uuid.uuid4().int)[:4]
    only_outcome(api, server, send(api, event_body(email=email_a, unique_id="x")))
    only_outcome(
        api,
        server,
        send(api, event_body(profile_attributes={"email": email_b, "phone_number": phone})),
    )
    both = {"email": email_a, "phone_number": phone}
    dup = only_outcome(api, server, send(api, event_body(profile_attributes=both, unique_id="x")))
    assert dup["outcome"] == "deduplicated"
    assert "phone_number belongs to profile" in dup["detail"]
