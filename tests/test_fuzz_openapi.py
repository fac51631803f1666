"""schemathesis against trackhouse's own OpenAPI document (GET /openapi.json): every
operation, generated valid and invalid requests. No answer may be a 5xx or take longer than
the client's timeout, and every 4xx must be a JSON:API error document. The last test prints
how many cases ran (TRACKHOUSE_FUZZ_EXAMPLES per operation, 25 by default)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import ADMIN_KEY, NEWEST, PRIVATE_KEY, PUBLIC_KEY, Server, make_env
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

EXAMPLES = int(os.environ.get("TRACKHOUSE_FUZZ_EXAMPLES", "25"))
RAN: Counter = Counter()  # answers by status class
BY_OPERATION: Counter = Counter()  # cases per operation
ERROR_KEYS = {"id", "status", "code", "title", "detail", "source"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("fuzz"), make_env()).start()
    yield server
    server.stop()


def check_answer(response: Any, legacy: bool) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    if status >= 400 and not legacy:
        content_type = response.headers.get("content-type") or [""]  # schemathesis: lists
        assert content_type[0].startswith("application/vnd.api+json"), content_type
        errors = response.json()["errors"]
        assert errors, response.text
        for error in errors:
            assert error.keys() >= ERROR_KEYS, error
            assert error["status"] == status and error["detail"]


def fuzz(operation: Any, mode: GenerationMode, server: Server) -> None:
    """EXAMPLES generated requests for one operation, each answered and checked."""
    path = operation.path

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        n = sum(RAN.values())
        # Mostly valid credentials and revision, so that the search reaches past them; every
        # fourth case keeps whatever schemathesis generated for them.
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        if n % 4:
            key = ADMIN_KEY if path.startswith("/admin") else PRIVATE_KEY
            headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": NEWEST}
            if path.startswith("/client"):
                params = {"company_id": PUBLIC_KEY}
        if path.startswith("/admin/wait"):
            params["timeout"] = "1"  # waiting is what it does; keep each case short
        response = case.call(base_url=server.url, headers=headers, params=params, timeout=30)
        RAN[f"{response.status_code // 100}xx"] += 1
        BY_OPERATION[operation.label] += 1
        check_answer(response, legacy=path in ("/api/track", "/api/identify"))

    run()


def test_every_operation_answers_fuzzed_requests_without_a_5xx(fuzz_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, fuzz_server)
    total = sum(RAN.values())
    print(
        f"\nschemathesis: {total} cases over {len(operations)} operations, answers"
        f" {dict(sorted(RAN.items()))}; fewest for one operation:"
        f" {min(BY_OPERATION.values())} ({min(BY_OPERATION, key=BY_OPERATION.__getitem__)})"
    )
    assert RAN["5xx"] == 0
    assert set(BY_OPERATION) == {op.label for op in operations}  # every one was reached
