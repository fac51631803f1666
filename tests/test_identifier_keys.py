"""Identifiers compare by one key everywhere (trackhouse/identifiers.py): identity resolution,
the bulk rule on repeated unique_ids and the profile filters agree on who is who."""

from __future__ import annotations

import unicodedata
import uuid

import pytest
from conftest import bulk_body, bulk_event, event_body, single_error


def _profiles(api, field: str, value: str) -> list[dict]:
    r = api.get("/api/profiles", params={"filter": f'equals({field},"{value}")'})
    assert r.status_code == 200, r.text
    return r.json()["data"]


SPELLINGS = [
    pytest.param(
        unicodedata.normalize("NFC", "josé.{tag}@example.com"),
        unicodedata.normalize("NFD", "josé.{tag}@example.com"),
        id="nfc-nfd",
    ),
    pytest.param("user.{tag}@bücher.example", "user.{tag}@xn--bcher-kva.example", id="idna"),
    pytest.param("Mixed.{tag}@Example.COM", "mixed.{tag}@example.com", id="case"),
]


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_two_spellings_of_one_address_are_one_profile(server, api, first, second):
    tag = uuid.uuid4().hex[:8]
    first, second = first.format(tag=tag), second.format(tag=tag)
    for email, n in ((first, 1), (second, 2)):
        body = event_body(email=email, unique_id=f"{tag}-{n}")
        assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    found = _profiles(api, "email", second)
    assert len(found) == 1
    # The profile keeps the spelling it was first given; either spelling finds it.
    assert found[0]["attributes"]["email"] == first
    assert [p["id"] for p in _profiles(api, "email", first)] == [found[0]["id"]]
    events = api.get(
        "/api/events", params={"filter": f'equals(profile_id,"{found[0]["id"]}")'}
    ).json()["data"]
    assert len(events) == 2


def test_a_repeated_unique_id_for_emails_differing_in_case_fails_the_bulk_request(api):
    """From 2025-01-15 a unique_id repeated for one profile+metric fails the whole request;
    two groups whose emails differ only in case are one profile."""
    tag = uuid.uuid4().hex[:8]
    body = bulk_body(
        [
            ({"email": f"Case.{tag}@Example.com"}, [bulk_event(unique_id="order-1")]),
            ({"email": f"case.{tag}@example.com"}, [bulk_event(unique_id="order-1")]),
        ]
    )
    error = single_error(api.post("/api/event-bulk-create-jobs", json=body), 400)
    assert error["source"]["pointer"].endswith(
        "/data/1/attributes/events/data/0/attributes/unique_id"
    )


def test_a_repeated_unique_id_for_nfc_and_nfd_emails_fails_the_bulk_request(api):
    tag = uuid.uuid4().hex[:8]
    body = bulk_body(
        [
            ({"email": unicodedata.normalize("NFC", f"rené.{tag}@example.com")},
             [bulk_event(unique_id="order-1")]),
            ({"email": unicodedata.normalize("NFD", f"rené.{tag}@example.com")},
             [bulk_event(unique_id="order-1")]),
        ]
    )  # fmt: skip
    single_error(api.post("/api/event-bulk-create-jobs", json=body), 400)


@pytest.mark.parametrize(
    "spelling", ["+1 415 555 {n}", "+1 (415) 555-{n}", "+1.415.555.{n}", "+1415555{n}"]
)
def test_a_phone_filter_finds_the_profile_however_the_number_is_spelled(server, api, spelling):
    n = f"{uuid.uuid4().int % 9000 + 1000}"
    body = event_body(profile_attributes={"phone_number": f"+1 415 555 {n}"})
    assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    found = _profiles(api, "phone_number", spelling.format(n=n))
    assert [p["attributes"]["phone_number"] for p in found] == [f"+1415555{n}"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # an embedded store's upgrade
def test_a_store_keyed_the_old_way_is_rekeyed_on_start(start_server, tmp_path):
    """Stores written before identifier keys existed keyed an email by lower() alone: the NFD
    spelling had a key of its own. After a restart the NFC spelling finds that profile."""
    import sqlite3

    from conftest import NEWEST, PRIVATE_KEY

    from trackhouse.backends import STORE_FILE

    nfd = unicodedata.normalize("NFD", "Zoë.Old@Example.com")
    nfc = unicodedata.normalize("NFC", "zoë.old@example.com")
    server = start_server(data_dir=tmp_path / "data")
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}
    with server.client(**headers) as api:
        assert api.post("/api/events", json=event_body(email=nfd)).status_code == 202
        server.settle()
    server.stop()
    store = sqlite3.connect(server.data_dir / STORE_FILE)
    with store:  # as 130c44b wrote them
        store.execute("UPDATE identifiers SET value = ? WHERE kind = 'email'", (nfd.lower(),))
        store.execute("DELETE FROM meta WHERE key = 'identifier_keys'")
    store.close()
    server.start()
    with server.client(**headers) as api:
        assert api.post("/api/events", json=event_body(email=nfc, unique_id="2")).status_code == 202
        server.settle()
        profiles = api.get("/api/profiles").json()["data"]
    assert len(profiles) == 1
    assert profiles[0]["attributes"]["email"] == nfd
