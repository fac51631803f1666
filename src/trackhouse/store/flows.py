"""Flow runs in the store, for both SQL backends: the rows, the standard SQL (as store/sql.py,
but for `FOR UPDATE … SKIP LOCKED`, which the dialect gives), and two mixins that run it —
`FlowRunWrites` on the processor's writer (entering profiles, claiming and finishing steps,
the outbox, all in the batch's or the step's transaction) and `FlowRunReads` on the API's
store (test control: runs, the outbox, what is due).

A run is one profile's way through one flow, from one triggering event or join. Its steps are
rows too: each is due at an instant of the account's clock, claimed by the worker that runs
it in the transaction that records its effects, and so runs exactly once (flows/runner.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trackhouse.store.base import FlowRow
from trackhouse.store.sql import Dialect, flow_row, flows

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS flow_runs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    trigger TEXT NOT NULL,         -- metric | list | segment
    event_number INTEGER,          -- the triggering event (metric triggers)
    anchor REAL NOT NULL,          -- the trigger's time: steps are scheduled from it
    entered_at REAL NOT NULL,      -- the account's clock when the profile entered
    status TEXT NOT NULL,          -- active | completed | exited
    ended_at REAL,
    reason TEXT                    -- why it exited
);
CREATE INDEX IF NOT EXISTS flow_runs_profile
    ON flow_runs (account_id, flow_id, profile_id, entered_at);
CREATE TABLE IF NOT EXISTS flow_steps (
    id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    action_id TEXT NOT NULL,
    due_at REAL NOT NULL,          -- on the account's clock
    status TEXT NOT NULL,          -- pending | done
    ran_at REAL,                   -- the instant it ran as of (its due time, or later)
    outcome TEXT,                  -- what it did: waited, true, false, branch, sent, …
    detail TEXT
);
CREATE INDEX IF NOT EXISTS flow_steps_due ON flow_steps (due_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS flow_steps_run ON flow_steps (account_id, run_id, id);
CREATE TABLE IF NOT EXISTS flow_decisions (  -- per event and flow: entered, or why not
    account_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    flow_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    run_id TEXT,
    PRIMARY KEY (account_id, seq, idx, flow_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    channel TEXT NOT NULL,         -- email | sms | push
    recipient TEXT,
    flow_id TEXT NOT NULL,
    action_id TEXT NOT NULL,
    message_id TEXT,
    run_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    subject TEXT,
    body TEXT,
    status TEXT NOT NULL,          -- sent | queued | skipped
    reason TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_account ON outbox (account_id, at, id);
CREATE INDEX IF NOT EXISTS outbox_profile ON outbox (account_id, profile_id, channel, at);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    action_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT NOT NULL,         -- JSON object, as rendered
    body TEXT,
    idempotency_key TEXT NOT NULL, -- one per step: every attempt sends the same
    status TEXT NOT NULL,          -- pending | delivered | failed
    attempts INTEGER NOT NULL,
    next_at REAL,                  -- the next attempt, on the account's clock
    leased_until REAL,             -- (real time) an attempt in flight, by some worker
    created_at REAL NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_account
    ON webhook_deliveries (account_id, created_at, id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,              -- as of the account's clock
    status_code INTEGER,
    duration_ms REAL,
    error TEXT,
    PRIMARY KEY (delivery_id, n)
);
"""

_IDENTITY = "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
POSTGRES_SCHEMA = (
    SQLITE_SCHEMA.replace("id INTEGER PRIMARY KEY", _IDENTITY)
    .replace(" TEXT", ' text COLLATE "C"')
    .replace(" REAL", " double precision")
    .replace(" INTEGER", " bigint")
)  # fmt: skip

# An account's rows of these tables, deleted by a reset (before the flows they refer to).
# (Deliveries before their attempts: on PostgreSQL an attempt being recorded holds its
# delivery's row first (record_attempt), so a reset's later look at the attempts sees it.)
TABLES = ("flow_decisions", "flow_steps", "flow_runs", "outbox", "webhook_deliveries",
          "webhook_attempts")  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunRow:
    id: str
    account_id: str
    flow_id: str
    profile_id: str
    trigger: str
    event_number: int | None
    anchor: float
    entered_at: float
    status: str
    ended_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StepRow:
    id: int
    account_id: str
    run_id: str
    action_id: str
    due_at: float
    status: str = "pending"
    ran_at: float | None = None
    outcome: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    account_id: str
    channel: str
    recipient: str | None
    flow_id: str
    action_id: str
    message_id: str | None
    run_id: str
    profile_id: str
    subject: str | None
    body: str | None
    status: str
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: str
    account_id: str
    flow_id: str
    action_id: str
    run_id: str
    profile_id: str
    url: str
    headers: str  # JSON
    body: str | None
    idempotency_key: str
    status: str
    attempts: int
    next_at: float | None
    leased_until: float | None
    created_at: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    delivery_id: str
    n: int
    at: float
    status_code: int | None
    duration_ms: float | None
    error: str | None


