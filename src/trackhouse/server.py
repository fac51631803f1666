"""`trackhouse serve` and `trackhouse process`: the API, the processor, or both, over the log and
the store that `backends.py` opens."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from trackhouse.api.app import build_app
from trackhouse.api.backpressure import DEFAULT_MAX_BACKLOG, Backlog, ClusterBacklog, Polled
from trackhouse.api.http import BoundedHttpTools
from trackhouse.api.ratelimit import Limit, RateLimiter, parse_daily_limits, parse_limits
from trackhouse.backends import Location, open_accounts, open_api_share, open_pipeline
from trackhouse.log import EventLog
from trackhouse.process.child import ProcessorProcess, cores, follow_signals
from trackhouse.process.processor import Processor
from trackhouse.store import ProcessorRunning
from trackhouse.store.accounts import ADMIN_SCOPE, AccountStore
from trackhouse.store.base import ProcessingClaim, Store

logger = logging.getLogger("trackhouse.server")


@dataclass
class Settings:
    data_dir: Path = Path("trackhouse-data")
    store_url: str | None = None  # postgresql://…; None: SQLite under data_dir
    host: str = "127.0.0.1"
    port: int = 8080
    rate_limits: dict[str, Limit] | None = field(
        default_factory=lambda: parse_limits(os.environ.get("TRACKHOUSE_RATE_LIMITS"))
    )
    # Klaviyo's daily creation limits by kind (TRACKHOUSE_DAILY_LIMITS; off: empty).
    daily_limits: dict[str, int] = field(
        default_factory=lambda: parse_daily_limits(os.environ.get("TRACKHOUSE_DAILY_LIMITS"))
    )
    process: bool = True  # process what is accepted (off: `trackhouse process` does)
    # Where: "thread" (in the serving process), "process" (a second one, process/child.py),
    # or "auto": the second process when this one may run on two cores or more.
    processing: str = "auto"
    # How many log entries processing may fall behind before writes get 503 (None: no bound).
    max_backlog: int | None = field(
        default_factory=lambda: (
            int(os.environ.get("TRACKHOUSE_MAX_BACKLOG", DEFAULT_MAX_BACKLOG)) or None
        )
    )

    api_processes: int = 1  # `serve --workers N`: N API processes sharing the port
    reuse_port: bool = False  # one of those N: bind the port with SO_REUSEPORT
    quiet: bool = False  # one of those N: the parent announced already

    @property
    def location(self) -> Location:
        return Location(self.data_dir, self.store_url)

    @property
    def separate(self) -> bool:
        """Processing runs in a second process (never with --workers: each of those N
        processes processes in a thread)."""
        if not self.process or self.api_processes > 1 or self.processing == "thread":
            return False
        return self.processing == "process" or cores() >= 2


def collect_less() -> None:
    """Tune the garbage collector for a long-running server. A 200-event page allocates tens
    of thousands of objects; with the default thresholds the collections they trigger doubled
    the p99 of shaping a page (in-process, 2,000 pages of a 10,000,000-event store: 7.5 ms →
    4.7 ms), and they cost the processor a quarter of its time (single-event submissions: 60 →
    46 µs an event). Collect less often, and keep what start-up made out of the way."""
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()


@dataclass
class FirstStart:
    """What `serve` tells the user about the account it serves."""

    account_id: str
    # Keys created now are shown once (they are stored hashed); None when they already existed
    # or come from the environment.
    private_key: str | None = None
    admin_key: str | None = None


def ensure_account(accounts: AccountStore) -> FirstStart:
    """TRACKHOUSE_PUBLIC_KEY / _PRIVATE_KEY / _ADMIN_KEY pin the keys (for CI); otherwise the
    first start creates an account with an all-scopes private key and a test-control key."""
    public = os.environ.get("TRACKHOUSE_PUBLIC_KEY")
    private = os.environ.get("TRACKHOUSE_PRIVATE_KEY")
    admin = os.environ.get("TRACKHOUSE_ADMIN_KEY")
    existing = accounts.account_ids()
    if public or private or admin:
        account_id = accounts.create_account(public or next(iter(existing), None))
        if private:
            accounts.ensure_key(account_id, private)
        if admin:
            accounts.ensure_key(account_id, admin, (ADMIN_SCOPE,))
        return FirstStart(account_id)
    if existing:
        return FirstStart(existing[0])
    account_id = accounts.create_account()
    secret, _ = accounts.create_key(account_id, label="created by first start")
    admin_secret, _ = accounts.create_key(account_id, frozenset({ADMIN_SCOPE}), "test control")
    return FirstStart(account_id, secret, admin_secret)


def backlog_bound(
    settings: Settings, log: EventLog, store: Store, processor: Processor | None
) -> Backlog | None:
    """The embedded log's processed position comes from the processor in this process when it
    runs here; anything else (`trackhouse process` elsewhere, a cluster's workers) is read
    from the store, which every processor updates."""
    if not settings.max_backlog:
        return None
    if log.partitions == 1:  # this process is the log's one writer: its head is exact
        processed: Callable[[], int] = (
            (lambda: processor.position)
            if processor is not None
            else Polled(lambda: store.positions()[0])
        )
        return Backlog(lambda: log.committed - processed(), settings.max_backlog)
    behind = ClusterBacklog(lambda: store.unprocessed(log), lambda: log.appended)
    return Backlog(behind, settings.max_backlog)


def serve(settings: Settings, announce: Callable[[FirstStart, Settings], None]) -> None:
    """The API and (unless settings.process is off) the processor: in a second process where
    there are two cores (`Settings.separate`), else in this one — or, with
    `settings.api_processes` > 1, in that many processes sharing the port."""
    if settings.api_processes > 1:
        serve_several(settings, announce)
        return
    where = settings.location
    if where.url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as resources:
        log, store = open_pipeline(where, resources)
        accounts = open_accounts(where)
        resources.callback(accounts.close)
        processor: Processor | ProcessorProcess | None = None
        if settings.separate:
            claim = None
            if where.url is None:  # held here, so no other processor slips in at a restart
                claim = _claim_waiting(store)
                resources.callback(claim.release)
            processor = ProcessorProcess(where, None if claim is None else claim.fileno())
            # Started as early as it can be (its imports take ~1 s here, which this process
            # has done already, so little of it overlaps); stopped before the log and store.
            processor.start()
            resources.callback(processor.stop)
        elif settings.process:
            processor = Processor(log, store)
            resources.callback(processor.close)
        share = open_api_share(where, resources)
        _serve(settings, announce, log, store, accounts, processor, share)


def _claim_waiting(store: Store, seconds: float = 30.0) -> ProcessingClaim:
    """The embedded store's processing claim, for the second process; refused at start
    (ProcessorRunning) while another processor holds it — after a grace for the second
    process of a server that was just stopped or killed to finish its batch and the webhook
    requests it has out (up to 20 s)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return store.claim_processing()
        except ProcessorRunning:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _serve(
    settings: Settings,
    announce: Callable[[FirstStart, Settings], None],
    log: EventLog,
    store: Store,
    accounts: AccountStore,
    processor: Processor | ProcessorProcess | None,
    share: Callable[[], tuple[int, int]] | None = None,
) -> None:
    stop = threading.Event()
    thread = None
    main_thread = False
    try:
        first = ensure_account(accounts)
        # Bind before announcing, so the printed address (and port, when 0 was asked) is real.
        sock = socket.create_server((settings.host, settings.port), reuse_port=settings.reuse_port)
        settings.port = sock.getsockname()[1]
        if not settings.quiet:
            announce(first, settings)
        if processor is not None:
            log.on_commit(processor.wake.set)
        if isinstance(processor, Processor):
            thread = threading.Thread(target=processor.run, args=(stop,), name="processor")
            thread.start()
        limiter = (
            None if settings.rate_limits is None else RateLimiter(settings.rate_limits, share=share)
        )
        here = processor if isinstance(processor, Processor) else None
        app = build_app(
            log, accounts, store, processor, limiter,
            backlog_bound(settings, log, store, here), settings.daily_limits,
        )  # fmt: skip
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http=BoundedHttpTools,  # httptools, with deadlines and a size bound for heads
            loop="auto",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=30,
        )
        collect_less()
        # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again under the
        # handler that was there before it: with the default one the process would die right
        # there, before the processor finishes its batch and the log and store are closed.
        # Handlers that do nothing let `finally` below run, and the process exits 0.
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if main_thread:  # a second signal during the shutdown below may cut it short
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        # In-flight requests are done; finish the batch in hand, then commit what is queued.
        stop.set()
        if thread is not None and isinstance(processor, Processor):
            processor.wake.set()
            processor.hurry.set()
            thread.join()


