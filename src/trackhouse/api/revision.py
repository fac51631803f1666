"""The `revision` header and every per-revision rule, in one place (design.md, revision table).

A request's rules are looked up once, from its `revision` header, and passed to the parsers
as a `RevisionRules` value; nothing else in trackhouse compares revision dates.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from trackhouse.api.errors import APIError

# The new API's first revision: an older date names nothing Klaviyo ever served (400).
FIRST_REVISION = date(2022, 10, 17)
OLDEST_SERVED = date(2023, 1, 24)
# YYYY-MM-DD[.suffix]; Klaviyo's suffixes are short words ("pre"). The header is copied into
# every log entry of the request, so its length is bounded before anything else looks at it.
MAX_SUFFIX = 20
MAX_HEADER = 10 + 1 + MAX_SUFFIX
_FORMAT = re.compile(
    rf"^(\d{{4}})-(\d{{2}})-(\d{{2}})(?:\.([A-Za-z0-9_-]{{1,{MAX_SUFFIX}}}))?$", re.ASCII
)
_FORMAT_TEXT = f"format: YYYY-MM-DD[.suffix], a suffix of at most {MAX_SUFFIX} letters"


@dataclass(frozen=True, slots=True)
class RevisionRules:
    revision: str
    # 2023-07-15 "relationships standardization": metric and profile become JSON:API
    # sub-documents; before, `profile` is a flat object of `$`-fields and `metric` is flat.
    jsonapi_relationships: bool
    # 2024-02-15: `value_currency`; create-event profile `meta` moves inside `attributes`.
    # From 2026-10-15 the official SDKs (klaviyo-api 25 on PyPI) send it beside them, as bulk
    # does, while the newest spec we have (2026-07-15) has it inside: we take either.
    value_currency: bool
    profile_meta_places: tuple[str, ...]
    # 2025-01-15: a unique_id repeated for one profile+metric in a bulk request fails it whole.
    bulk_repeated_unique_id_fails: bool
    # 2025-04-15: 400 event properties (300 before).
    max_event_properties: int
    # 2026-04-15 (branch additions): `backfill` and `meta.patch_identifiers`.
    backfill: bool
    patch_identifiers: bool
    # 2026-07-15: event time must be after 1990 (after 2000 before).
    min_event_year: int
    # Before 2023-07-15 an account could have at most 200 metrics.
    metric_cap: int | None


def rules_for(day: date, label: str) -> RevisionRules:
    return RevisionRules(
        revision=label,
        jsonapi_relationships=day >= date(2023, 7, 15),
        value_currency=day >= date(2024, 2, 15),
        profile_meta_places=("beside",)
        if day < date(2024, 2, 15)
        else ("inside",)
        if day < date(2026, 10, 15)
        else ("inside", "beside"),
        bulk_repeated_unique_id_fails=day >= date(2025, 1, 15),
        max_event_properties=400 if day >= date(2025, 4, 15) else 300,
        backfill=day >= date(2026, 4, 15),
        patch_identifiers=day >= date(2026, 4, 15),
        min_event_year=1990 if day >= date(2026, 7, 15) else 2000,
        metric_cap=None if day >= date(2023, 7, 15) else 200,
    )


# When each endpoint first appeared; an older revision gets Klaviyo's 404 for it.
BULK_CREATE_JOBS_SINCE = date(2024, 5, 15)
CLIENT_BULK_CREATE_SINCE = date(2023, 7, 15)


def parse_revision(
    header: str | None, fall_forward_opt_out: bool = False, today: date | None = None
) -> tuple[date, RevisionRules]:
    """Validate a `revision` header and return its date and rules (or raise the API error)."""
    if header is not None and len(header) > MAX_HEADER + 8:  # (+ surrounding spaces)
        # Refused before the cache below, which would otherwise keep such headers.
        raise _malformed(header)
    return _parse_revision(header, fall_forward_opt_out, today or datetime.now(UTC).date())


def _malformed(header: str) -> APIError:
    shown = header[:40] + ("…" if len(header) > 40 else "")
    return APIError(
        400, "invalid", f"Invalid revision '{shown}' ({_FORMAT_TEXT}).", parameter="revision"
    )


# Clients send the same few headers over and over: remember the answers (errors are raised
# afresh each time, lru_cache keeps only returns). Keyed by day, so "future" moves on.
@functools.lru_cache(maxsize=256)
def _parse_revision(
    header: str | None, fall_forward_opt_out: bool, today: date
) -> tuple[date, RevisionRules]:
    if header is None or not header.strip():
        raise APIError(
            400, "invalid", f"The 'revision' header is required ({_FORMAT_TEXT}).",
            parameter="revision",
        )  # fmt: skip
    header = header.strip()
    match = _FORMAT.match(header)
    try:
        if not match:
            raise ValueError
        day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise _malformed(header) from None
    if day > today:
        raise APIError(
            404, "not_found", "Unable to specify a future revision date.", parameter="revision"
        )
    if day < FIRST_REVISION:
        raise APIError(
            400,
            "invalid",
            f"Revision {header} is before the earliest available revision "
            f"({FIRST_REVISION.isoformat()}).",
            parameter="revision",
        )
    if day < OLDEST_SERVED:
        # Klaviyo serves a retired revision as the oldest one still served (fall-forward)
        # unless the client opts out, which gets 410.
        if fall_forward_opt_out:
            raise APIError(
                410,
                "gone",
                f"Revision {header} is retired; the oldest revision served is "
                f"{OLDEST_SERVED.isoformat()}.",
                parameter="revision",
            )
        day = OLDEST_SERVED
    return day, rules_for(day, header)


def require_since(day: date, since: date) -> None:
    """404 as Klaviyo answers for an endpoint that does not exist at the request's revision."""
    if day < since:
        raise APIError(
            404,
            "not_found",
            "No valid revisions found for method, please check our documentation "
            f"(this endpoint exists from revision {since.isoformat()}).",
            parameter="revision",
        )
