"""The `trackhouse` command: `serve`, `process`, `wait`, `migrate`, `accounts create|list` and
`keys create|list|revoke`. Each takes `--data-dir` (the embedded SQLite default) or `--store`
(a PostgreSQL URL)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import click

from trackhouse import __version__
from trackhouse.backends import Location
from trackhouse.store.accounts import ADMIN_SCOPE, ALL_SCOPES

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("trackhouse-data"),
    show_default=True,
    envvar="TRACKHOUSE_DATA_DIR",
    help="Where the SQLite files live (without --store).",
)
STORE = click.option(
    "--store",
    "store_url",
    envvar="TRACKHOUSE_STORE",
    metavar="URL",
    default=None,
    help="postgresql://USER@HOST:PORT/DB: the log and the store in PostgreSQL, shared by any "
    "number of API processes and workers (default: SQLite under --data-dir).",
)


def _where(data_dir: Path, store_url: str | None) -> Location:
    from trackhouse.backends import Location

    try:
        return Location(data_dir, store_url or None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None


@click.group()
@click.version_option(__version__, prog_name="trackhouse")
def main() -> None:
    """trackhouse: a self-hosted customer-event platform with Klaviyo-compatible APIs."""


@main.command()
@DATA_DIR
@STORE
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TRACKHOUSE_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="TRACKHOUSE_PORT")
@click.option(
    "--no-rate-limits",
    is_flag=True,
    help="Turn Klaviyo's rate limits off (for load tests); same as TRACKHOUSE_RATE_LIMITS=off.",
)
@click.option(
    "--no-process",
    is_flag=True,
    help="Only accept events into the log; run `trackhouse process` to process them.",
)
@click.option(
    "--processing",
    type=click.Choice(["auto", "thread", "process"]),
    default="auto",
    show_default=True,
    envvar="TRACKHOUSE_PROCESSING",
    help="Where events are processed: in a thread of this process, in a second process (each "
    "gets a core), or auto: the second process when this one may run on two cores or more.",
)
@click.option(
    "--max-backlog",
    type=click.IntRange(min=0),
    default=None,
    help="Log entries processing may fall behind before writes get 503 (0: no bound; default "
    "$TRACKHOUSE_MAX_BACKLOG or 1,000,000).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="API processes sharing the port (needs --store; each also processes unless --no-process).",
)
@click.option(
    "--allow-http-webhooks",
    is_flag=True,
    help="Let flow webhooks go to http URLs and private or loopback addresses (for tests); "
    "same as TRACKHOUSE_ALLOW_HTTP_WEBHOOKS=1.",
)
@click.option("--reuse-port", is_flag=True, hidden=True)  # one of --workers' processes
@click.option("--quiet", is_flag=True, hidden=True)
def serve(
    data_dir: Path,
    store_url: str | None,
    host: str,
    port: int,
    no_rate_limits: bool,
    no_process: bool,
    processing: str,
    max_backlog: int | None,
    workers: int,
    allow_http_webhooks: bool,
    reuse_port: bool,
    quiet: bool,
) -> None:
    """Serve the API and process events: on the embedded default (SQLite under --data-dir), or
    on PostgreSQL (--store), where any number of these and of `trackhouse process` share it."""
    from trackhouse.server import Settings
    from trackhouse.server import serve as run

    _where(data_dir, store_url)
    if allow_http_webhooks:  # read by flows/webhooks.py, here and in --workers' processes
        os.environ["TRACKHOUSE_ALLOW_HTTP_WEBHOOKS"] = "1"
    if workers > 1 and not store_url:
        raise click.UsageError("--workers needs --store: the embedded log has one writer")
    settings = Settings(
        data_dir=data_dir, store_url=store_url, host=host, port=port, process=not no_process
    )
    settings.api_processes, settings.reuse_port, settings.quiet = workers, reuse_port, quiet
    settings.processing = processing
    if no_rate_limits:
        settings.rate_limits = None
    if max_backlog is not None:
        settings.max_backlog = max_backlog or None
    with _refusals():
        run(settings, _announce)


@main.command()
@DATA_DIR
@STORE
@click.option(
    "--allow-http-webhooks",
    is_flag=True,
    help="As serve's: flow webhooks may go to http URLs and private addresses.",
)
@click.option("--signals-fd", type=int, default=None, hidden=True)  # serve's second process
@click.option("--claim-fd", type=int, default=None, hidden=True)  # the claim serve took for it
def process(
    data_dir: Path,
    store_url: str | None,
    allow_http_webhooks: bool,
    signals_fd: int | None,
    claim_fd: int | None,
) -> None:
    """Process without serving the API, until interrupted: the log of --data-dir, or, with
    --store, as one of any number of workers sharing the log's partitions."""
    import signal
    import threading

    from trackhouse.server import process_only

    if allow_http_webhooks:
        os.environ["TRACKHOUSE_ALLOW_HTTP_WEBHOOKS"] = "1"

    stop = threading.Event()
    if signals_fd is None:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    else:  # serve stops it, by closing the pipe, once its own requests are done
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _refusals():
        process_only(_where(data_dir, store_url), stop, signals_fd, claim_fd)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """What stops a start before it begins: said on stderr, exit code 1, no traceback."""
    from trackhouse.log import LogMismatch
    from trackhouse.store import ProcessorRunning

    try:
        yield
    except (LogMismatch, ProcessorRunning, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@DATA_DIR
@STORE
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait at most.")
def wait(data_dir: Path, store_url: str | None, timeout: float) -> None:
    """Wait until every event accepted so far is processed (exit 1 on timeout)."""
    import time

    from trackhouse.backends import open_pipeline

    with contextlib.ExitStack() as resources, _refusals():
        log, store = open_pipeline(_where(data_dir, store_url), resources)
        heads = log.heads()
        deadline = time.monotonic() + timeout
        total = sum(heads.values())
        with click.progressbar(length=total, label="processing", show_pos=True) as bar:
            while True:
                positions = store.positions()
                done = sum(min(positions.get(p, 0), h) for p, h in heads.items())
                bar.update(done - bar.pos)
                if done >= total:
                    break
                if time.monotonic() > deadline:
                    raise click.ClickException(f"timed out at log position {done} of {total}")
                time.sleep(0.05)


@main.command()
@STORE
def migrate(store_url: str | None) -> None:
    """Create or update the PostgreSQL schema of --store (serve and process also do at start)."""
    from trackhouse.backends import migrate as run

    if not store_url:
        raise click.UsageError("migrate needs --store (or TRACKHOUSE_STORE)")
    partitions = run(_where(Path("."), store_url))
    click.echo(f"schema up to date; the log has {partitions} partitions")


def _announce(first, settings) -> None:
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"trackhouse {__version__} listening on {url}")
    click.echo(f"  data:        {settings.location.name}")
    click.echo(f"  public key:  {first.account_id}   (company_id for /client/* and Track)")
    if os.environ.get("TRACKHOUSE_PRIVATE_KEY"):
        click.echo("  private key: the one in TRACKHOUSE_PRIVATE_KEY")
    elif first.private_key:
        click.echo(f"  private key: {first.private_key}   (shown once; stored hashed)")
        control = "/admin/wait, /admin/reset, /admin/clock"
        click.echo(f"  admin key:   {first.admin_key}   (test control: {control})")
    else:
        click.echo("  private key: created on first start; `trackhouse keys create` makes another")
    limits = "off" if settings.rate_limits is None else "on"
    click.echo(f"  rate limits: {limits}")
    where = "in a second process" if settings.separate else "in this process"
    click.echo(f"  processing:  {where if settings.process else 'off (--no-process)'}")
    n = settings.max_backlog
    bound = f"writes get 503 past {n:,} unprocessed log entries" if n else "no bound"
    click.echo(f"  backlog:     {bound}")
    click.echo(f"  Python SDK:  KlaviyoAPI(private_key, test_host='{url}')")


