"""The official Node SDK (`klaviyo-api` on npm, pinned in tests/node/package.json) as a real client.

tests/node/sdk_roundtrip.mjs drives the SDK exactly as its README shows (an ApiKeySession, the
Events/Metrics/Profiles APIs with `basePath` pointed at trackhouse) and prints one JSON line
summarising what the SDK handed back; these tests start a server, run it with node and check
that line. The Node dependencies are installed with `npm ci` when tests/node/node_modules is
missing or stale (./scripts/test does it beforehand).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_KEY, PRIVATE_KEY, WITH_CLUSTER, Server

# The official SDKs against each backend, and against a cluster of 2 API processes and 2 workers.
pytestmark = pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "sdk_roundtrip.mjs"
EMAIL = "sarah.mason@klaviyo-demo.com"  # what the script sends
EVENT_POINTER = "/data/attributes/profile/data/attributes/email"


def _installed_version() -> str | None:
    try:
        manifest = NODE_DIR / "node_modules" / "klaviyo-api" / "package.json"
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with tests/node's locked dependencies installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the Node SDK tests need Node.js and npm)")
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["klaviyo-api"]
    if _installed_version() != pinned:
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed (needed to install tests/node's dependencies)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
        assert _installed_version() == pinned
    return node


@pytest.fixture
def run_sdk(node: str) -> Callable[[Server, str], dict[str, Any]]:
    def run(server: Server, mode: str) -> dict[str, Any]:
        env = dict(
            os.environ,
            TRACKHOUSE_URL=server.url,
            TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY,
            TRACKHOUSE_ADMIN_KEY=ADMIN_KEY,
        )
        done = subprocess.run(
            [node, str(SCRIPT), mode],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            pytest.fail(f"node {SCRIPT.name} {mode} exited {done.returncode}:\n{done.stderr}")
        (line,) = done.stdout.splitlines()
        return json.loads(line)

    return run


def test_node_sdk_writes_events_and_reads_them_back(start_server, run_sdk):
    server = start_server()

    out = run_sdk(server, "roundtrip")

    # createEvent x3 and bulkCreateEvents (3 events for 2 profiles) were accepted
    assert out["created_statuses"] == [202, 202, 202]
    assert out["bulk_status"] == 202

    # getMetrics: the two metrics the events named, nothing else (a fresh server)
    metrics = {m["name"]: m["id"] for m in out["metrics"]}
    assert sorted(metrics) == ["Ordered Product", "Viewed Product"]
    viewed = metrics["Viewed Product"]

    # getProfiles filtered on email: the profile, with the camelCase firstName the SDK sent
    (profile,) = out["profiles"]
    assert profile["email"] == EMAIL
    assert profile["first_name"] == "Sarah"

    # getEvents (metric filter, -datetime, page size 2, include): the 3 created events, newest
    # first, over two pages, their properties as sent (uniqueId/valueCurrency arrived snake_case)
    events = out["events"]
    assert events["page_sizes"] == [2, 1]
    assert len(set(events["ids"])) == 3
    assert events["datetimes"] == [
        "2025-03-01T12:00:00.000Z",
        "2025-03-01T11:00:00.000Z",
        "2025-03-01T10:00:00.000Z",
    ]
    assert events["properties"] == [
        {
            "Brand": "Kids Book",
            "n": n,
            "$event_id": f"node-viewed-{n}",
            "$value": 10 * (n + 1),
            "$value_currency": "USD",
        }
        for n in (2, 1, 0)
    ]
    assert events["metric_ids"] == [viewed] * 3
    assert events["profile_ids"] == [profile["id"]] * 3
    assert events["included"] == [f"metric:{viewed}", f"profile:{profile['id']}"]

    # getEvent with include: the newest event, its metric and profile
    event = out["event"]
    assert event["id"] == events["ids"][0]
    assert event["datetime"] == "2025-03-01T12:00:00.000Z"
    assert event["timestamp"] == 1740830400
    assert event["properties"] == events["properties"][0]
    assert (event["metric_id"], event["profile_id"]) == (viewed, profile["id"])
    assert {(r["type"], r["id"], r["name"], r["email"]) for r in event["included"]} == {
        ("metric", viewed, "Viewed Product", None),
        ("profile", profile["id"], None, EMAIL),
    }

    # queryMetricAggregates per UTC day over 2025-03-01 and 03-02
    days = ["2025-03-01T00:00:00.000Z", "2025-03-02T00:00:00.000Z"]
    viewed_agg, ordered_agg = (out["aggregates"][m] for m in ("Viewed Product", "Ordered Product"))
    assert viewed_agg["type"] == ordered_agg["type"] == "metric-aggregate"
    assert viewed_agg["dates"] == ordered_agg["dates"] == days
    viewed_counts = {"count": [3, 0], "sum_value": [60, 0], "unique": [1, 0]}
    assert viewed_agg["rows"] == [{"dimensions": [], "measurements": viewed_counts}]
    ordered_counts = {"count": [0, 3], "sum_value": [0, 15], "unique": [0, 2]}
    assert ordered_agg["rows"] == [{"dimensions": [], "measurements": ordered_counts}]


def test_node_sdk_gets_our_400_for_an_invalid_email(start_server, run_sdk):
    server = start_server()

    out = run_sdk(server, "invalid-email")

    assert out["thrown"] == "AxiosError"
    assert out["status"] == 400
    assert out["content_type"].startswith("application/vnd.api+json")
    (error,) = out["errors"]
    assert error["status"] == 400
    assert error["code"] == "invalid"
    assert error["source"] == {"pointer": EVENT_POINTER}
    assert "email" in error["detail"].lower()
    assert server.log_entries() == []


def test_node_sdk_follows_links_next_handed_back_whole(start_server, run_sdk):
    """The SDK's README: pass `body.links.next` itself as pageCursor. The Node SDK cuts the
    cursor out of the link only when it contains "https://" (the Python SDK does so for any
    link), so against trackhouse on http:// the whole link arrives as page[cursor]."""
    server = start_server()

    out = run_sdk(server, "next-link")

    first, second = out["ids"]
    assert len(first) == 2 and len(second) == 1
    assert len(set(first + second)) == 3


