"""The canonical, revision-free model of what a request asked for.

Everything the API edge (`trackhouse.api`) accepts is translated into these structs before it
is written to the log; from here on no code asks which revision or endpoint a request used.
Where a revision's *semantics* differ (not just its wire shape), the rule travels as data on
the `Submission` (for example `metric_cap`).
"""

from __future__ import annotations

from typing import Any

import msgspec


class ProfileChange(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Who the submission is about, and what it says about them.

    Identifiers are listed in the order identity resolution tries them (design.md, Decisions).
    """

    id: str | None = None
    external_id: str | None = None
    email: str | None = None
    phone_number: str | None = None
    anonymous_id: str | None = None
    kx: str | None = None
    # first_name, last_name, organization, title, locale, image: only the keys the request set;
    # a None value clears the attribute.
    attributes: dict[str, Any] = {}
    location: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    # meta.patch_properties
    append: dict[str, Any] = {}
    unappend: dict[str, Any] = {}
    unset: list[str] = []
    # meta.patch_identifiers (secondary emails)
    add_emails: list[str] = []
    remove_emails: list[str] = []
    # Client (public-key) endpoints may add identifiers but never change existing ones.
    may_change_identifiers: bool = True

    def identifiers(self) -> dict[str, str]:
        """The identifiers given, in resolution order."""
        pairs = (
            ("id", self.id),
            ("external_id", self.external_id),
            ("email", self.email),
            ("phone_number", self.phone_number),
            ("anonymous_id", self.anonymous_id),
            ("_kx", self.kx),
        )
        return {name: value for name, value in pairs if value}


class Event(msgspec.Struct, omit_defaults=True, kw_only=True):
    metric: str
    service: str = "api"
    properties: dict[str, Any] = {}
    time: int  # unix seconds, already truncated to the second
    value: float | None = None
    value_currency: str | None = None
    # None means "the default": the event time to the second (dedup key, reference § 2.12).
    unique_id: str | None = None
    backfill: bool = False


class ListChange(msgspec.Struct, kw_only=True):
    """Add the submission's profile (named by id) to a list, or remove it."""

    list_id: str
    add: bool


class Submission(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One log entry: what one request said about one profile (and its events, if any).

    A single create is one submission; a bulk job is one per profile group; a legacy identify
    is a submission with no events.
    """

    account_id: str
    received_at: float
    source: str  # "api", "client", "track", "identify", "list"
    revision: str | None = None  # for tracing only; rules travel as the fields below
    profile: ProfileChange
    events: list[Event] = []
    # Revisions before 2023-07-15 and the legacy Track API cap an account at 200 metrics.
    metric_cap: int | None = None
    job_id: str | None = None
    # Its index among its bulk job's profile groups: rejected events are pointed at by it, since
    # with several writers a job's groups need not have consecutive log positions.
    job_group: int | None = None
    receipt_id: str | None = None
    # POST / DELETE /api/lists/{id}/relationships/profiles: one submission per profile, with
    # no events and nothing else about the profile.
    list_change: ListChange | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Submission)


def encode_submission(submission: Submission) -> bytes:
    return _encoder.encode(submission)


def decode_submission(blob: bytes) -> Submission:
    return _decoder.decode(blob)
