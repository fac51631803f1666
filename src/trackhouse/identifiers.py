"""How identifiers compare: the one definition that identity resolution (`process/identity.py`),
the bulk rule on repeated `unique_id`s (`api/translate.py`) and the profile filters
(`api/profiles.py`) share, so that two spellings of one address are one person everywhere.

A profile keeps each identifier as the client sent it (that is its attribute); it is found by
the identifier's *key*:

- an email by the address email-validator normalizes it to (Unicode NFC, the domain in Unicode
  rather than IDNA `xn--` form), then lower-cased: emails match case-insensitively;
- a phone number by its E.164 form (writes store that form already; filters may spell it
  `+1 415 555 0100`);
- every other identifier as it is.
"""

from __future__ import annotations

import re
from functools import lru_cache

import email_validator
import phonenumbers


def identifier_key(kind: str, value: str) -> str:
    if kind == "email":
        return email_key(value)
    if kind == "phone_number":
        return phone_e164(value) or value
    return value


def email_key(email: str) -> str:
    email = email.strip()
    # Most addresses are plain ASCII, where normalizing changes nothing but the case: skip the
    # validator's cost (tens of µs) on the processor's hot path.
    if email.isascii() and "xn--" not in email.lower():
        return email.lower()
    return _normalized_email(email)


def _normalized_email(email: str) -> str:
    normalized, _ = validate_email(email)
    # An address the API would not accept compares as it is.
    return (normalized or email).lower()


@lru_cache(maxsize=65536)
def validate_email(email: str) -> tuple[str | None, str | None]:
    """(email-validator's normalized form, None), or (None, why it is not an address). The
    API's check and the identity key share this one call (and its cache)."""
    try:
        # test_environment: addresses at test domains are accepted, never silently dropped
        # (design.md, Decisions); deliverability is not ours to check.
        valid = email_validator.validate_email(
            email, check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError as exc:
        return None, str(exc)
    return valid.normalized, None


# E.164 with optional separators; no letters (phonenumbers would read "+1 800 FLOWERS").
_PHONE_CHARS = re.compile(r"^\+[0-9 ().-]+$", re.ASCII)


@lru_cache(maxsize=65536)
def phone_e164(phone: str) -> str | None:
    """The E.164 form of a valid phone number, or None."""
    phone = phone.strip()
    # E.164 has at most 15 digits; the length check keeps junk out of the parser and the cache.
    if len(phone) > 32 or not _PHONE_CHARS.match(phone):
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
