"""The embedded log: `LogBackend` over SQLite, with group commit.

Appends are serialized through one writer thread. It takes every entry that is waiting, commits
them in one transaction with one signed checkpoint covering them all, then wakes their
publishers. While it waits for the disk, later publishers queue up for the next batch, so
concurrent publishers share fsyncs and still get distinct, dense indices. An append returns only
after its transaction committed. Its inclusion proof needs only the nodes the batch completed
and the tree's right edge before it, so it is computed from memory, not read back.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from tlog import proofs
from tlog.backend import AppendResult, InvalidRequest, LogError, NotFound, check_entry
from tlog.keys import LogSigner, load_or_create
from tlog.store import Store
from verifier.checkpoint import format_checkpoint
from verifier.logentry import ConsistencyProof, InclusionProof
from verifier.merkle import EMPTY_ROOT, leaf_hash

MAX_BATCH = 1024


@dataclass(frozen=True)
class _Batch:
    """One commit, as its publishers see it: where it starts, the checkpoint, and the nodes
    (right edge before the batch + everything it completed) their inclusion proofs are made of."""

    start: int
    size: int
    note: str
    nodes: dict[proofs.NodeID, bytes]


@dataclass
class _Pending:
    data: bytes
    done: threading.Event = field(default_factory=threading.Event)
    index: int = -1
    batch: _Batch | None = None
    error: BaseException | None = None


class SQLiteLog:
    """An append-only RFC 9162 log in one SQLite file, signing C2SP checkpoints with its key."""

    def __init__(self, db_path: str | os.PathLike[str], *, origin: str | None = None,
                 signer: LogSigner | None = None) -> None:
        self._store = Store(db_path)  # first: no key is made beside a file that is no log
        try:
            self.signer = signer or load_or_create(db_path, origin)
            self._open()
        except BaseException:
            self._store.close()
            raise
        self._write_lock = threading.Lock()   # held by whoever commits: the writer or append_many
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="tlog-writer", daemon=True)
        self._writer.start()

    def _open(self) -> None:
        stored_origin = self._store.meta("origin")
        if stored_origin is None:
            self._store.init(self.signer.name, self._sign(0, EMPTY_ROOT))
        elif stored_origin != self.signer.name:
            raise LogError(f"{self._store.path} holds log {stored_origin!r} but the key beside it is for "
                           f"{self.signer.name!r}")
        latest = self._store.latest_checkpoint()
        assert latest is not None  # init wrote one
        size, self._note = latest
        if self._store.entry_count() != size:
            raise LogError(f"{self._store.path}: {self._store.entry_count()} entries but the latest checkpoint "
                           f"covers {size}; run `aaudit log audit --db {self._store.path}`")
        try:
            self._range = proofs.CompactRange.load(size, self._store.nodes)
        except LookupError as exc:
            raise LogError(f"{self._store.path}: {exc}; run `aaudit log audit`") from None

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def size(self) -> int:
        return self._range.size

    def _sign(self, size: int, root: bytes) -> str:
        return self.signer.sign_note(format_checkpoint(self.signer.name, size, root))

    # -- writes ------------------------------------------------------------------------------
    def append(self, entry: bytes) -> AppendResult:
        check_entry(entry)
        mine = _Pending(entry)
        with self._close_lock:  # nothing may be queued behind the writer's stop sign
            if self._closed:
                raise LogError("the log is closed")
            self._queue.put(mine)
        mine.done.wait()
        if mine.error is not None:  # shared by the whole batch: each caller raises its own copy
            raise LogError(f"append failed: {mine.error}") from mine.error
        assert mine.batch is not None
        return self._result(mine.index, mine.batch)

    def _result(self, index: int, batch: _Batch) -> AppendResult:
        def fetch(ids: Sequence[proofs.NodeID]) -> dict[proofs.NodeID, bytes]:
            return {n: batch.nodes[n] for n in ids if n in batch.nodes}

        hashes = proofs.range_hashes(proofs.inclusion_ranges(index, batch.size), fetch)
        return AppendResult(index, batch.note, InclusionProof(index, batch.size, tuple(hashes)))

    def _write_loop(self) -> None:
        """The writer thread: commit whatever is waiting, as one batch, until the stop sign (None)."""
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                with self._write_lock:
                    committed = self._commit([p.data for p in batch])
            except BaseException as exc:
                for p in batch:
                    p.error = exc
            else:
                for i, p in enumerate(batch):
                    p.index, p.batch = committed.start + i, committed
            for p in batch:
                p.done.set()
            if stop:
                return

    def append_many(self, entries: Sequence[bytes]) -> tuple[int, str]:
        """Append entries in one transaction (bulk import, benchmarks): (first index, checkpoint)."""
        for e in entries:
            check_entry(e)
        if self._closed:
            raise LogError("the log is closed")
        with self._write_lock:
            committed = self._commit(entries)
        return committed.start, committed.note

    def _commit(self, entries: Sequence[bytes]) -> _Batch:
        """Caller holds the write lock. The in-memory edge changes only after the commit."""
        edge = dict(self._range.nodes)
        grown = self._range.copy()
        made = grown.extend(leaf_hash(e) for e in entries)
        note = self._sign(grown.size, grown.root())
        self._store.write_batch(self._range.size, entries, made, grown.size, note)
        self._range, self._note = grown, note
        return _Batch(grown.size - len(entries), grown.size, note, edge | dict(made))

    # -- reads -------------------------------------------------------------------------------
    def checkpoint(self) -> str:
        return self._note

    def entry(self, index: int) -> bytes:
        size = self.size
        if not 0 <= index < size:
            raise NotFound(f"no entry {index}: the log has {size} entries")
        data = self._store.entry(index)
        if data is None:
            raise LogError(f"entry {index} is missing from the database; run `aaudit log audit`")
        return data

    def _tree_size(self, tree_size: int | None) -> int:
        size = self.size
        if tree_size is None:
            return size
        if not 0 <= tree_size <= size:
            raise NotFound(f"tree size {tree_size} is beyond the log's size {size}")
        return tree_size

    def _hashes(self, ranges: list[proofs.Range]) -> tuple[bytes, ...]:
        try:
            return tuple(proofs.range_hashes(ranges, self._store.nodes))
        except LookupError as exc:
            raise LogError(f"{exc}; run `aaudit log audit`") from None

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> tuple[InclusionProof, str | None]:
        size = self._tree_size(tree_size)
        if not 0 <= index < size:
            raise NotFound(f"no entry {index} in a tree of size {size}")
        proof = InclusionProof(index, size, self._hashes(proofs.inclusion_ranges(index, size)))
        return proof, self._store.checkpoint_at(size)

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        size2 = self._tree_size(second)
        if first > self.size:
            raise NotFound(f"the log has only {self.size} entries, fewer than the {first} asked for: if a witness "
                           f"saw a checkpoint of size {first} from this log, the log has dropped history")
        if not 0 <= first <= size2:
            raise InvalidRequest(f"no consistency proof from size {first} to the smaller size {size2}")
        return ConsistencyProof(first, size2, self._hashes(proofs.consistency_ranges(first, size2)))

    def close(self) -> None:
        """Finish the appends already queued, then close the database."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
        with self._write_lock:
            self._store.close()

    def __enter__(self) -> "SQLiteLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
