"""Processing: log entries become profiles, metrics, events and outcomes, exactly once.

`processor` runs the loop and the transaction; `identity` decides which profile a submission
is about; `profiles` merges what it says into that profile; `child` runs a processor in a
process of its own for `serve`.
"""

from typing import Protocol


class Settable(Protocol):
    def set(self) -> None: ...


class ProcessorSignals(Protocol):
    """What the API process sets of a processor's: a Processor in its own process, or one in
    another (`child.ProcessorProcess`)."""

    @property
    def wake(self) -> Settable:
        """Entries wait, or something changed that processing acts on."""

    @property
    def hurry(self) -> Settable:
        """Someone waits for processing: skip the linger."""

    @property
    def deliveries_wake(self) -> Settable:
        """A webhook delivery may be due."""

    @property
    def last_error(self) -> str | None:
        """Storage trouble being retried, if known here."""
