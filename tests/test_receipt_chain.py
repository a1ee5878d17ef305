"""gateway/receipts.py: the chain, the batches, and publishing that survives a log outage.

In process, with a real SQLite log: every proof the chain hands out is checked with the verifier's
own functions, so builder and checker agree; a log that fails delays proofs and loses nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.receipts import ReceiptChain, ReceiptStoreFull, publish_loop
from tlog.log import SQLiteLog
from tlog.publish import publish_entry
from verifier import dsse
from verifier.checkpoint import verify_checkpoint, parse_verifier_key
from verifier.merkle import leaf_hash, verify_inclusion
from verifier.receipt import (
    AuditRef,
    GatewayRef,
    ModelRef,
    RequestRef,
    ResponseRef,
    Sampling,
    batch_log_entry_bytes,
    leaf,
    parse_batch,
    parse_receipt,
    payload_digest,
)


def _chain(**kwargs: object) -> tuple[ReceiptChain, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    gateway = GatewayRef(key.public_key().public_bytes_raw(), "ab" * 32, "sim")
    audit = AuditRef("sha256:" + "11" * 32, "test.example/log", 0)
    return ReceiptChain(key, gateway, ModelRef("m", "sha256:" + "22" * 32), audit, **kwargs), key


def _issue(chain: ReceiptChain, n: int, conversation: str = "") -> tuple[dsse.Envelope, str]:
    return chain.issue(f"{n:032x}", RequestRef("POST", "/v1/completions", f"{n:064x}"),
                       ResponseRef(200, f"{n + 1:064x}", False), Sampling(0.0, 1.0, 8, n, ()), conversation)


def test_receipts_form_a_signed_chain() -> None:
    chain, key = _chain()
    public = key.public_key().public_bytes_raw()
    issued = [_issue(chain, n) for n in range(1, 5)]
    previous = ""
    for n, (envelope, digest) in enumerate(issued, 1):
        assert dsse.verify(envelope, public)
        receipt = parse_receipt(envelope)
        assert (receipt.predicate.sequence, receipt.predicate.previous) == (n, previous)
        assert digest == payload_digest(envelope)
        previous = digest
    assert chain.continue_conversation("sha256:" + "00" * 32) is None
    assert chain.continue_conversation(issued[2][1]) == issued[2][1]
    assert chain.continue_conversation(issued[2][1]) == "taken"  # a conversation cannot fork


def test_batches_prove_each_receipt_at_its_sequence_and_reach_the_log(tmp_path: Path) -> None:
    chain, key = _chain()
    public = key.public_key().public_bytes_raw()
    first = [_issue(chain, n) for n in range(1, 4)]
    assert chain.proof(f"{1:032x}").status == "pending"
    batch_one = chain.cut_batch()
    second = [_issue(chain, n) for n in range(4, 9)]
    chain.cut_batch()
    with SQLiteLog(tmp_path / "log.db", origin="test.example/log") as log:
        log_key = log.signer.verifier_key
        stop = threading.Event()
        stop.set()  # one pass: publish what is cut, then return
        publish_loop(chain, lambda data: publish_entry(log, data, log_key=log_key), stop)
    previous_batch = ""
    for n, (envelope, digest) in enumerate(first + second, 1):
        proof = chain.proof(f"{n:032x}")
        assert proof.status == "logged" and proof.batch is not None and proof.batch.log_entry is not None
        assert dsse.verify(proof.batch.envelope, public)
        batch = parse_batch(proof.batch.envelope)
        assert proof.batch.index == n - batch.predicate.first_sequence < batch.predicate.count
        assert verify_inclusion(leaf_hash(leaf(digest)), proof.batch.index, batch.predicate.count,
                                proof.batch.inclusion_proof, batch.root)
        entry = proof.batch.log_entry
        checkpoint = verify_checkpoint(entry.checkpoint, parse_verifier_key(log_key))
        assert verify_inclusion(leaf_hash(batch_log_entry_bytes(proof.batch.envelope)), entry.index,
                                entry.tree_size, entry.inclusion_proof, checkpoint.root)
        if n in (1, 4):
            assert batch.predicate.previous_batch == previous_batch
            previous_batch = payload_digest(proof.batch.envelope)
    assert parse_batch(batch_one.envelope).predicate.count == 3


def test_a_log_outage_delays_proofs_loses_nothing_and_is_visible() -> None:
    chain, _ = _chain()
    _issue(chain, 1)
    chain.cut_batch()
    stop = threading.Event()
    stop.set()

    def down(data: bytes) -> object:
        raise ConnectionError("log unreachable")

    publish_loop(chain, down, stop)
    proof = chain.proof(f"{1:032x}")
    assert proof.status == "batched" and proof.batch is not None and proof.batch.log_entry is None
    assert "log unreachable" in (proof.log_error or "")
    _issue(chain, 2)  # answering goes on during the outage
    entries: list[bytes] = []

    def up(data: bytes) -> object:
        from verifier.logentry import LogEntry

        entries.append(data)
        return LogEntry("o", len(entries) - 1, len(entries), (), "note")

    publish_loop(chain, up, stop)
    assert [chain.proof(f"{n:032x}").status for n in (1, 2)] == ["logged", "logged"]
    assert len(entries) == 2 and chain.proof(f"{1:032x}").log_error is None


def test_unlogged_receipts_are_bounded_and_logged_ones_forgotten_oldest_first() -> None:
    chain, _ = _chain(keep=2, max_unlogged=3)
    for n in range(1, 4):
        _issue(chain, n)
    assert not chain.has_room()  # the gateway asks before it asks the engine
    with pytest.raises(ReceiptStoreFull, match="wait for the transparency log"):
        _issue(chain, 4)
    chain.cut_batch()
    batch = chain.next_unlogged()
    from verifier.logentry import LogEntry

    chain.logged(batch, LogEntry("o", 0, 1, (), "note"))
    assert chain.proof(f"{1:032x}") is None and chain.proof(f"{3:032x}") is not None
    assert chain.has_room()
    _issue(chain, 4)  # room again once the log caught up
