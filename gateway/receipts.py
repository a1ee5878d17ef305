"""The receipts of one gateway boot: the chain, the store users fetch proofs from, and the batches.

Every answer gets a receipt signed in sequence: each names the digest of the one before, so a
receipt left out of the log shows as a gap. Receipts are cut into batches (RFC 9162 trees over the
receipt digests, in sequence order) whose signed roots the publisher appends to the transparency
log. Signing is serial (the chain needs an order) and cheap; publishing runs in its own thread and
never holds up an answer: while the log is unreachable receipts stay "batched", are kept, and their
proofs name the last error.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import dsse
from verifier.errors import AAuditError
from verifier.logentry import LogEntry
from verifier.merkle import inclusion_path, leaf_hash, root_from_leaf_hashes
from verifier.receipt import (
    AuditRef,
    BatchPredicate,
    BatchProof,
    GatewayRef,
    ModelRef,
    Receipt,
    ReceiptBatch,
    ReceiptPredicate,
    ReceiptProof,
    RequestRef,
    ResponseRef,
    Sampling,
    batch_log_entry_bytes,
    leaf,
    payload_digest,
    sign,
)


class ReceiptStoreFull(AAuditError):
    """Too many receipts wait for the log: answering stops until it is reachable again."""


@dataclass
class _Batch:
    envelope: dsse.Envelope
    first: int
    leaf_hashes: list[bytes] = field(repr=False)
    log_entry: LogEntry | None = None

    @property
    def log_bytes(self) -> bytes:
        return batch_log_entry_bytes(self.envelope)


@dataclass
class _Issued:
    id: str
    envelope: dsse.Envelope
    digest: str
    sequence: int
    batch: _Batch | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ReceiptChain:
    """Issues receipts in sequence and keeps them, with their batches, for `GET /v1/receipts/{id}`.

    `keep` bounds the receipts held once logged (the oldest are forgotten first: users keep their own,
    `aaudit user chat` does); `max_unlogged` bounds those still waiting for the log, past which the
    gateway stops answering rather than answer without a receipt it can log. A held receipt takes
    about 2.2 KB, so the defaults bound the store at about 0.8 GB (an outage of 40 minutes at 100
    answers a second fills it).
    """

    def __init__(self, key: Ed25519PrivateKey, gateway: GatewayRef, model: ModelRef, audit: AuditRef, *,
                 keep: int = 100_000, max_unlogged: int = 250_000, clock: Callable[[], str] = _now) -> None:
        self._key, self.gateway, self.model, self.audit = key, gateway, model, audit
        self.keep, self.max_unlogged, self._clock = keep, max_unlogged, clock
        self._lock = threading.Lock()
        self.batch_ready = threading.Condition(self._lock)
        self._sequence = 0
        self._last = ""
        self._last_batch = ""
        self._by_id: dict[str, _Issued] = {}
        self._by_digest: dict[str, _Issued] = {}
        self._order: collections.deque[_Issued] = collections.deque()  # oldest first
        self._pending: list[_Issued] = []                               # issued, not yet in a batch
        self._unlogged: collections.deque[_Batch] = collections.deque()  # cut, not yet in the log
        self._continued: set[str] = set()                              # receipt digests a later exchange continued
        self._waiting = 0                                               # receipts not yet in the log
        self.log_error: str | None = None
        self.batch_max = 1024

    # --- issuing -------------------------------------------------------------------------------
    def issue(self, receipt_id: str, request: RequestRef, response: ResponseRef, sampling: Sampling,
              conversation: str) -> tuple[dsse.Envelope, str]:
        """Sign the next receipt of the chain; returns its envelope and digest."""
        with self._lock:
            if self._waiting >= self.max_unlogged:
                raise ReceiptStoreFull(f"{self.max_unlogged} receipts wait for the transparency log "
                                       f"({self.log_error or 'not yet published'}); retry later")
            self._sequence += 1
            predicate = ReceiptPredicate(receipt_id, self._sequence, self._last, self._clock(), self.gateway, request,
                                         response, sampling, conversation, self.model, self.audit)
            envelope = sign(self._key, Receipt.build(predicate))
            digest = payload_digest(envelope)
            issued = _Issued(receipt_id, envelope, digest, self._sequence)
            self._last = digest
            self._by_id[receipt_id] = issued
            self._by_digest[digest] = issued
            self._order.append(issued)
            self._pending.append(issued)
            self._waiting += 1
            if len(self._pending) >= self.batch_max:
                self.batch_ready.notify_all()
            return envelope, digest

    def has_room(self) -> bool:
        """Whether a receipt can be issued now: checked before the engine is asked, so no answer goes
        out that could not get a receipt."""
        with self._lock:
            return self._waiting < self.max_unlogged

    def continue_conversation(self, digest: str) -> str | None:
        """Claim `digest` (a receipt of this boot) as the previous exchange of a new one; None when it
        is unknown, "taken" when another exchange already continued it: a conversation cannot fork."""
        with self._lock:
            if digest not in self._by_digest:
                return None
            if digest in self._continued:
                return "taken"
            self._continued.add(digest)
            return digest

    def wait_for_batch(self, timeout: float, stop: threading.Event) -> None:
        """Return after `timeout`, or sooner when a full batch waits or `stop` is set."""
        with self.batch_ready:
            self.batch_ready.wait_for(lambda: stop.is_set() or len(self._pending) >= self.batch_max, timeout=timeout)

    def wake(self) -> None:
        with self.batch_ready:
            self.batch_ready.notify_all()

    # --- batches -------------------------------------------------------------------------------
    def cut_batch(self) -> _Batch | None:
        """Sign a batch over every receipt not yet in one (None when there are none)."""
        with self._lock:
            if not self._pending:
                return None
            members, self._pending = self._pending, []
            hashes = [leaf_hash(leaf(m.digest)) for m in members]
            predicate = BatchPredicate(self.gateway, members[0].sequence, len(members), self._last_batch,
                                       self._clock(), self.audit)
            envelope = sign(self._key, ReceiptBatch.build(root_from_leaf_hashes(hashes), predicate))
            self._last_batch = payload_digest(envelope)
            batch = _Batch(envelope, members[0].sequence, hashes)
            for m in members:
                m.batch = batch
            self._unlogged.append(batch)
            return batch

    def next_unlogged(self) -> _Batch | None:
        with self._lock:
            return self._unlogged[0] if self._unlogged else None

    def logged(self, batch: _Batch, entry: LogEntry) -> None:
        with self._lock:
            batch.log_entry = entry
            if self._unlogged and self._unlogged[0] is batch:
                self._unlogged.popleft()
                self._waiting -= len(batch.leaf_hashes)
            self.log_error = None
            self._forget_locked()

    def log_failed(self, why: str) -> None:
        with self._lock:
            self.log_error = why

    def _forget_locked(self) -> None:
        while len(self._order) > self.keep and self._order[0].batch is not None \
                and self._order[0].batch.log_entry is not None:
            old = self._order.popleft()
            del self._by_id[old.id]
            del self._by_digest[old.digest]
            self._continued.discard(old.digest)

    # --- proofs --------------------------------------------------------------------------------
    def proof(self, receipt_id: str) -> ReceiptProof | None:
        with self._lock:
            issued = self._by_id.get(receipt_id)
            if issued is None:
                return None
            batch, error = issued.batch, self.log_error
        if batch is None:
            return ReceiptProof(issued.id, issued.envelope, "pending")
        index = issued.sequence - batch.first
        bp = BatchProof(batch.envelope, index, tuple(inclusion_path(batch.leaf_hashes, index)), batch.log_entry)
        if batch.log_entry is None:
            return ReceiptProof(issued.id, issued.envelope, "batched", bp, error)
        return ReceiptProof(issued.id, issued.envelope, "logged", bp)


def publish_loop(chain: ReceiptChain, publish: Callable[[bytes], LogEntry], stop: threading.Event, *,
                 interval_s: float = 2.0, max_backoff_s: float = 30.0) -> None:
    """Cut a batch every `interval_s` (or as soon as `chain.batch_max` receipts wait) and append every
    unlogged batch to the log, oldest first; on failure record why and retry with backoff."""
    backoff = interval_s
    while not stop.is_set():
        chain.wait_for_batch(interval_s, stop)
        chain.cut_batch()
        failed = _publish_all(chain, publish)
        if failed:
            backoff = min(max_backoff_s, backoff * 2)
            stop.wait(backoff)
        else:
            backoff = interval_s
    chain.cut_batch()  # a last batch on the way out, published if the log answers
    _publish_all(chain, publish)


def _publish_all(chain: ReceiptChain, publish: Callable[[bytes], LogEntry]) -> bool:
    while (batch := chain.next_unlogged()) is not None:
        try:
            entry = publish(batch.log_bytes)
        except Exception as exc:  # noqa: BLE001 - any failure of the log must leave answering untouched
            chain.log_failed(f"{type(exc).__name__}: {exc}"[:300] + f" (at {time.strftime('%H:%M:%S')})")
            return True
        chain.logged(batch, entry)
    return False
