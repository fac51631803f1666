"""Stored state, behind one interface (`base.py`: what the API, the query layer and the
processor ask a store for, and the shapes it answers in) with a package per backend:
`sqlite/` (the embedded default) and `postgres/`; the read queries both run, built once
(`sql.py`). Accounts and API keys: `accounts.py`. What
every backend raises at its seam is here."""


class StoreUnavailable(Exception):
    """Storage trouble (disk full, locked, I/O, the server gone): nothing of the transaction
    was written, and the same work is to be tried again later — never turned into a
    rejection."""


class StoreConflict(StoreUnavailable):
    """Another writer got there first (an identifier claimed, a profile changed, a deadlock):
    the transaction was rolled back, and redoing it at once sees what the other one did."""


class ProcessingHeld(StoreConflict):
    """A reset elsewhere holds the partition at `ceiling`: the batch is redone up to it."""

    def __init__(self, ceiling: int) -> None:
        super().__init__(f"a reset holds the partition at position {ceiling}")
        self.ceiling = ceiling


class ProcessingFenced(StoreUnavailable):
    """The partition's position moved under this processor: another worker owns it now, and
    this batch must not be applied (it would be applied twice)."""


class ProcessorRunning(Exception):
    """Another process is processing into this store (the embedded store has one processor)."""


class ResetElsewhere(Exception):
    """The embedded store is reset by the processor, which runs in another process."""