@main.group()
def accounts() -> None:
    """Manage accounts (each is a tenant: its own events, profiles, metrics and keys)."""


@accounts.command("create")
@DATA_DIR
@STORE
@click.option("--public-key", help="The 6-character company id (default: a random one).")
def accounts_create(data_dir: Path, store_url: str | None, public_key: str | None) -> None:
    """Create an account with an all-scopes private key; print both (the key only now)."""
    from trackhouse.backends import open_accounts

    store = open_accounts(_where(data_dir, store_url))
    if public_key is not None and not (len(public_key) == 6 and public_key.isalnum()):
        raise click.ClickException("a public key is 6 letters or digits")
    if public_key and store.account_exists(public_key):
        raise click.ClickException(f"account {public_key!r} exists already")
    account_id = store.create_account(public_key)
    secret, _ = store.create_key(account_id, label="created with the account")
    click.echo(f"public key:  {account_id}")
    click.echo(f"private key: {secret}")


@accounts.command("list")
@DATA_DIR
@STORE
def accounts_list(data_dir: Path, store_url: str | None) -> None:
    """List accounts by public key."""
    from trackhouse.backends import open_accounts

    for account_id in open_accounts(_where(data_dir, store_url)).account_ids():
        click.echo(account_id)


@main.group()
def keys() -> None:
    """Manage private API keys (stored hashed)."""


@keys.command("create")
@DATA_DIR
@STORE
@click.option("--account", help="Public key of the account (default: the first account).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice((*ALL_SCOPES, ADMIN_SCOPE)),
    help="Repeat for each scope; default: all scopes.",
)
@click.option("--label", default="", help="A note to recognise the key by.")
def keys_create(
    data_dir: Path, store_url: str | None, account: str | None, scopes: tuple[str, ...], label: str
) -> None:
    """Create a private key and print it (it is shown only this once)."""
    from trackhouse.backends import open_accounts

    store = open_accounts(_where(data_dir, store_url))
    account_id = account or next(iter(store.account_ids()), None) or store.create_account()
    if not store.account_exists(account_id):
        raise click.ClickException(f"no account {account_id!r}")
    secret, key = store.create_key(account_id, frozenset(scopes) if scopes else None, label)
    click.echo(secret)
    click.echo(
        f"id {key.id}, account {account_id}, scopes {' '.join(sorted(key.scopes))}", err=True
    )


@keys.command("list")
@DATA_DIR
@STORE
def keys_list(data_dir: Path, store_url: str | None) -> None:
    """List keys (id, account, prefix, scopes, state); never the keys themselves."""
    from trackhouse.backends import open_accounts

    for key in open_accounts(_where(data_dir, store_url)).list_keys():
        state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
        click.echo(
            f"{key.id}  {key.account_id}  {key.prefix}…  {state}  {' '.join(sorted(key.scopes))}"
            + (f"  ({key.label})" if key.label else "")
        )


@keys.command("revoke")
@DATA_DIR
@STORE
@click.argument("key_id")
def keys_revoke(data_dir: Path, store_url: str | None, key_id: str) -> None:
    """Revoke a key by its id (see `keys list`)."""
    from trackhouse.backends import open_accounts

    if not open_accounts(_where(data_dir, store_url)).revoke_key(key_id):
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
