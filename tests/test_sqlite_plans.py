"""The embedded store's query plans for membership reads (store/sqlite).

A served SQLite store never runs ANALYZE, so the planner chooses without statistics. Before
the covering (account, profile, group, joined_at) indexes, it read a profile's memberships
through (account, segment, joined_at, profile), that is every member of the account: a new
segment's computation slowed as its members accrued (bench/RESULTS.md § Segments). These
plans are what keeps processing and the profile-groups reads independent of how many members
an account has.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from trackhouse.store import sql
from trackhouse.store.base import EventQuery, MemberQuery
from trackhouse.store.sqlite import SQLiteStore
from trackhouse.store.sqlite.store import _SQL as STORE_SQL

SQLITE = sql.Dialect(param="?", number="rowid", array_params=False)
ACCOUNT = "acct00"


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    SQLiteStore(tmp_path / "store.sqlite3").close()  # creates (and migrates) the schema
    return sqlite3.connect(tmp_path / "store.sqlite3")


def plan(conn: sqlite3.Connection, query: str, args: list) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query, args)]


def test_a_profiles_memberships_are_looked_up_by_profile(conn: sqlite3.Connection) -> None:
    query, args = sql.memberships(SQLITE, ACCOUNT, ["p1", "p2", "p3"])
    steps = plan(conn, query, args)
    assert any("list_members_of_profile (account_id=? AND profile_id=?)" in s for s in steps)
    assert any("segment_members_of_profile (account_id=? AND profile_id=?)" in s for s in steps)
    assert not any(s.startswith("SCAN") or "_joined" in s for s in steps), steps


@pytest.mark.parametrize("kind", ["list", "segment"])
def test_a_profiles_groups_are_looked_up_by_profile(conn: sqlite3.Connection, kind: str) -> None:
    query, args = sql.profile_groups(SQLITE, kind, ACCOUNT, "p1")
    assert plan(conn, query, args) == [
        f"SEARCH {kind}_members USING COVERING INDEX {kind}_members_of_profile"
        " (account_id=? AND profile_id=?)"
    ]


@pytest.mark.parametrize("kind", ["list", "segment"])
def test_member_pages_still_follow_join_order(conn: sqlite3.Connection, kind: str) -> None:
    query, args = sql.member_page(SQLITE, MemberQuery(ACCOUNT, kind, "G1", limit=100))
    steps = plan(conn, query, args)
    assert any(f"{kind}_members_joined" in s for s in steps), steps
    assert not any("TEMP B-TREE" in s for s in steps), steps  # no sort of every member


def test_the_old_profile_index_is_gone(conn: sqlite3.Connection) -> None:
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"list_members_of_profile", "segment_members_of_profile"} <= names
    assert not {"list_members_profile", "segment_members_profile"} & names


@pytest.mark.parametrize("metric", [None, "M1"])
@pytest.mark.parametrize("since", [None, 1])
@pytest.mark.parametrize("after", [None, (1, 2)])
def test_a_profiles_events_are_read_through_its_index(
    conn: sqlite3.Connection, metric: str | None, since: int | None, after: tuple[int, int] | None
) -> None:
    """Not a metric's (a metric may have millions of events: 4 s against 2 ms for one
    profile's events of a metric of 500,000, on a store without statistics)."""
    q = EventQuery(ACCOUNT, metric_id=metric, profile_id="p1", since=since, until=9, after=after)
    query, args = sql.event_page(STORE_SQL, "rowid, properties", q)
    steps = plan(conn, query, args)
    assert (
        len(steps) == 1
        and "USING INDEX events_profile_time (account_id=? AND profile_id=?" in steps[0]
    ), steps