def process_only(
    where: Location,
    stop: threading.Event,
    signals_fd: int | None = None,
    claim_fd: int | None = None,
) -> None:
    """Run a processor (a worker, on PostgreSQL) alone, without the API; as `serve`'s second
    process, woken through the pipe `signals_fd`, with the claim `serve` took (process/child.py)."""
    with contextlib.ExitStack() as resources:
        log, store = open_pipeline(where, resources)
        processor = Processor(log, store, claim=claim_fd)
        resources.callback(processor.close)
        if signals_fd is not None:
            threading.Thread(
                target=follow_signals, name="signals", daemon=True,
                args=(signals_fd, processor.wake, processor.hurry, processor.deliveries_wake, stop),
            ).start()  # fmt: skip
        collect_less()
        processor.run(stop)


def serve_several(settings: Settings, announce: Callable[[FirstStart, Settings], None]) -> None:
    """`serve --workers N` (PostgreSQL only: the embedded log has one writer): N API processes
    bound to one port with SO_REUSEPORT, the kernel spreading connections among them. This
    process announces, then watches them: one that dies is started again; SIGTERM or SIGINT
    stops them all (each finishing its requests and its batch)."""
    where = settings.location
    if where.url is None:
        raise ValueError("--workers needs --store postgresql://…: the embedded log has one writer")
    accounts = open_accounts(where)
    try:
        first = ensure_account(accounts)
    finally:
        accounts.close()
    # Holding the port (SO_REUSEPORT, never listening) keeps it ours across child restarts.
    keeper = socket.socket()
    keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    keeper.bind((settings.host, settings.port))
    settings.port = keeper.getsockname()[1]
    command = [sys.executable, "-m", "trackhouse", "serve", "--store", where.url]
    command += ["--host", settings.host, "--port", str(settings.port), "--reuse-port", "--quiet"]
    command += ["--max-backlog", str(settings.max_backlog or 0)]
    if settings.rate_limits is None:
        command.append("--no-rate-limits")
    if not settings.process:
        command.append("--no-process")
    command += ["--processing", "thread"]
    children = [subprocess.Popen(command) for _ in range(settings.api_processes)]
    announce(first, settings)
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        while not stopping.wait(0.5):
            for n, child in enumerate(children):
                if child.poll() is not None:
                    logger.warning("API process %d exited (%s); starting it again", child.pid,
                                   child.returncode)  # fmt: skip
                    children[n] = subprocess.Popen(command)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait()
        keeper.close()
