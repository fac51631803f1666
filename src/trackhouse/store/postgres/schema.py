"""The PostgreSQL schema: the log, the store, accounts, and who processes what.

Text sorts and compares by code point (COLLATE "C"), as SQLite's does, whatever the
database's locale. User-given keys that may hold any character (identifier values, metric
names, dedup keys, currencies) are `bytea`: PostgreSQL's text cannot hold NUL, and a Klaviyo
`unique_id` can.
"""

from __future__ import annotations

import logging
import time
import uuid

import psycopg

from trackhouse.store.flows import POSTGRES_SCHEMA

logger = logging.getLogger("trackhouse.store")

SCHEMA_VERSION = "5"  # 3: lists and list_members; 4: segments, their members, changes;
# 5: clocks, flows and their actions, flow runs, steps, decisions and the outbox
# The log's partitions: entries are spread over them by account and person, and each is
# processed in order by one worker at a time. More partitions than workers lets work be
# shared out evenly; the count is fixed when the schema is created.
DEFAULT_PARTITIONS = 16

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS trackhouse_meta (
    key text COLLATE "C" PRIMARY KEY,
    value text COLLATE "C" NOT NULL
);

-- The log: per-partition heads, locked in partition order by each appending transaction, so
-- positions are given in commit order with no gaps (the sequence-gap hazard); `seq` numbers
-- an entry across partitions (outcomes, event ids) and may have gaps.
CREATE TABLE IF NOT EXISTS log_heads (partition integer PRIMARY KEY, head bigint NOT NULL);
CREATE SEQUENCE IF NOT EXISTS log_entry_numbers;
CREATE TABLE IF NOT EXISTS log_entries (
    partition integer NOT NULL,
    position bigint NOT NULL,
    seq bigint NOT NULL,
    account_id text COLLATE "C" NOT NULL,
    receipt_id text COLLATE "C",
    received_at double precision NOT NULL,
    submission bytea NOT NULL,
    PRIMARY KEY (partition, position)
) PARTITION BY LIST (partition);
CREATE INDEX IF NOT EXISTS log_entries_receipt ON log_entries (receipt_id)
    WHERE receipt_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS log_jobs (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    event_count integer NOT NULL,
    submission_count integer NOT NULL,
    first_seq bigint NOT NULL
);

