"""POST /api/event-bulk-create-jobs, GET …/{id}, and POST /client/event-bulk-create."""

from __future__ import annotations

from conftest import NEWEST, PRIVATE_KEY, PUBLIC_KEY, bulk_body, bulk_event, single_error

GROUPS = "/data/attributes/events-bulk-create/data"


def post(api, body, revision=NEWEST):
    return api.post("/api/event-bulk-create-jobs", json=body, headers={"revision": revision})


def test_bulk_job_is_logged_with_one_submission_per_profile_group(api, server):
    body = bulk_body(
        [
            ({"email": "g1@klaviyo-demo.com"}, [bulk_event(unique_id="a"), bulk_event("Other")]),
            ({"phone_number": "+15005550006"}, [bulk_event(value=3, value_currency="USD")]),
        ]
    )
    r = post(api, body)
    assert r.status_code == 202, r.text
    job = r.json()["data"]
    assert job["type"] == "event-bulk-create-job"
    assert job["attributes"]["total_count"] == 3
    assert job["links"]["self"] == f"{server.url}/api/event-bulk-create-jobs/{job['id']}"
    logged = [s for s in server.log_entries() if s.job_id == job["id"]]
    assert [s.profile.email or s.profile.phone_number for s in logged] == [
        "g1@klaviyo-demo.com",
        "+15005550006",
    ]
    assert [[e.metric for e in s.events] for s in logged] == [
        ["Ordered Product", "Other"],
        ["Ordered Product"],
    ]
    assert logged[1].events[0].value == 3 and logged[1].events[0].value_currency == "USD"

    status = api.get(f"/api/event-bulk-create-jobs/{job['id']}")
    assert status.status_code == 200
    assert status.json()["data"]["attributes"]["total_count"] == 3
    assert status.json()["data"]["id"] == job["id"]


def test_unknown_job_is_404(api):
    assert single_error(api.get("/api/event-bulk-create-jobs/01NOPE"), 404)["code"] == "not_found"


def test_at_most_1000_events_per_request(api):
    profile = {"email": "many@klaviyo-demo.com"}
    ok = bulk_body([(profile, [bulk_event(unique_id=str(i)) for i in range(1000)])])
    assert post(api, ok).status_code == 202
    too_many = bulk_body([(profile, [bulk_event(unique_id=str(i)) for i in range(600)])] * 2)
    error = single_error(post(api, too_many), 400)
    assert error["source"]["pointer"] == GROUPS
    assert "1000" in error["detail"]


