"""Identity resolution: which profile a submission is about (design.md, Decisions).

A profile is found by the first identifier that matches, in the order `id`, `external_id`,
`email`, `phone_number`, `anonymous_id`, `_kx`; none matching creates one. Identifiers that no
other profile owns are added to it; one owned by another profile stays where it is and the
outcome records the conflict — never an implicit merge. Client (public-key) submissions add
identifiers but never change one the profile already has.

Identifiers are compared by their key (`trackhouse.identifiers`: a normalized, lower-cased
email, an E.164 phone number); the profile keeps the spelling it was first given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from trackhouse.identifiers import email_key, identifier_key
from trackhouse.ids import new_ulid
from trackhouse.model import ProfileChange
from trackhouse.process.profiles import MAX_EMAILS, Profile, decode_profile, encode_profile
from trackhouse.store.base import StoreWriter

Key = tuple[str, str, str]  # (account_id, kind, identifier key)

# Caches are dropped whole (at a batch boundary) once they hold about this much: an estimate
# from each cached profile's encoded size and a per-entry overhead (a Python object is several
# times its msgpack encoding), so that memory is bounded in bytes whatever the profiles hold.
MAX_CACHED_BYTES = 96 * 1024 * 1024
PROFILE_OVERHEAD = 600  # bytes per cached profile beside 4× its encoding
OWNER_BYTES = 250  # per cached identifier → profile entry


class ProfileBook:
    """The processor's access to profiles and identifiers inside its batch transaction.

    Profiles read or changed in a batch are kept in memory and written back once by
    `flush()`, with the batch's identifier claims and releases. With one processor (the
    embedded store) the caches stay true to the database as long as they are dropped after a
    rollback (`forget()`); with several (`store.shared`) they are dropped at every batch.
    """

    def __init__(self, store: StoreWriter) -> None:
        self.store = store
        self._owners: dict[Key, str] = {}
        self._profiles: dict[str, Profile] = {}
        self._dirty: set[str] = set()
        self._sizes: dict[str, int] = {}  # encoded size of each cached profile
        self._profile_bytes = 0
        self._unowned: set[Key] = set()  # looked up in this batch and found free
        # Identifier changes of the batch, written together by flush(): releases first (a
        # key may pass from one profile to another), then claims (StoreConflict if another
        # worker claimed one meanwhile).
        self._claims: dict[Key, str] = {}
        self._releases: dict[Key, str] = {}

    def prefetch(self, changes: list[tuple[str, ProfileChange]]) -> None:
        """Look up every identifier and profile a batch names in two round trips, not one or
        more per submission (what a store across the network needs). What is found free stays
        known free for this batch only: a claim another worker makes meanwhile makes this
        batch's own claim conflict, and the batch is redone."""
        keys: set[Key] = set()
        ids: set[tuple[str, str]] = set()
        for account_id, change in changes:
            if change.id:
                ids.add((account_id, change.id))
            for kind, value in change.identifiers().items():
                if kind != "id":
                    with contextlib.suppress(ValueError):
                        keys.add((account_id, kind, identifier_key(kind, value)))
            for email in change.add_emails:
                with contextlib.suppress(ValueError):
                    keys.add((account_id, "email", email_key(email)))
        wanted = [k for k in keys if k not in self._owners]
        owners = self.store.identifier_owners(wanted)
        self._owners.update(owners)
        self._unowned.update(k for k in wanted if k not in owners)
        ids.update((k[0], pid) for k, pid in owners.items())
        missing = [i for i in ids if i[1] not in self._profiles]
        for pid, doc in self.store.profile_docs(missing).items():
            self._profiles[pid] = decode_profile(doc)
            self._sized(pid, len(doc))

    def owner(self, account_id: str, kind: str, value: str) -> str | None:
        key = (account_id, kind, value)
        owner = self._owners.get(key)
        if owner is None and key in self._unowned:
            return None
        if owner is None:
            owner = self.store.identifier_owner(account_id, kind, value)
            if owner is not None:
                self._owners[key] = owner
        return owner

    def get(self, account_id: str, profile_id: str) -> Profile | None:
        profile = self._profiles.get(profile_id)
        if profile is None:
            doc = self.store.profile_doc(account_id, profile_id)
            if doc is None:
                return None
            profile = self._profiles[profile_id] = decode_profile(doc)
            self._sized(profile_id, len(doc))
        return profile if profile.account_id == account_id else None

    def create(self, account_id: str, now: str) -> Profile:
        profile = Profile(id=new_ulid(), account_id=account_id, created=now, updated=now)
        self._profiles[profile.id] = profile
        self._dirty.add(profile.id)
        return profile

    def touch(self, profile: Profile, now: str) -> None:
        profile.updated = now
        self._dirty.add(profile.id)

    def claim(self, profile: Profile, kind: str, value: str) -> None:
        key = (profile.account_id, kind, value)
        self._claims[key] = profile.id  # written by flush()
        self._owners[key] = profile.id
        self._unowned.discard(key)

    def release(self, profile: Profile, kind: str, value: str) -> None:
        key = (profile.account_id, kind, value)
        if self._claims.get(key) == profile.id:
            del self._claims[key]  # claimed in this batch: never written
        else:
            self._releases[key] = profile.id
        self._owners.pop(key, None)
        self._unowned.add(key)

    def flush(self) -> None:
        if self._releases:
            self.store.release_identifiers([(*k, pid) for k, pid in self._releases.items()])
            self._releases.clear()
        if self._claims:
            self.store.claim_identifiers([(*k, pid) for k, pid in self._claims.items()])
            self._claims.clear()
        rows = []
        for pid in self._dirty:
            p = self._profiles[pid]
            doc = encode_profile(p)
            self._sized(pid, len(doc))
            rows.append((p.id, p.account_id, doc, p.created, p.updated, p.last_event_time))
        self.store.save_profiles(rows)
        self._dirty.clear()
        if self.cached_bytes() > MAX_CACHED_BYTES:
            self.forget()

    def size(self, profile_id: str) -> int:
        """An upper bound of the profile's encoded size, as changed in this batch so far."""
        return self._sizes.get(profile_id, 0)

    def resized(self, profile_id: str, size: int) -> None:
        """The profile was changed; `size` bounds its encoding now."""
        self._sized(profile_id, size)

    def _sized(self, profile_id: str, size: int) -> None:
        self._profile_bytes += size - self._sizes.get(profile_id, 0)
        self._sizes[profile_id] = size

    def cached_bytes(self) -> int:
        """An estimate of the memory the caches hold."""
        profiles = len(self._profiles) * PROFILE_OVERHEAD + 4 * self._profile_bytes
        return profiles + len(self._owners) * OWNER_BYTES

    def forget(self) -> None:
        self._claims.clear()
        self._releases.clear()
        self._unowned.clear()
        self._owners.clear()
        self._profiles.clear()
        self._dirty.clear()
        self._sizes.clear()
        self._profile_bytes = 0


