"""Serving receipts (docs/RECEIPTS.md): one typed model per format, used by the gateway that builds
them and by the verifier that checks them.

A receipt is an in-toto Statement in a DSSE envelope, signed by the gateway's attested boot key, over
the exact request and response bytes, the sampling parameters as applied, the model digest, the
audit it serves under and its place in the gateway's chain. Receipts are batched into RFC 9162
Merkle trees whose signed roots go to the transparency log.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import dsse, wire
from verifier.bundle import EnclaveKeys
from verifier.errors import ParseError
from verifier.inputs import load_json
from verifier.logentry import LogEntry
from verifier.models import Evidence, canonical_json
from verifier.statement import STATEMENT_TYPE, Subject

RECEIPT_PREDICATE = "https://attestable-audits.github.io/predicate/receipt/v1"
BATCH_PREDICATE = "https://attestable-audits.github.io/predicate/receipt-batch/v1"
SERVING_MEDIA_TYPE = "application/vnd.attestable-audits.serving-evidence.v1+json"
DISCLOSURE_MEDIA_TYPE = "application/vnd.attestable-audits.disclosure.v1+json"
RECEIPT_STATUSES = ("pending", "batched", "logged")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class GatewayRef:
    """Who signed: the gateway's boot key, the code it runs and its platform."""

    signing_key: bytes
    code_identity: str
    platform: str


@dataclass(frozen=True)
class AuditRef:
    """The audit a gateway serves under: its statement and where the bundle is logged."""

    statement_digest: str
    log_origin: str
    log_index: int


@dataclass(frozen=True)
class ModelRef:
    name: str
    digest: str


@dataclass(frozen=True)
class RequestRef:
    method: str
    path: str
    sha256: str


@dataclass(frozen=True)
class ResponseRef:
    status: int
    sha256: str
    stream: bool
    complete: bool = True   # False: a stream the client left before its end; sha256 covers the bytes sent


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters as the engine applied them (defaults made explicit)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ReceiptPredicate:
    id: str
    sequence: int
    previous: str          # receipt digest of sequence - 1; "" for sequence 1
    time: str
    gateway: GatewayRef
    request: RequestRef
    response: ResponseRef
    sampling: Sampling
    conversation: str      # receipt digest of the conversation's previous exchange; "" when it starts one
    model: ModelRef
    audit: AuditRef


@dataclass(frozen=True)
class Receipt:
    subject: tuple[Subject, ...]
    predicate: ReceiptPredicate
    type: str = field(default=STATEMENT_TYPE, metadata={"json": "_type"})
    predicate_type: str = RECEIPT_PREDICATE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def build(cls, predicate: ReceiptPredicate) -> "Receipt":
        return cls((Subject("response", {"sha256": predicate.response.sha256}),), predicate)


@dataclass(frozen=True)
class BatchPredicate:
    gateway: GatewayRef
    first_sequence: int
    count: int
    previous_batch: str    # digest of the previous batch's payload; "" for the boot's first batch
    time: str
    audit: AuditRef

    @property
    def last_sequence(self) -> int:
        return self.first_sequence + self.count - 1


@dataclass(frozen=True)
class ReceiptBatch:
    subject: tuple[Subject, ...]
    predicate: BatchPredicate
    type: str = field(default=STATEMENT_TYPE, metadata={"json": "_type"})
    predicate_type: str = BATCH_PREDICATE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def build(cls, root: bytes, predicate: BatchPredicate) -> "ReceiptBatch":
        return cls((Subject("receipts", {"sha256": root.hex()}),), predicate)

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.subject[0].digest["sha256"])


@dataclass(frozen=True)
class BatchProof:
    """A receipt's place in its signed batch, and (once published) the batch's log entry."""

    envelope: dsse.Envelope
    index: int
    inclusion_proof: tuple[bytes, ...]
    log_entry: LogEntry | None = field(default=None, metadata={"optional": True})


@dataclass(frozen=True)
class ReceiptProof:
    """What `GET /v1/receipts/{id}` answers."""

    id: str
    receipt: dsse.Envelope
    status: str
    batch: BatchProof | None = field(default=None, metadata={"optional": True})
    log_error: str | None = field(default=None, metadata={"optional": True})

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "receipt proof") -> "ReceiptProof":
        proof = wire.from_json(cls, obj, where)
        if proof.status not in RECEIPT_STATUSES:
            raise ParseError(f"{where}.status: {proof.status[:40]!r} is not one of {', '.join(RECEIPT_STATUSES)}")
        return proof


@dataclass(frozen=True)
class ServingEvidence:
    """`GET /v1/attestation?nonce=HEX`: evidence binding the gateway's keys to the caller's nonce."""

    nonce: str
    evidence: Evidence
    gateway: EnclaveKeys
    code_identity: str
    platform: str
    serving_id: str
    state: str
    model: ModelRef
    audit: AuditRef
    media_type: str = SERVING_MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "serving evidence") -> "ServingEvidence":
        if not isinstance(obj, dict) or obj.get("mediaType") != SERVING_MEDIA_TYPE:
            raise ParseError(f"{where}: mediaType is not {SERVING_MEDIA_TYPE}")
        ev = wire.from_json(cls, obj, where)
        try:
            nonce = bytes.fromhex(ev.nonce)
        except ValueError:
            nonce = b""
        if len(nonce) != 32:
            raise ParseError(f"{where}.nonce: expected 64 hex digits")
        if ev.gateway.signing_key.alg != "ed25519" or len(ev.gateway.signing_key.public) != 32:
            raise ParseError(f"{where}.gateway.signingKey must be a 32-byte ed25519 key")
        return ev

    @property
    def nonce_bytes(self) -> bytes:
        return bytes.fromhex(self.nonce)


