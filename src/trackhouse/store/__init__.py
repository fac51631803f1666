"""Stored state, behind one interface (`base.py`: what the API, the query layer and the
processor ask a store for, and the shapes it answers in) with a package per backend:
`sqlite/` (the embedded default) and `postgres/`. Accounts and API keys: `accounts.py`. What
every backend raises at its seam is here."""


class StoreUnavailable(Exception):
    """Storage trouble (disk full, locked, I/O, the server gone): nothing of the transaction
    was written, and the same work is to be tried again later — never turned into a
    rejection."""


class StoreConflict(StoreUnavailable):
    """Another writer got there first (an identifier claimed, a profile changed, a deadlock):
    the transaction was rolled back, and redoing it at once sees what the other one did."""


class ProcessingFenced(StoreUnavailable):
    """The partition's position moved under this processor: another worker owns it now, and
    this batch must not be applied (it would be applied twice)."""


class ProcessorRunning(Exception):
    """Another process is processing into this store (the embedded store has one processor)."""


class ResetElsewhere(Exception):
    """The embedded store is reset by the processor, which runs in another process."""
