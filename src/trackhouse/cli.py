"""The `trackhouse` command: `serve`, and `keys create|list|revoke`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from trackhouse import __version__
from trackhouse.store.accounts import ALL_SCOPES

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("trackhouse-data"),
    show_default=True,
    envvar="TRACKHOUSE_DATA_DIR",
    help="Where the SQLite files live.",
)


@click.group()
@click.version_option(__version__, prog_name="trackhouse")
def main() -> None:
    """trackhouse: a self-hosted customer-event platform with Klaviyo-compatible APIs."""


@main.command()
@DATA_DIR
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TRACKHOUSE_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="TRACKHOUSE_PORT")
@click.option(
    "--no-rate-limits",
    is_flag=True,
    help="Turn Klaviyo's rate limits off (for load tests); same as TRACKHOUSE_RATE_LIMITS=off.",
)
def serve(data_dir: Path, host: str, port: int, no_rate_limits: bool) -> None:
    """Serve the API on the embedded default (SQLite under --data-dir)."""
    from trackhouse.server import Settings
    from trackhouse.server import serve as run

    settings = Settings(data_dir=data_dir, host=host, port=port)
    if no_rate_limits:
        settings.rate_limits = None
    run(settings, _announce)


def _announce(first, settings) -> None:
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"trackhouse {__version__} listening on {url}")
    click.echo(f"  data:        {settings.data_dir.resolve()}")
    click.echo(f"  public key:  {first.account_id}   (company_id for /client/* and Track)")
    if os.environ.get("TRACKHOUSE_PRIVATE_KEY"):
        click.echo("  private key: the one in TRACKHOUSE_PRIVATE_KEY")
    elif first.private_key:
        click.echo(f"  private key: {first.private_key}   (shown once; stored hashed)")
    else:
        click.echo("  private key: created on first start; `trackhouse keys create` makes another")
    limits = "off" if settings.rate_limits is None else "on"
    click.echo(f"  rate limits: {limits}")
    click.echo(f"  Python SDK:  KlaviyoAPI(private_key, test_host='{url}')")


@main.group()
def keys() -> None:
    """Manage private API keys (stored hashed)."""


@keys.command("create")
@DATA_DIR
@click.option("--account", help="Public key of the account (default: the first account).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(ALL_SCOPES),
    help="Repeat for each scope; default: all scopes.",
)
@click.option("--label", default="", help="A note to recognise the key by.")
def keys_create(data_dir: Path, account: str | None, scopes: tuple[str, ...], label: str) -> None:
    """Create a private key and print it (it is shown only this once)."""
    from trackhouse.server import open_accounts

    store = open_accounts(data_dir)
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
def keys_list(data_dir: Path) -> None:
    """List keys (id, account, prefix, scopes, state); never the keys themselves."""
    from trackhouse.server import open_accounts

    for key in open_accounts(data_dir).list_keys():
        state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
        click.echo(
            f"{key.id}  {key.account_id}  {key.prefix}…  {state}  {' '.join(sorted(key.scopes))}"
            + (f"  ({key.label})" if key.label else "")
        )


@keys.command("revoke")
@DATA_DIR
@click.argument("key_id")
def keys_revoke(data_dir: Path, key_id: str) -> None:
    """Revoke a key by its id (see `keys list`)."""
    from trackhouse.server import open_accounts

    if not open_accounts(data_dir).revoke_key(key_id):
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