@dataclass(frozen=True)
class Exchange:
    """One disclosed request and answer, byte for byte, with the receipt and its proofs."""

    request: bytes
    response: bytes
    proof: ReceiptProof


@dataclass(frozen=True)
class Disclosure:
    """What a user hands a regulator (step F)."""

    exchanges: tuple[Exchange, ...]
    serving: ServingEvidence
    bundle: dict[str, Any]          # the audit bundle as published, checked by verifier.bundle
    media_type: str = DISCLOSURE_MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "disclosure") -> "Disclosure":
        if not isinstance(obj, dict) or obj.get("mediaType") != DISCLOSURE_MEDIA_TYPE:
            raise ParseError(f"{where}: mediaType is not {DISCLOSURE_MEDIA_TYPE}")
        disclosure = wire.from_json(cls, obj, where)
        if not disclosure.exchanges:
            raise ParseError(f"{where}.exchanges: a disclosure holds at least one exchange")
        return disclosure


# --- building and parsing ------------------------------------------------------------------------
def sign(key: Ed25519PrivateKey, statement: Receipt | ReceiptBatch) -> dsse.Envelope:
    return dsse.sign(key, dsse.IN_TOTO_PAYLOAD_TYPE, canonical_json(statement.to_json()))


def payload_digest(envelope: dsse.Envelope) -> str:
    """"sha256:<hex>" of the signed payload: a receipt's digest (chain, batch leaves) or a batch's."""
    return "sha256:" + hashlib.sha256(envelope.payload).hexdigest()


def leaf(receipt_digest: str) -> bytes:
    """A batch leaf: the raw 32 bytes of a receipt digest."""
    return bytes.fromhex(receipt_digest.removeprefix("sha256:"))


def batch_log_entry_bytes(envelope: dsse.Envelope) -> bytes:
    """The bytes the transparency log stores for a batch."""
    return canonical_json(envelope.to_json())


def parse_receipt(envelope: dsse.Envelope, where: str = "receipt") -> Receipt:
    receipt = _statement(Receipt, RECEIPT_PREDICATE, envelope, where)
    p = receipt.predicate
    if len(receipt.subject) != 1 or receipt.subject[0].digest != {"sha256": p.response.sha256}:
        raise ParseError(f"{where}: the subject must be the response, with the predicate's response sha256")
    for name, value in (("request.sha256", p.request.sha256), ("response.sha256", p.response.sha256)):
        if not _HEX64.match(value):
            raise ParseError(f"{where}.predicate.{name}: expected 64 lowercase hex digits")
    for name, value in (("model.digest", p.model.digest), ("audit.statementDigest", p.audit.statement_digest)):
        if not _DIGEST.match(value):
            raise ParseError(f"{where}.predicate.{name}: expected sha256:<64 hex>")
    for name, value in (("previous", p.previous), ("conversation", p.conversation)):
        if value and not _DIGEST.match(value):
            raise ParseError(f"{where}.predicate.{name}: expected \"\" or sha256:<64 hex>")
    if p.sequence < 1 or (p.sequence == 1) != (p.previous == ""):
        raise ParseError(f"{where}.predicate: sequence {p.sequence} with previous {p.previous[:20]!r}: only "
                         "sequence 1 has no previous receipt")
    _time(p.time, f"{where}.predicate.time")
    return receipt


def parse_batch(envelope: dsse.Envelope, where: str = "batch") -> ReceiptBatch:
    batch = _statement(ReceiptBatch, BATCH_PREDICATE, envelope, where)
    digest = batch.subject[0].digest.get("sha256", "") if len(batch.subject) == 1 else ""
    if batch.subject[0].name != "receipts" or not _HEX64.match(digest):
        raise ParseError(f"{where}: expected one subject \"receipts\" with the sha256 Merkle root")
    if batch.predicate.first_sequence < 1 or batch.predicate.count < 1:
        raise ParseError(f"{where}.predicate: firstSequence and count must be at least 1")
    _time(batch.predicate.time, f"{where}.predicate.time")
    return batch


def _statement(cls: Any, predicate_type: str, envelope: dsse.Envelope, where: str) -> Any:
    if envelope.payload_type != dsse.IN_TOTO_PAYLOAD_TYPE:
        raise ParseError(f"{where}: payloadType is not {dsse.IN_TOTO_PAYLOAD_TYPE}")
    obj = load_json(envelope.payload, f"{where}: payload")
    if not isinstance(obj, dict) or obj.get("predicateType") != predicate_type or obj.get("_type") != STATEMENT_TYPE:
        raise ParseError(f"{where}: not an in-toto Statement v1 with predicateType {predicate_type}")
    if not obj.get("subject"):
        raise ParseError(f"{where}: no subject")
    return wire.from_json(cls, obj, where)


def _time(text: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{where}: {text[:40]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ParseError(f"{where}: no time zone")
    return when