# (account, log entry, event index, flow, decision, run)
Decision = tuple[str, int, int, str, str, str | None]

RUN_COLUMNS = ("id, account_id, flow_id, profile_id, trigger, event_number, anchor, entered_at,"
               " status, ended_at, reason")  # fmt: skip
STEP_COLUMNS = "id, account_id, run_id, action_id, due_at, status, ran_at, outcome, detail"
DELIVERY_COLUMNS = ("id, account_id, flow_id, action_id, run_id, profile_id, url, headers, body,"
                    " idempotency_key, status, attempts, next_at, leased_until, created_at,"
                    " detail")  # fmt: skip
_DUE_DELIVERY = (
    "d.status = 'pending' AND d.next_at <= coalesce(c.frozen_at, {p} + coalesce(c.clock_offset,"
    " 0)) AND (d.leased_until IS NULL OR d.leased_until < {p})"
)
OUTBOX_COLUMNS = ("id, account_id, channel, recipient, flow_id, action_id, message_id, run_id,"
                  " profile_id, subject, body, status, reason, at")  # fmt: skip


def _marks(d: Dialect, n: int) -> str:
    return ", ".join([d.param] * n)


class FlowRunWrites:
    """What processing writes as flows run (mixed into each backend's writer, whose `_rows`
    and `_run` execute a statement in the batch's transaction)."""

    _flow_sql: Dialect
    _skip_locked: str  # " FOR UPDATE OF {alias} SKIP LOCKED" where workers share the store

    _rows: Callable[..., list[tuple]]
    _run: Callable[..., int]

    def account_flows(self, account_id: str) -> list[FlowRow]:
        """The account's flows, as the API stored them (read in the batch's transaction)."""
        sql, args = flows(self._flow_sql, account_id, None)
        return [flow_row(r) for r in self._rows(sql, args)]

    def add_runs(self, runs: list[RunRow], steps: list[tuple[str, str, str, float]]) -> None:
        """New runs, and their first steps (account, run, action, due)."""
        d = self._flow_sql
        for r in runs:
            self._run(f"INSERT INTO flow_runs ({RUN_COLUMNS}) VALUES ({_marks(d, 11)})",
                      (r.id, r.account_id, r.flow_id, r.profile_id, r.trigger, r.event_number,
                       r.anchor, r.entered_at, r.status, r.ended_at, r.reason))  # fmt: skip
        self.add_steps(steps)

    def add_steps(self, steps: list[tuple[str, str, str, float]]) -> None:
        d = self._flow_sql
        for step in steps:
            self._run("INSERT INTO flow_steps (account_id, run_id, action_id, due_at, status)"
                      f" VALUES ({_marks(d, 4)}, 'pending')", step)  # fmt: skip

    def record_decisions(self, rows: list[Decision]) -> None:
        d = self._flow_sql
        for row in rows:
            self._run(f"INSERT INTO flow_decisions VALUES ({_marks(d, 6)})", row)

    def last_entries(
        self, account_id: str, flow_id: str, profile_ids: list[str]
    ) -> dict[str, float]:
        """When each profile's last run of the flow was triggered (its anchor), if ever."""
        d = self._flow_sql
        where, args = d.one_of("profile_id", profile_ids)
        rows = self._rows(
            f"SELECT profile_id, max(anchor) FROM flow_runs WHERE account_id = {d.param}"
            f" AND flow_id = {d.param} AND {where} GROUP BY profile_id",
            [account_id, flow_id, *args],
        )
        return {pid: at for pid, at in rows}

    def entries_of(self, account_id: str, flow_id: str, profile_id: str) -> list[tuple[str, float]]:
        """(run, entered at) of every run of the profile in the flow."""
        p = self._flow_sql.param
        rows = self._rows(
            f"SELECT id, entered_at FROM flow_runs WHERE account_id = {p} AND flow_id = {p}"
            f" AND profile_id = {p}", (account_id, flow_id, profile_id),
        )  # fmt: skip
        return [(run_id, at) for run_id, at in rows]

    def due_steps(self, wall: float, limit: int) -> list[StepRow]:
        """Pending steps due on their account's clock, earliest first, held until the
        transaction ends (another worker skips them)."""
        p = self._flow_sql.param
        rows = self._rows(
            f"SELECT s.id, s.account_id, s.run_id, s.action_id, s.due_at FROM flow_steps s"
            " LEFT JOIN clocks c ON c.account_id = s.account_id WHERE s.status = 'pending'"
            f" AND s.due_at <= coalesce(c.frozen_at, {p} + coalesce(c.clock_offset, 0))"
            f" ORDER BY s.due_at, s.id LIMIT {p}{self._skip_locked.format(alias='s')}",
            (wall, limit),
        )
        return [StepRow(*row) for row in rows]

    def finish_step(self, step_id: int, ran_at: float, outcome: str, detail: str | None) -> bool:
        """Mark the step done; False if it was done already (then nothing of it is kept)."""
        p = self._flow_sql.param
        return (
            self._run(
                f"UPDATE flow_steps SET status = 'done', ran_at = {p}, outcome = {p},"
                f" detail = {p} WHERE id = {p} AND status = 'pending'",
                (ran_at, outcome, detail, step_id),
            )
            == 1
        )

    def flow_run(self, account_id: str, run_id: str) -> RunRow | None:
        p = self._flow_sql.param
        rows = self._rows(f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = {p}"
                          f" AND account_id = {p}", (run_id, account_id))  # fmt: skip
        return RunRow(*rows[0]) if rows else None

    def end_run(self, run_id: str, status: str, at: float, reason: str | None) -> None:
        p = self._flow_sql.param
        self._run(f"UPDATE flow_runs SET status = {p}, ended_at = {p}, reason = {p}"
                  f" WHERE id = {p}", (status, at, reason, run_id))  # fmt: skip

    def add_outbox(self, row: OutboxRow) -> None:
        d = self._flow_sql
        self._run(f"INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ({_marks(d, 14)})",
                  (row.id, row.account_id, row.channel, row.recipient, row.flow_id,
                   row.action_id, row.message_id, row.run_id, row.profile_id, row.subject,
                   row.body, row.status, row.reason, row.at))  # fmt: skip

    def last_sent(
        self, account_id: str, profile_id: str, channel: str, until: float | None = None
    ) -> float | None:
        """When the profile was last sent a message on the channel, by any flow (at or
        before `until`, when given)."""
        p = self._flow_sql.param
        sql = (f"SELECT max(at) FROM outbox WHERE account_id = {p} AND profile_id = {p}"
               f" AND channel = {p} AND status = 'sent'")  # fmt: skip
        args: tuple[Any, ...] = (account_id, profile_id, channel)
        if until is not None:
            sql, args = f"{sql} AND at <= {p}", (*args, until)
        rows = self._rows(sql, args)
        return rows[0][0] if rows else None

    def add_delivery(self, row: DeliveryRow) -> None:
        d = self._flow_sql
        self._run(f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES ({_marks(d, 16)})",
                  (row.id, row.account_id, row.flow_id, row.action_id, row.run_id,
                   row.profile_id, row.url, row.headers, row.body, row.idempotency_key,
                   row.status, row.attempts, row.next_at, row.leased_until, row.created_at,
                   row.detail))  # fmt: skip

    def claim_deliveries(self, wall: float, lease: float, limit: int) -> list[DeliveryRow]:
        """Deliveries whose next attempt is due on their account's clock and that no worker
        is attempting, earliest first; each leased for `lease` seconds and its attempt
        counted (commit before sending: a worker that dies mid-attempt lets the lease run
        out, and another sends it again, with the same idempotency key)."""
        p = self._flow_sql.param
        due = _DUE_DELIVERY.format(p=p)
        rows = self._rows(
            f"SELECT d.id FROM webhook_deliveries d LEFT JOIN clocks c"
            f" ON c.account_id = d.account_id WHERE {due} ORDER BY d.next_at, d.id"
            f" LIMIT {p}{self._skip_locked.format(alias='d')}",
            (wall, wall, limit),
        )
        claimed = []
        for (delivery_id,) in rows:
            self._run(
                f"UPDATE webhook_deliveries SET leased_until = {p}, attempts = attempts + 1"
                f" WHERE id = {p}", (wall + lease, delivery_id),
            )  # fmt: skip
            found = self._rows(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"
                               f" WHERE id = {p}", (delivery_id,))  # fmt: skip
            claimed.append(DeliveryRow(*found[0]))
        return claimed

    def record_attempt(
        self, delivery: DeliveryRow, attempt: AttemptRow, status: str, next_at: float | None,
        detail: str | None,
    ) -> None:  # fmt: skip
        """The attempt's result, and what comes next: delivered, failed, or another try at
        `next_at`."""
        d = self._flow_sql
        p = d.param
        # Only while this worker's lease holds: another worker that took the delivery over
        # after it ran out records its own attempt. First, so that on PostgreSQL the row is
        # held (or found gone, once a reset deleting it has committed) before the attempt is.
        self._run(f"UPDATE webhook_deliveries SET status = {p}, next_at = {p}, detail = {p},"
                  f" leased_until = NULL WHERE id = {p} AND leased_until = {p}",
                  (status, next_at, detail, delivery.id, delivery.leased_until))  # fmt: skip
        # Only for a delivery that is still there: the account may have been reset while the
        # request was out. (Typed: PostgreSQL cannot infer a bare parameter's type here.)
        self._run(
            f"INSERT INTO webhook_attempts SELECT CAST({p} AS TEXT), CAST({p} AS TEXT),"
            f" CAST({p} AS INTEGER), CAST({p} AS DOUBLE PRECISION), CAST({p} AS INTEGER),"
            f" CAST({p} AS DOUBLE PRECISION), CAST({p} AS TEXT)"
            f" WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = {p})"
            " ON CONFLICT (delivery_id, n) DO NOTHING",
            (attempt.delivery_id, delivery.account_id, attempt.n, attempt.at,
             attempt.status_code, attempt.duration_ms, attempt.error, delivery.id),
        )  # fmt: skip

    def event_of_run(self, account_id: str, number: int) -> tuple[float | None, bytes] | None:
        """The triggering event's value and properties (JSON)."""
        d = self._flow_sql
        rows = self._rows(f"SELECT value, properties FROM events WHERE {d.number} = {d.param}"
                          f" AND account_id = {d.param}", (number, account_id))  # fmt: skip
        return (rows[0][0], bytes(rows[0][1])) if rows else None


