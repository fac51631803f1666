"""Stored state: accounts and their API keys (`accounts.py`), and the embedded store of events,
profiles, metrics and outcomes (`sqlite/`). What every backend raises at its seam is here."""


class StoreUnavailable(Exception):
    """Storage trouble (disk full, locked, I/O): nothing of the transaction was written, and the
    same work is to be tried again later — never turned into a rejection."""