def test_errors_point_into_the_group_and_event(api):
    body = bulk_body(
        [
            ({"email": "ok@klaviyo-demo.com"}, [bulk_event()]),
            ({"email": "ok2@klaviyo-demo.com"}, [bulk_event(), bulk_event("m" * 128)]),
        ]
    )
    error = single_error(post(api, body), 400)
    assert error["source"]["pointer"] == (
        f"{GROUPS}/1/attributes/events/data/1/attributes/metric/data/attributes/name"
    )
    bad_email = bulk_body([({"email": "nope"}, [bulk_event()])])
    error = single_error(post(api, bad_email), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/0/attributes/profile/data/attributes/email"


def test_repeated_unique_id_in_bulk_fails_whole_request_from_2025_01_15(api, server):
    profile = {"email": "dupe@klaviyo-demo.com"}
    body = bulk_body(
        [
            (profile, [bulk_event(unique_id="u1"), bulk_event(unique_id="u2")]),
            (profile, [bulk_event(unique_id="u1")]),  # same profile, metric and unique_id
        ]
    )
    before = len(server.log_entries())
    error = single_error(post(api, body, "2025-01-15"), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/1/attributes/events/data/0/attributes/unique_id"
    assert len(server.log_entries()) == before  # nothing of the request was logged
    # Before 2025-01-15 the request is accepted; processing keeps the first (dedup).
    r = post(api, body, "2024-10-15")
    assert r.status_code == 202
    assert len(server.log_entries()) == before + 2


def test_same_unique_id_for_other_metric_or_profile_is_not_a_repeat(api):
    body = bulk_body(
        [
            (
                {"email": "p1@klaviyo-demo.com"},
                [bulk_event(unique_id="u"), bulk_event("B", unique_id="u")],
            ),
            ({"email": "p2@klaviyo-demo.com"}, [bulk_event(unique_id="u")]),
        ]
    )
    assert post(api, body).status_code == 202


def test_bulk_endpoint_does_not_exist_before_2024_05_15(api):
    body = bulk_body([({"email": "a@klaviyo-demo.com"}, [bulk_event()])])
    error = single_error(post(api, body, "2024-02-15"), 404)
    assert "No valid revisions found for method" in error["detail"]


def test_backfill_event_level_wins_over_group_level(api, server):
    body = bulk_body(
        [({"email": "bf@klaviyo-demo.com"}, [bulk_event(), bulk_event("Two", backfill=False)])]
    )
    body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["backfill"] = True
    r = post(api, body, "2026-04-15")
    assert r.status_code == 202
    (logged,) = [s for s in server.log_entries() if s.job_id == r.json()["data"]["id"]]
    assert [e.backfill for e in logged.events] == [True, False]
    error = single_error(post(api, body, "2025-10-15"), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/0/attributes/backfill"


def test_bulk_profile_meta_is_beside_attributes(api, server):
    body = bulk_body([({"email": "meta@klaviyo-demo.com"}, [bulk_event()])])
    profile = body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["profile"]
    profile["data"]["meta"] = {
        "patch_properties": {"unappend": {"skus": "40571"}},
        "patch_identifiers": {"unappend": {"email": "old@klaviyo-demo.com"}},
    }
    r = post(api, body)
    assert r.status_code == 202
    (logged,) = [s for s in server.log_entries() if s.job_id == r.json()["data"]["id"]]
    assert logged.profile.unappend == {"skus": "40571"}
    assert logged.profile.remove_emails == ["old@klaviyo-demo.com"]
    profile["data"]["attributes"]["meta"] = profile["data"].pop("meta")
    error = single_error(post(api, body), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/0/attributes/profile/data/attributes/meta"


def test_group_without_events_is_refused(api):
    error = single_error(post(api, bulk_body([({"email": "e@klaviyo-demo.com"}, [])])), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/0/attributes/events/data"


def test_client_bulk_create_is_one_group_with_the_public_key(server):
    group = bulk_body([({"email": "client@klaviyo-demo.com"}, [bulk_event(), bulk_event("B")])])
    body = {"data": group["data"]["attributes"]["events-bulk-create"]["data"][0]}
    with server.client(revision=NEWEST) as c:
        r = c.post(f"/client/event-bulk-create?company_id={PUBLIC_KEY}", json=body)
        assert r.status_code == 202, r.text
        logged = [s for s in server.log_entries() if s.profile.email == "client@klaviyo-demo.com"]
        assert len(logged) == 1 and logged[0].source == "client"
        assert [e.metric for e in logged[0].events] == ["Ordered Product", "B"]
        assert logged[0].profile.may_change_identifiers is False
        body["data"]["attributes"]["events"]["data"][1]["attributes"]["unique_id"] = ""
        error = single_error(
            c.post(f"/client/event-bulk-create?company_id={PUBLIC_KEY}", json=body), 400
        )
        assert error["source"]["pointer"] == "/data/attributes/events/data/1/attributes/unique_id"
        # A private key is not a public key.
        r = c.post(f"/client/event-bulk-create?company_id={PRIVATE_KEY}", json=body)
        assert single_error(r, 401)["code"] == "not_authenticated"


def test_repeated_unique_id_is_found_through_any_shared_identifier(api):
    body = bulk_body(
        [
            ({"email": "shared@klaviyo-demo.com"}, [bulk_event(unique_id="u1")]),
            (
                {"external_id": "ext-shared", "email": "shared@klaviyo-demo.com"},
                [bulk_event(unique_id="u1")],
            ),
        ]
    )
    error = single_error(post(api, body, "2025-01-15"), 400)
    assert error["source"]["pointer"] == f"{GROUPS}/1/attributes/events/data/0/attributes/unique_id"