class FlowRunReads:
    """Test control's reads of flow runs (mixed into each backend's store, whose `_query`
    and `_write` run one statement)."""

    _flow_sql: Dialect
    _query: Callable[..., list[tuple]]
    _write: Callable[..., int]

    def _count(self, sql: str, args: tuple[Any, ...]) -> int:
        return int(self._query(f"SELECT count(*) FROM {sql}", args)[0][0])

    def steps_due_now(self, wall: float) -> int:
        """Pending steps of every account that are due on their account's clock."""
        p = self._flow_sql.param
        return self._count(
            "flow_steps s LEFT JOIN clocks c ON c.account_id = s.account_id"
            f" WHERE s.status = 'pending' AND s.due_at <= coalesce(c.frozen_at, {p}"
            " + coalesce(c.clock_offset, 0))", (wall,),
        )  # fmt: skip

    def deliveries_due_now(self, wall: float) -> int:
        """Webhook attempts of every account that are due on their account's clock."""
        p = self._flow_sql.param
        return self._count(
            "webhook_deliveries d LEFT JOIN clocks c"
            f" ON c.account_id = d.account_id WHERE {_DUE_DELIVERY.format(p=p)}", (wall, wall),
        )  # fmt: skip

    def deliveries_due(self, account_id: str, now: float) -> int:
        """The account's webhook attempts due at or before `now` (in flight included)."""
        p = self._flow_sql.param
        return self._count(
            f"webhook_deliveries WHERE account_id = {p} AND status = 'pending'"
            f" AND next_at <= {p}", (account_id, now),
        )  # fmt: skip

    def deliveries(
        self, account_id: str, filters: dict[str, str], limit: int
    ) -> list[tuple[DeliveryRow, list[AttemptRow]]]:
        """The account's webhook deliveries, oldest first, with their attempts."""
        p = self._flow_sql.param
        sql = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE account_id = {p}"
        args: list[Any] = [account_id]
        for column, value in sorted(filters.items()):
            sql, args = f"{sql} AND {column} = {p}", [*args, value]
        rows = [DeliveryRow(*r) for r in self._query(f"{sql} ORDER BY created_at, id LIMIT {p}",
                                                      (*args, limit))]  # fmt: skip
        if not rows:
            return []
        where, more = self._flow_sql.one_of("delivery_id", [r.id for r in rows])
        attempts: dict[str, list[AttemptRow]] = {}
        for row in self._query(
            "SELECT delivery_id, n, at, status_code, duration_ms, error FROM webhook_attempts"
            f" WHERE account_id = {p} AND {where} ORDER BY n", (account_id, *more),
        ):  # fmt: skip
            attempts.setdefault(row[0], []).append(AttemptRow(*row))
        return [(r, attempts.get(r.id, [])) for r in rows]

    def steps_due(self, account_id: str, now: float) -> int:
        """The account's pending steps due at or before `now`."""
        p = self._flow_sql.param
        return self._count(
            f"flow_steps WHERE account_id = {p} AND status = 'pending' AND due_at <= {p}",
            (account_id, now),
        )

    def flow_runs(
        self, account_id: str, flow_id: str | None, profile_id: str | None, status: str | None,
        limit: int,
    ) -> list[tuple[RunRow, list[StepRow]]]:  # fmt: skip
        """The account's runs, newest first, with their steps."""
        p = self._flow_sql.param
        sql, args = f"SELECT {RUN_COLUMNS} FROM flow_runs WHERE account_id = {p}", [account_id]
        for column, value in (("flow_id", flow_id), ("profile_id", profile_id),
                              ("status", status)):  # fmt: skip
            if value is not None:
                sql, args = f"{sql} AND {column} = {p}", [*args, value]
        runs = [RunRow(*r) for r in self._query(f"{sql} ORDER BY entered_at DESC, id LIMIT {p}",
                                                (*args, limit))]  # fmt: skip
        if not runs:
            return []
        where, more = self._flow_sql.one_of("run_id", [r.id for r in runs])
        steps: dict[str, list[StepRow]] = {}
        for row in self._query(f"SELECT {STEP_COLUMNS} FROM flow_steps WHERE account_id = {p}"
                               f" AND {where} ORDER BY id", (account_id, *more)):  # fmt: skip
            step = StepRow(*row)
            steps.setdefault(step.run_id, []).append(step)
        return [(r, steps.get(r.id, [])) for r in runs]

    def steps_ran(self, account_id: str, after: float, until: float, limit: int) -> list[StepRow]:
        """The account's steps that ran as of an instant in (after, until], in that order."""
        p = self._flow_sql.param
        rows = self._query(
            f"SELECT {STEP_COLUMNS} FROM flow_steps WHERE account_id = {p} AND status = 'done'"
            f" AND ran_at > {p} AND ran_at <= {p} ORDER BY ran_at, id LIMIT {p}",
            (account_id, after, until, limit),
        )
        return [StepRow(*row) for row in rows]

    def outbox(self, account_id: str, filters: dict[str, str], limit: int) -> list[OutboxRow]:
        """The account's messages, oldest first, matching `filters` (column → value)."""
        p = self._flow_sql.param
        sql, args = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE account_id = {p}", [account_id]
        for column, value in sorted(filters.items()):
            sql, args = f"{sql} AND {column} = {p}", [*args, value]
        rows = self._query(f"{sql} ORDER BY at, id LIMIT {p}", (*args, limit))
        return [OutboxRow(*row) for row in rows]

    def clear_outbox(self, account_id: str) -> int:
        return self._write(f"DELETE FROM outbox WHERE account_id = {self._flow_sql.param}",
                           (account_id,))  # fmt: skip

    def decisions(self, account_id: str, seqs: list[int]) -> dict[tuple[int, int], list[tuple]]:
        """(entry, event index) → [(flow, decision, run)] of those log entries' events."""
        if not seqs:
            return {}
        where, args = self._flow_sql.one_of("seq", seqs)
        found: dict[tuple[int, int], list[tuple]] = {}
        for seq, idx, flow_id, decision, run_id in self._query(
            "SELECT seq, idx, flow_id, decision, run_id FROM flow_decisions"
            f" WHERE account_id = {self._flow_sql.param} AND {where} ORDER BY flow_id",
            (account_id, *args),
        ):
            found.setdefault((seq, idx), []).append((flow_id, decision, run_id))
        return found