@dataclass
class Resolution:
    profile: Profile | None
    notes: list[str] = field(default_factory=list)  # identifier conflicts, for the outcome
    rejected: str | None = None


def resolve_profile(
    book: ProfileBook, account_id: str, change: ProfileChange, now: str
) -> Resolution:
    given = {kind: value for kind, value in change.identifiers().items() if kind != "id"}
    profile = None
    if change.id:
        profile = book.get(account_id, change.id)
    if profile is None:
        for kind, value in given.items():
            owner = book.owner(account_id, kind, identifier_key(kind, value))
            if owner is not None:
                profile = book.get(account_id, owner)
                break
    if profile is None:
        if not given:
            missing = (change.id or "")[:64]
            return Resolution(None, rejected=f"no profile with id {missing} exists")
        profile = book.create(account_id, now)
    else:
        book.touch(profile, now)
    resolution = Resolution(profile)
    for kind, value in given.items():
        _add_identifier(book, profile, kind, value, change.may_change_identifiers, resolution)
    _patch_emails(book, profile, change, resolution)
    return resolution


def _add_identifier(
    book: ProfileBook,
    profile: Profile,
    kind: str,
    value: str,
    may_change: bool,
    resolution: Resolution,
) -> None:
    key = identifier_key(kind, value)
    owner = book.owner(profile.account_id, kind, key)
    if owner == profile.id:
        if kind == "email" and "email" not in profile.identifiers:
            # A secondary address sent as the email: it becomes the primary one.
            found = [e for e in profile.secondary_emails if email_key(e) == key]
            if found:
                profile.identifiers["email"] = found[0]
                profile.secondary_emails.remove(found[0])
        return
    if owner is not None:
        resolution.notes.append(f"{kind} belongs to profile {owner}; it was not moved")
        return
    current = profile.identifiers.get(kind)
    if current is not None:
        if not may_change:
            resolution.notes.append(
                f"{kind} not changed: client endpoints cannot change an existing identifier"
            )
            return
        book.release(profile, kind, identifier_key(kind, current))
    book.claim(profile, kind, key)
    profile.identifiers[kind] = value


def _patch_emails(
    book: ProfileBook, profile: Profile, change: ProfileChange, resolution: Resolution
) -> None:
    """meta.patch_identifiers: secondary email addresses."""
    for email in change.add_emails:
        key = email_key(email)
        owner = book.owner(profile.account_id, "email", key)
        if owner == profile.id:
            continue
        if owner is not None:
            resolution.notes.append(f"email belongs to profile {owner}; it was not added")
        elif ("email" in profile.identifiers) + len(profile.secondary_emails) >= MAX_EMAILS:
            resolution.notes.append(f"a profile keeps at most {MAX_EMAILS} emails; one not added")
        else:
            book.claim(profile, "email", key)
            profile.secondary_emails.append(email)
    if change.remove_emails and not change.may_change_identifiers:
        resolution.notes.append("emails not removed: client endpoints cannot remove identifiers")
        return
    for email in change.remove_emails:
        key = email_key(email)
        for secondary in [e for e in profile.secondary_emails if email_key(e) == key]:
            book.release(profile, "email", key)
            profile.secondary_emails.remove(secondary)
