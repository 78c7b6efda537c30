"""Which people each ledger row trained on, and the dataset groups their overlap makes (store/ledger.py).

A row's units are the keyed hashes of its records' identities (engine/fingerprint.py ``unit_identities``:
an example by its content, a user by its user id), kept as one sorted blob per distinct set in
``ledger_unit_sets``. The key is a random secret of this workbench home (``ledger.key``, mode 0600): it
never leaves the machine, so a stored hash cannot be tested against a guessed record by anyone holding the
database alone. Runs on one set (a shuffled copy is the same set) share its fingerprint; runs whose sets
share any example or any user are one group (union-find), whose total composes every run in it.

A row stored before the ledger kept units has no set: it keeps its old group (its exact-records
fingerprint) and says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from workbench.errors import UserError

KEY_FILE = "ledger.key"
HASH_BYTES = 16  # per identity; 128 bits
PAIR = 2 * HASH_BYTES  # an example's hash, then its user's (zeros: no user)
NO_USER = bytes(HASH_BYTES)
SET_VERSION = b"workbench-unit-set-v2"
LEGACY_NOTE = (
    "stored before the ledger kept unit identities: grouped by its exact-records fingerprint only, so a "
    "shuffled or edited copy of its data, or a user-level run on its people, is not linked to it"
)


class UnitKeyError(UserError, ValueError):
    """The home's unit key is missing or does not match the hashes stored; one message."""


def unit_key(home: Path, *, check: bytes | None) -> bytes:
    """The home's secret (created on first use, mode 0600). ``check``: the check value stored with earlier
    sets (``key_check``), None when there are none; a key that does not give it is refused."""
    path = Path(home) / KEY_FILE
    if not path.exists():
        if check is not None:
            raise UnitKeyError(
                f"the privacy ledger's unit key {path} is missing: runs stored with it cannot be linked to new ones. "
                "Restore the file from a backup of this workbench home."
            )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise UnitKeyError(f"the privacy ledger's unit key {path} cannot be read ({err}).") from None
    if len(key) != 32 or (check is not None and not hmac.compare_digest(key_check(key), check)):
        raise UnitKeyError(f"the privacy ledger's unit key {path} is not the one its stored runs were hashed with.")
    return key


def key_check(key: bytes) -> bytes:
    """A value stored in the database that tells whether a key file is the one used (reveals nothing of it)."""
    return _keyed(b"workbench-unit-key-check", key)


def _keyed(data: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=HASH_BYTES).digest()


def keyed_units(identities: Iterable[tuple[bytes, bytes | None]], key: bytes) -> bytes:
    """The sorted blob of (example, user) keyed hash pairs of ``identities`` (one pair per record, duplicates kept)."""
    pairs = sorted(_keyed(ex, key) + (_keyed(user, key) if user is not None else NO_USER) for ex, user in identities)
    return b"".join(pairs)


def set_fingerprint(blob: bytes, key: bytes) -> str:
    """64 hex digits naming the set of units (order-free: a shuffled copy gives the same)."""
    return hashlib.blake2b(SET_VERSION + blob, key=key, digest_size=32).hexdigest()


def keyed_digest(records_digest: str, key: bytes) -> str:
    """The exact-records digest (engine/fingerprint.py, order-sensitive) as stored: keyed."""
    return hashlib.blake2b(records_digest.encode(), key=key, digest_size=32).hexdigest()


@dataclass(frozen=True)
class UnitSet:
    """One stored set: its records' (example, user) hash pairs."""

    fingerprint: str
    blob: bytes = field(repr=False)

    @cached_property
    def pairs(self) -> list[tuple[bytes, bytes]]:
        b = self.blob
        return [(b[i : i + HASH_BYTES], b[i + HASH_BYTES : i + PAIR]) for i in range(0, len(b), PAIR)]

    @cached_property
    def examples(self) -> frozenset[bytes]:
        return frozenset(ex for ex, _ in self.pairs)

    @cached_property
    def users(self) -> frozenset[bytes]:
        return frozenset(u for _, u in self.pairs if u != NO_USER)

    def most_examples_per_person(self, user_of: dict[bytes, set[bytes]]) -> int:
        """The most of this set's records one person holds: by the record's own user id, else by the users other
        sets give the same example (``user_of``); an example no set gives a user is its own person."""
        counts: Counter = Counter()
        for ex, user in self.pairs:
            counts.update({user} if user != NO_USER else user_of.get(ex, set()))
        return max([*counts.values(), 1])


def user_of(sets: Iterable[UnitSet]) -> dict[bytes, set[bytes]]:
    """Example hash -> the users any of ``sets`` gives it."""
    out: dict[bytes, set[bytes]] = {}
    for s in sets:
        for ex, user in s.pairs:
            if user != NO_USER:
                out.setdefault(ex, set()).add(user)
    return out


def groups(fingerprints: Sequence[str], sets: dict[str, UnitSet]) -> list[list[str]]:
    """``fingerprints`` (distinct) in groups: two are in one group when their sets share an example or a user,
    directly or through others. A fingerprint without a set is a group of its own."""
    parent = {f: f for f in fingerprints}

    def find(f: str) -> str:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    owner: dict[bytes, str] = {}
    for f in fingerprints:
        s = sets.get(f)
        if s is None:
            continue
        for unit in (*(b"e" + e for e in s.examples), *(b"u" + u for u in s.users)):
            other = owner.setdefault(unit, f)
            if other != f:
                parent[find(f)] = find(other)
    out: dict[str, list[str]] = {}
    for f in fingerprints:
        out.setdefault(find(f), []).append(f)
    return list(out.values())


def overlap_lines(named: Sequence[tuple[str, UnitSet]], *, limit: int = 10) -> list[str]:
    """'a.jsonl (240 examples, 125 users) and b.jsonl (240, 125) share 239 examples and 125 users', per pair of
    distinct sets that share units (at most ``limit`` lines)."""
    lines = []
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1 :]:
            ex, us = len(a.examples & b.examples), len(a.users & b.users)
            if ex or us:
                lines.append(
                    f"{name_a} ({len(a.examples)} examples, {len(a.users)} users) and {name_b} ({len(b.examples)}, "
                    f"{len(b.users)}) share {ex} examples and {us} users"
                )
    return lines[:limit] + ([f"... and {len(lines) - limit} more pairs"] if len(lines) > limit else [])
