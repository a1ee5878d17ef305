"""`aaudit log audit`: re-derive the whole stored tree from the entries and compare.

One pass over the entries recomputes every leaf hash and every complete-subtree hash (checked
against the stored `nodes`, one ordered cursor per tree level) and the root at every stored
checkpoint size (checked against the checkpoint, whose signature is verified too). Any stored
row that disagrees with the entries, any gap, and any extra row is reported.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from tlog.keys import key_path, load_or_create
from tlog.proofs import CompactRange
from tlog.store import Store
from verifier.checkpoint import parse_verifier_key, verify_checkpoint
from verifier.errors import AAuditError, UnusableInput, VerificationError
from verifier.merkle import leaf_hash
from verifier.models import b64e


@dataclass(frozen=True)
class AuditReport:
    origin: str
    size: int
    root: bytes
    checkpoints: int
    nodes: int
    log_key: str

    def describe(self) -> str:
        return (f"log {self.origin}: {self.size} entries, {self.nodes} tree nodes and {self.checkpoints} signed "
                f"checkpoints re-derived and consistent; root {b64e(self.root)}; key {self.log_key}")


def audit(db_path: str | os.PathLike[str], log_key: str | None = None) -> AuditReport:
    """Raise VerificationError naming the first disagreement; the report when all agrees.

    Without `log_key` the key beside the database is used; pass the key verifiers trust to
    also catch a replaced key file.
    """
    if log_key is None:
        if not key_path(db_path).exists():
            raise UnusableInput(f"no log key beside {db_path}; pass the log's verifier key with --log-key")
        log_key = load_or_create(db_path).verifier_key
    verifier = parse_verifier_key(log_key)
    store = Store(db_path, readonly=True)
    try:
        return _audit(store, verifier.name, log_key)
    except sqlite3.Error as exc:  # a damaged file: what it holds cannot be vouched for
        raise VerificationError(f"the database cannot be read through: {exc}") from None
    finally:
        store.close()


def _audit(store: Store, name: str, log_key: str) -> AuditReport:
    origin = store.meta("origin")
    if origin != name:
        raise VerificationError(f"the database belongs to log {origin!r}, the key to {name!r}")
    levels: dict[int, Iterator[tuple[int, bytes]]] = {}
    checkpoints = store.iter_checkpoints()
    tree = CompactRange()
    next_cp = _next_checkpoint(checkpoints, log_key)
    n_checkpoints = n_nodes = 0

    def check_checkpoint() -> None:
        nonlocal next_cp, n_checkpoints
        while next_cp is not None and next_cp[0] == tree.size:
            size, root = next_cp
            if root != tree.root():
                raise VerificationError(f"checkpoint of size {size}: its root {b64e(root)} differs from the root "
                                        f"{b64e(tree.root())} recomputed from the entries")
            n_checkpoints += 1
            next_cp = _next_checkpoint(checkpoints, log_key)

    check_checkpoint()
    for index, data in store.iter_entries():
        if index != tree.size:
            raise VerificationError(f"entries are not contiguous: expected index {tree.size}, found {index}")
        for (level, i), h in tree.append(leaf_hash(bytes(data))):
            stored = next(levels.setdefault(level, store.iter_level(level)), None)
            what = f"entry {i}: its stored leaf hash" if level == 0 else f"tree node (level {level}, index {i})"
            if stored is None or stored[0] != i:
                raise VerificationError(f"{what} is missing from the database")
            if stored[1] != h:
                raise VerificationError(f"{what} differs from the hash recomputed from the entries "
                                        "(an entry or a stored hash was altered)")
            n_nodes += 1
        check_checkpoint()
    if next_cp is not None:
        raise VerificationError(f"a checkpoint of size {next_cp[0]} is stored, but only {tree.size} entries exist")
    if n_checkpoints == 0:
        raise VerificationError("the database holds no signed checkpoint")
    if store.node_count() != n_nodes:
        raise VerificationError(f"the database holds {store.node_count()} tree nodes, the entries make {n_nodes}: "
                                "extra rows were added")
    latest = store.latest_checkpoint()
    if latest is None or latest[0] != tree.size:
        raise VerificationError(f"the latest checkpoint does not cover all {tree.size} entries")
    return AuditReport(name, tree.size, tree.root(), n_checkpoints, n_nodes, log_key)


def _next_checkpoint(checkpoints: Iterator[tuple[int, str]], log_key: str) -> tuple[int, bytes] | None:
    row = next(checkpoints, None)
    if row is None:
        return None
    size, note = row
    try:
        cp = verify_checkpoint(note, log_key)
    except AAuditError as exc:
        raise VerificationError(f"checkpoint of size {size}: {exc}") from None
    if cp.size != size:
        raise VerificationError(f"checkpoint stored under size {size} says size {cp.size}")
    return size, cp.root