def test_node_sdk_lists(server: Server, run_sdk):
    """createList, getList, getLists (filtered, sorted, paged), updateList, deleteList."""
    out = run_sdk(server, "lists")
    names = [c["name"] for c in out["created"]]
    assert [c["status"] for c in out["created"]] == [201, 201, 201]
    assert {c["optInProcess"] for c in out["created"]} == {"double_opt_in"}
    assert out["profile_count"] == 0
    assert out["pages"] == [sorted(names)[:2], sorted(names)[2:]]
    assert out["renamed"] == names[0] + " renamed"
    assert (out["deleted_status"], out["after"]) == (204, 0)


def test_node_sdk_list_members_and_segments(server: Server, run_sdk):
    """addProfilesToList, getProfilesForList, createSegment (a camelCase definition),
    getProfilesForSegment, getSegmentsForProfile and getSegment."""
    out = run_sdk(server, "segments")
    inside, _ = out["ids"]
    assert (out["added_status"], out["created_status"]) == (204, 201)
    # joinedGroupAt is deserialized into a Date, as the SDK's model says.
    assert out["list_members"] == [[inside, "object"]]
    assert out["segment_members"] == [inside]
    assert out["segment_id"] in out["profile_segments"]
    attributes = out["attributes"]
    assert (attributes["isActive"], attributes["isProcessing"], attributes["isStarred"]) == (
        True,
        False,
        False,
    )
    condition = attributes["definition"]["conditionGroups"][0]["conditions"][0]
    assert condition["type"] == "profile-group-membership" and condition["isMember"] is True


def test_node_sdk_flows(start_server, run_sdk):
    """createFlow (a camelCase definition, which the SDK writes out as Klaviyo's snake_case),
    updateFlow to live,
    an event entering it with the clock frozen, the clock advanced past its delay; getFlow with
    its definition, getActionsForFlow, and the email in the outbox."""
    server = start_server()
    out = run_sdk(server, "flows")
    assert (out["created_status"], out["created_status_attribute"]) == (201, "draft")
    assert out["updated_status"] == "live" and out["trigger_type"] == "Metric"
    assert out["entry_is_real_id"] and out["action_count"] == 2
    assert out["before"] == 0 and out["advanced_to"] == "2025-03-01T11:00:00+00:00"
    assert out["outbox"] == [[out["email"], "Back for Kids Book?", "sent"]]
