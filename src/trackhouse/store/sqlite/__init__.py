"""The embedded store on SQLite: one file of profiles, identifiers, metrics, events and outcomes
(`store.py`: its schema and the reads the API asks for), written only by the processor through
`SQLiteWriter` (`writer.py`: the named operations of a batch transaction); accounts and keys in
the same file (`accounts.py`)."""

from trackhouse.store.sqlite.store import (
    SCHEMA,
    ProcessingClaim,
    ProcessorRunning,
    SQLiteStore,
)
from trackhouse.store.sqlite.writer import SQLiteWriter

__all__ = ["SCHEMA", "ProcessingClaim", "ProcessorRunning", "SQLiteStore", "SQLiteWriter"]