-- Processing: each partition's position, its current owner (a lease), and the workers.
CREATE TABLE IF NOT EXISTS positions (partition integer PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS partition_owners (
    partition integer PRIMARY KEY,
    owner text COLLATE "C",
    expires double precision NOT NULL DEFAULT 0  -- the database's epoch seconds
);
CREATE TABLE IF NOT EXISTS workers (
    id text COLLATE "C" PRIMARY KEY,
    host text COLLATE "C" NOT NULL,
    seen double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS api_processes (  -- live API processes (rate limits are split)
    id text COLLATE "C" PRIMARY KEY,
    host text COLLATE "C" NOT NULL,
    seen double precision NOT NULL
);
-- A reset in progress holds each partition's processing at the head it saw (test control).
CREATE TABLE IF NOT EXISTS holds (
    reset_id text COLLATE "C" NOT NULL,
    partition integer NOT NULL,
    ceiling bigint NOT NULL,
    expires double precision NOT NULL,
    PRIMARY KEY (reset_id, partition)
);

CREATE TABLE IF NOT EXISTS profiles (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    doc bytea NOT NULL,
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL,
    last_event_time bigint,
    version bigint NOT NULL  -- a write checks the version it read (lost updates otherwise)
);
CREATE INDEX IF NOT EXISTS profiles_account ON profiles (account_id, id);
CREATE INDEX IF NOT EXISTS profiles_created ON profiles (account_id, created, id);
CREATE INDEX IF NOT EXISTS profiles_updated ON profiles (account_id, updated, id);
CREATE TABLE IF NOT EXISTS identifiers (
    account_id text COLLATE "C" NOT NULL,
    kind text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (account_id, kind, value)  -- an identifier belongs to one profile
);
CREATE INDEX IF NOT EXISTS identifiers_profile ON identifiers (profile_id);
CREATE TABLE IF NOT EXISTS metrics (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    name bytea NOT NULL,
    service bytea NOT NULL,
    created text COLLATE "C" NOT NULL,
    UNIQUE (account_id, name, service)
);
CREATE TABLE IF NOT EXISTS events (
    number bigint PRIMARY KEY,     -- log seq * 1000 + index in the submission
    account_id text COLLATE "C" NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    metric_id text COLLATE "C" NOT NULL,
    time bigint NOT NULL,
    dedup_key bytea NOT NULL,      -- unique_id, or the time to the second
    value double precision,
    value_currency bytea,
    backfill boolean NOT NULL,
    properties bytea NOT NULL,     -- JSON
    received_at double precision NOT NULL,
    UNIQUE (account_id, profile_id, metric_id, dedup_key)
);
CREATE INDEX IF NOT EXISTS events_time ON events (account_id, time, number);
CREATE INDEX IF NOT EXISTS events_profile_time ON events (account_id, profile_id, time, number);
CREATE INDEX IF NOT EXISTS events_metric_time ON events (account_id, metric_id, time, number);
CREATE TABLE IF NOT EXISTS outcomes (
    seq bigint PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    job_id text COLLATE "C",
    receipt_id text COLLATE "C",
    profile_id text COLLATE "C",
    results bytea NOT NULL,        -- msgpack [[outcome, event number, detail], ...]
    job_group integer
);
CREATE INDEX IF NOT EXISTS outcomes_job ON outcomes (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_receipt ON outcomes (receipt_id) WHERE receipt_id IS NOT NULL;

-- Lists (written by the API processes) and their members (written by processing).
CREATE TABLE IF NOT EXISTS lists (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    opt_in_process text COLLATE "C" NOT NULL,
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS lists_name ON lists (account_id, name, id);
CREATE INDEX IF NOT EXISTS lists_created ON lists (account_id, created, id);
CREATE INDEX IF NOT EXISTS lists_updated ON lists (account_id, updated, id);
CREATE TABLE IF NOT EXISTS list_members (
    account_id text COLLATE "C" NOT NULL,
    list_id text COLLATE "C" NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    joined_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (account_id, list_id, profile_id)
);
CREATE INDEX IF NOT EXISTS list_members_profile ON list_members (account_id, profile_id);
CREATE INDEX IF NOT EXISTS list_members_joined
    ON list_members (account_id, list_id, joined_at, profile_id);

-- Segments (written by the API processes) and their members (written by processing).
CREATE TABLE IF NOT EXISTS segments (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    definition text COLLATE "C" NOT NULL,  -- JSON, as given (NUL escaped)
    is_active boolean NOT NULL,
    is_starred boolean NOT NULL,
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL,
    pending boolean NOT NULL,              -- its members are being computed (is_processing)
    cursor text COLLATE "C",               -- the last profile id computed so far
    version integer NOT NULL,              -- moved by each new definition
    cause text COLLATE "C" NOT NULL        -- why it is pending: definition | time
);
CREATE INDEX IF NOT EXISTS segments_name ON segments (account_id, name, id);
CREATE INDEX IF NOT EXISTS segments_created ON segments (account_id, created, id);
CREATE INDEX IF NOT EXISTS segments_updated ON segments (account_id, updated, id);
CREATE INDEX IF NOT EXISTS segments_pending ON segments (pending) WHERE pending;
CREATE TABLE IF NOT EXISTS segment_members (
    account_id text COLLATE "C" NOT NULL,
    segment_id text COLLATE "C" NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    joined_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (account_id, segment_id, profile_id)
);
CREATE INDEX IF NOT EXISTS segment_members_profile ON segment_members (account_id, profile_id);
CREATE INDEX IF NOT EXISTS segment_members_joined
    ON segment_members (account_id, segment_id, joined_at, profile_id);
-- Every join and leave of a list or segment (flows enter on joins).
CREATE TABLE IF NOT EXISTS membership_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text COLLATE "C" NOT NULL,        -- list | segment
    account_id text COLLATE "C" NOT NULL,
    group_id text COLLATE "C" NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    joined boolean NOT NULL,
    at text COLLATE "C" NOT NULL,
    cause text COLLATE "C" NOT NULL        -- processing | time | definition
);
CREATE INDEX IF NOT EXISTS membership_changes_group
    ON membership_changes (account_id, group_id, id);

-- Flows (written by the API process): the definition as stored, with its actions' ids; each
-- action a row too (flow-actions and their flow-messages are read by id).
CREATE TABLE IF NOT EXISTS flows (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,          -- draft | manual | live
    archived boolean NOT NULL,
    trigger_type text COLLATE "C" NOT NULL,    -- Klaviyo's: Metric, Added to List
    trigger_kind text COLLATE "C" NOT NULL,    -- metric | list | segment
    trigger_id text COLLATE "C" NOT NULL,
    definition text COLLATE "C" NOT NULL,      -- JSON
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_account ON flows (account_id, id);
CREATE INDEX IF NOT EXISTS flows_trigger ON flows (account_id, trigger_kind, trigger_id);
CREATE TABLE IF NOT EXISTS flow_actions (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    flow_id text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,          -- draft | manual | live | disabled
    definition text COLLATE "C" NOT NULL,      -- JSON
    message_id text COLLATE "C" UNIQUE,        -- its flow-message, for actions that send one
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_actions_flow ON flow_actions (account_id, flow_id, id);

-- Test control: an account's clock, frozen (frozen_at) or moved (clock_offset); real time
-- when it has no row (trackhouse/clock.py).
CREATE TABLE IF NOT EXISTS clocks (
    account_id text COLLATE "C" PRIMARY KEY,
    frozen_at double precision,
    clock_offset double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    id text COLLATE "C" PRIMARY KEY,
    created_at text COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL REFERENCES accounts(id),
    key_hash text COLLATE "C" NOT NULL UNIQUE,
    prefix text COLLATE "C" NOT NULL,
    label text COLLATE "C" NOT NULL DEFAULT '',
    scopes text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    revoked_at text COLLATE "C"
);
"""
    + POSTGRES_SCHEMA
)


def _current(conn: psycopg.Connection) -> int | None:
    """The partition count of a schema at this version, or None (absent, or older)."""
    try:
        rows: dict[str, str] = dict(
            conn.execute(
                "SELECT key, value FROM trackhouse_meta WHERE key IN ('schema', 'partitions')"
            ).fetchall()
        )
    except psycopg.errors.UndefinedTable:
        return None
    if rows.get("schema") != SCHEMA_VERSION or "partitions" not in rows:
        return None
    return int(rows["partitions"])


def _connect_when_up(url: str, wait: float = 60.0) -> psycopg.Connection:
    """A process started while its database restarts waits for it (up to `wait` s) rather
    than exiting; past that, the connection error."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline or "does not exist" in str(exc):
                raise
            logger.warning("waiting for the database: %s", str(exc).strip())
            time.sleep(1)


def migrate(url: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """Create the schema, or bring an existing one up to date; safe to run from several
    processes at once (one waits for the other). A schema at this version is left alone: DDL
    while workers write would lock tables against them. Returns the log's partition count."""
    with _connect_when_up(url) as conn:
        found = _current(conn)
        if found is not None:
            return found
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('trackhouse migrate'))")
            conn.execute("SET LOCAL client_min_messages = warning")  # "already exists"
            conn.execute(SCHEMA)
            row = conn.execute(
                "SELECT value FROM trackhouse_meta WHERE key = 'partitions'"
            ).fetchone()
            if row is not None:  # an older version: its tables are added above
                partitions = int(row[0])
            for p in range(partitions):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS log_entries_{p} PARTITION OF log_entries"
                    f" FOR VALUES IN ({p})"
                )
            seeds = [(p,) for p in range(partitions)]
            with conn.cursor() as cur:
                for table in ("log_heads", "positions"):
                    cur.executemany(
                        f"INSERT INTO {table} VALUES (%s, 0) ON CONFLICT DO NOTHING", seeds
                    )
                cur.executemany(
                    "INSERT INTO partition_owners (partition) VALUES (%s) ON CONFLICT DO NOTHING",
                    seeds,
                )
            conn.execute(
                "INSERT INTO trackhouse_meta VALUES ('partitions', %s), ('schema', %s),"
                " ('log_identity', %s) ON CONFLICT (key) DO NOTHING",
                (str(partitions), SCHEMA_VERSION, uuid.uuid4().hex),
            )
            conn.execute(
                "UPDATE trackhouse_meta SET value = %s WHERE key = 'schema'", (SCHEMA_VERSION,)
            )
        return partitions
