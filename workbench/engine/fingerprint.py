"""A dataset's content fingerprint: which data a run trained on, for the privacy ledger (store/ledger.py).

SHA-256 over the privacy unit and every normalised record (its messages, text, label and user id as
canonical JSON, one per line, in file order). It is taken of the whole loaded dataset, before the
validation split, so the same file with another split or seed is the same data. The file's name,
format and line numbers do not enter it: the same records as CSV or JSONL are the same data. The
column mapping does (it decides what the records are).

Never publish it: anyone holding two candidate datasets (with and without one person) could hash
both and tell which one was used. It stays in the local ledger; it is not in a run's summary, so
export never carries it.

The privacy unit is part of it. It is order-sensitive on purpose: a replay (``workbench runs replay``) must
see exactly the records the run saw, in the same order (store/ledger.py ``check_replay``).

Which runs' epsilons add up is decided by the *units* instead (``unit_identities``): every record's
identity by content (the canonical messages, text and label, as the validation split hashes it:
data/units.py) and its user id. The ledger keys these with a secret kept in the workbench home
(store/ledger_units.py), so a shuffled copy, a copy with one record edited and a user-level run on the
same people share units and count in one total.
"""

from __future__ import annotations

import hashlib
import json

from workbench.engine.data import Dataset, Record
from workbench.engine.data.units import _record_identity

VERSION = "workbench-dataset-fingerprint-v1"


def _canonical(r: Record) -> str:
    return json.dumps(
        {
            "messages": list(r.messages) if r.messages is not None else None,
            "text": r.text,
            "label": r.label,
            "user_id": r.user_id,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def dataset_fingerprint(ds: Dataset, *, privacy_unit: str) -> str:
    """64 hex digits naming the records of ``ds`` and the unit they are protected as ('example' or 'user').

    >>> from workbench.engine.data import load_dataset
    >>> len(dataset_fingerprint(load_dataset("demo"), privacy_unit="example"))
    64
    """
    if privacy_unit not in ("example", "user"):
        raise ValueError(f"privacy_unit must be 'example' or 'user'. Found {privacy_unit!r}.")
    h = hashlib.sha256(f"{VERSION}\nunit:{privacy_unit}\n".encode())
    for record in ds.records:
        h.update(_canonical(record).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def unit_identities(ds: Dataset) -> list[tuple[bytes, bytes | None]]:
    """Per record of ``ds``, in file order: (BLAKE2b-256 of its identity by content, of its user id or None).

    The content identity is the validation split's (messages, text, label; not the line, not the user), so
    the same example under another user, or at another line, is the same example. Unkeyed: these stay in
    memory; the ledger stores them only keyed with its secret (store/ledger_units.py).
    """

    def digest(kind: str, identity: str) -> bytes:
        return hashlib.blake2b(f"{kind}:{identity}".encode("utf-8"), digest_size=32).digest()

    return [
        (digest("example", _record_identity(r)), digest("user", r.user_id) if r.user_id is not None else None)
        for r in ds.records
    ]
