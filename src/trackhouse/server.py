"""Wiring the embedded default together: SQLite log and store under one data directory."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from trackhouse.api.app import build_app
from trackhouse.api.ratelimit import Limit, RateLimiter, parse_limits
from trackhouse.log.sqlite import SQLiteLog
from trackhouse.store.accounts import AccountStore

LOG_FILE = "log.sqlite3"
STORE_FILE = "store.sqlite3"


@dataclass
class Settings:
    data_dir: Path = Path("trackhouse-data")
    host: str = "127.0.0.1"
    port: int = 8080
    rate_limits: dict[str, Limit] | None = field(
        default_factory=lambda: parse_limits(os.environ.get("TRACKHOUSE_RATE_LIMITS"))
    )


def open_accounts(data_dir: Path) -> AccountStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return AccountStore(data_dir / STORE_FILE)


@dataclass
class FirstStart:
    """What `serve` tells the user about the account it serves."""

    account_id: str
    private_key: str | None  # shown only when created now (stored hashed, never again)


def ensure_account(accounts: AccountStore) -> FirstStart:
    """TRACKHOUSE_PUBLIC_KEY / TRACKHOUSE_PRIVATE_KEY pin the keys (for CI); otherwise the
    first start creates an account with an all-scopes private key."""
    public = os.environ.get("TRACKHOUSE_PUBLIC_KEY")
    private = os.environ.get("TRACKHOUSE_PRIVATE_KEY")
    if public or private:
        if not public:
            existing = accounts.account_ids()
            public = existing[0] if existing else None
        account_id = accounts.create_account(public)
        if private:
            accounts.ensure_key(account_id, private)
        return FirstStart(account_id, private)
    existing = accounts.account_ids()
    if existing:
        return FirstStart(existing[0], None)
    account_id = accounts.create_account()
    secret, _ = accounts.create_key(account_id, label="created by first start")
    return FirstStart(account_id, secret)


def serve(settings: Settings, announce) -> None:
    accounts = open_accounts(settings.data_dir)
    log = SQLiteLog(settings.data_dir / LOG_FILE)
    try:
        first = ensure_account(accounts)
        # Bind before announcing, so the printed address (and port, when 0 was asked) is real.
        sock = socket.create_server((settings.host, settings.port), reuse_port=False)
        settings.port = sock.getsockname()[1]
        announce(first, settings)
        limiter = None if settings.rate_limits is None else RateLimiter(settings.rate_limits)
        app = build_app(log, accounts, limiter)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http="httptools",
            loop="auto",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=30,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        log.close()  # commits whatever is still queued, then stops the writer
        accounts.close()
