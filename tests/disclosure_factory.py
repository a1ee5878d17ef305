"""Genuine disclosures (docs/RECEIPTS.md, step F) made in-process, without a gateway, for verifier tests.

Everything is real: a sim-attested audit bundle logged in a real SQLite transparency log, serving
evidence from the sim attester binding a gateway's fresh keys, receipts and batches signed by that
gateway key, RFC 9162 batch proofs, and the batches logged in the same log. A test may change a
receipt's predicate before it is signed (`edit_receipt`), so a disclosure can carry, *signed by the
attested gateway*, what no honest gateway would write.

The gateway boot below issued five receipts: sequences 2, 3 and 5 are the disclosed conversation
(3 is a stream), 1 and 4 belong to other users. Batches: 1-3 and 4-5. Log: the bundle at index 0,
batch 1 at index 1, batch 2 at index 2.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.tee.sim import SimAttester
from tests.bundle_factory import CODE_IDENTITY, SUITE, Made, make_bundle
from tlog.log import SQLiteLog
from tlog.proofs import inclusion_ranges
from tlog.publish import publish_bundle, publish_entry
from verifier import dsse
from verifier import receipt as rc
from verifier.binding import serving_binding
from verifier.bundle import EnclaveKeys, HpkeKey, SigningKey, TlsKey
from verifier.merkle import leaf_hash, root_from_leaf_hashes
from verifier.models import canonical_json
from verifier.receipt import (
    AuditRef,
    BatchPredicate,
    BatchProof,
    Disclosure,
    Exchange,
    GatewayRef,
    ModelRef,
    Receipt,
    ReceiptBatch,
    ReceiptPredicate,
    ReceiptProof,
    RequestRef,
    ResponseRef,
    Sampling,
    ServingEvidence,
)

ORIGIN = "test.example/log"
MODEL_NAME = "audited-model"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
DISCLOSED = (2, 3, 5)          # the sequences of the disclosed exchanges
BATCHES = ((1, 3), (4, 2))     # (firstSequence, count)


@dataclass(frozen=True)
class Turn:
    """One exchange as the user had it: the request JSON and the answer the model gave."""

    path: str
    request: dict[str, Any]
    answer: str

    @property
    def stream(self) -> bool:
        return bool(self.request.get("stream", False))


def conversation() -> tuple[Turn, Turn, Turn]:
    """Three chat turns of one conversation; the second is streamed."""
    q1 = [{"role": "user", "content": "What is the capital of France?"}]
    a1 = "The capital of France is Paris."
    q2 = q1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "And of Italy?"}]
    a2 = "The capital of Italy is Rome."
    q3 = q2 + [{"role": "assistant", "content": a2},
               {"role": "user", "content": "Which of the two is further north?"}]
    return (
        Turn(CHAT, {"model": MODEL_NAME, "messages": q1, "temperature": 0, "max_completion_tokens": 32,
                    "seed": 7}, a1),
        Turn(CHAT, {"model": MODEL_NAME, "messages": q2, "temperature": 0, "top_p": 1, "stream": True,
                    "stop": "\n\n"}, a2),
        Turn(CHAT, {"model": MODEL_NAME, "messages": q3, "temperature": 0.5, "max_tokens": 16, "seed": 11,
                    "stop": ["###", "\n\n"]}, "Paris is further north than Rome."),
    )


def applied(turn: Turn, max_tokens: int = 64) -> Sampling:
    """The sampling parameters an honest gateway applies: the request's, defaults made explicit."""
    r = turn.request
    stop = r.get("stop", [])
    return Sampling(float(r.get("temperature", 1.0)), float(r.get("top_p", 1.0)),
                    int(r.get("max_completion_tokens", r.get("max_tokens", max_tokens))),
                    int(r.get("seed", 4242)), (stop,) if isinstance(stop, str) else tuple(stop))


def response_bytes(turn: Turn, tokens_per_chunk: int = 2) -> bytes:
    """The engine's answer as the gateway relayed it: OpenAI JSON, or SSE chunks through [DONE]."""
    chat = turn.path == CHAT
    base = {"id": "cmpl-" + os.urandom(6).hex(), "created": 1700000000, "model": MODEL_NAME}
    if not turn.stream:
        choice = ({"index": 0, "message": {"role": "assistant", "content": turn.answer}, "finish_reason": "stop"}
                  if chat else {"index": 0, "text": turn.answer, "finish_reason": "stop"})
        return json.dumps({**base, "object": "chat.completion" if chat else "text_completion",
                           "choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 7,
                                                          "total_tokens": 16}}).encode()
    words = turn.answer.split(" ")
    pieces = [" ".join(words[i:i + tokens_per_chunk]) + (" " if i + tokens_per_chunk < len(words) else "")
              for i in range(0, len(words), tokens_per_chunk)]
    obj = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for i, piece in enumerate(pieces + [None]):
        if chat:
            delta = {} if piece is None else {"content": piece, **({"role": "assistant"} if i == 0 else {})}
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if piece is None else None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": "stop" if piece is None else None}
        events.append(b"data: " + json.dumps({**base, "object": obj, "choices": [choice]}).encode() + b"\n\n")
    return b"".join(events) + b"data: [DONE]\n\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class MadeDisclosure:
    disclosure: dict[str, Any]
    audit: Made                    # the audit bundle (logged) and its parties
    gateway: Ed25519PrivateKey     # the attested receipt-signing key
    log_key: str                   # the log's C2SP verifier key
    db: Path                       # the SQLite log holding the bundle and the batches

    def policy_toml(self, **kw: Any) -> str:
        """The audit's policy (pins digests, measurement, log) plus the gateway's code identity."""
        kw.setdefault("log_key", self.log_key)
        kw["extra"] = f'code_identity = ["{CODE_IDENTITY}"]\n' + kw.get("extra", "")
        return self.audit.policy_toml(**kw)

    def write(self, folder: Path, disclosure: dict[str, Any] | None = None, **policy: Any) -> tuple[Path, Path]:
        d, p = folder / "disclosure.json", folder / "policy.toml"
        d.write_text(json.dumps(self.disclosure if disclosure is None else disclosure))
        p.write_text(self.policy_toml(**policy))
        return d, p


def make_disclosure(folder: Path, *, turns: tuple[Turn, ...] | None = None,
                    edit_receipt: Callable[[int, ReceiptPredicate], ReceiptPredicate] | None = None) -> MadeDisclosure:
    """A genuine disclosure of `turns` (default: `conversation()`), at sequences `DISCLOSED`.

    `edit_receipt(exchange number from 1, predicate)` may change a disclosed receipt before the
    gateway signs it. Fewer turns than three take the first sequences of `DISCLOSED`.
    """
    turns = conversation() if turns is None else turns
    audit = make_bundle()
    gateway = Ed25519PrivateKey.generate()
    gateway_pub = gateway.public_key().public_bytes_raw()
    hpke_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
    tls_pub = generate_private_key(SECP256R1()).public_key().public_bytes(Encoding.DER,
                                                                          PublicFormat.SubjectPublicKeyInfo)
    nonce = os.urandom(32)
    db = folder / "log.db"
    with SQLiteLog(db, origin=ORIGIN) as log:
        log_key = log.signer.verifier_key
        audit.bundle = publish_bundle(log, audit.bundle, log_key=log_key)
        entry = audit.bundle["logEntry"]
        payload = dsse.Envelope.from_json(audit.bundle["envelope"]).payload
        audit_ref = AuditRef("sha256:" + hashlib.sha256(payload).hexdigest(), entry["origin"], entry["index"])
        model = ModelRef(MODEL_NAME, audit.digests["model"])
        ref = GatewayRef(gateway_pub, CODE_IDENTITY, "sim")

        # The gateway's chain of receipts: the disclosed turns and other users' in between.
        by_sequence = dict(zip(DISCLOSED, turns))
        envelopes: list[dsse.Envelope] = []
        exchanges: dict[int, tuple[bytes, bytes]] = {}
        conversation_digest = ""
        for seq in range(1, max(by_sequence) + 1):
            turn = by_sequence.get(seq, Turn(CHAT, {"model": MODEL_NAME, "messages": [
                {"role": "user", "content": f"someone else's question {seq}"}]}, "someone else's answer"))
            request = json.dumps(turn.request).encode()
            response = response_bytes(turn)
            mine = seq in by_sequence
            predicate = ReceiptPredicate(
                id=os.urandom(16).hex(), sequence=seq,
                previous=rc.payload_digest(envelopes[-1]) if envelopes else "", time=_now(), gateway=ref,
                request=RequestRef("POST", turn.path, hashlib.sha256(request).hexdigest()),
                response=ResponseRef(200, hashlib.sha256(response).hexdigest(), turn.stream),
                sampling=applied(turn), conversation=conversation_digest if mine else "", model=model,
                audit=audit_ref)
            if mine and edit_receipt is not None:
                predicate = edit_receipt(DISCLOSED.index(seq) + 1, predicate)
            envelope = rc.sign(gateway, Receipt.build(predicate))
            envelopes.append(envelope)
            if mine:
                exchanges[seq] = (request, response)
                conversation_digest = rc.payload_digest(envelope)

        # Batches of the boot, each signed and logged.
        proofs: dict[int, BatchProof] = {}
        previous_batch = ""
        for first, count in BATCHES:
            if first > len(envelopes):
                break
            count = min(count, len(envelopes) - first + 1)
            leaves = [leaf_hash(rc.leaf(rc.payload_digest(e))) for e in envelopes[first - 1:first - 1 + count]]
            batch = ReceiptBatch.build(root_from_leaf_hashes(leaves), BatchPredicate(
                ref, first, count, previous_batch, _now(), audit_ref))
            batch_env = rc.sign(gateway, batch)
            previous_batch = rc.payload_digest(batch_env)
            log_entry = publish_entry(log, rc.batch_log_entry_bytes(batch_env), log_key=log_key)
            for i in range(count):
                path = tuple(root_from_leaf_hashes(leaves[lo:hi]) for lo, hi in inclusion_ranges(i, count))
                proofs[first + i] = BatchProof(batch_env, i, path, log_entry)

    serving = ServingEvidence(
        nonce=nonce.hex(),
        evidence=SimAttester(CODE_IDENTITY).attest(serving_binding(gateway_pub, SUITE, hpke_pub, tls_pub, nonce)),
        gateway=EnclaveKeys(SigningKey("ed25519", gateway_pub), HpkeKey(SUITE, hpke_pub), TlsKey(tls_pub)),
        code_identity=CODE_IDENTITY, platform="sim", serving_id=os.urandom(16).hex(), state="serving",
        model=model, audit=audit_ref)
    disclosure = Disclosure(
        exchanges=tuple(Exchange(req, resp, ReceiptProof(rc.parse_receipt(envelopes[seq - 1]).predicate.id,
                                                         envelopes[seq - 1], "logged", proofs[seq]))
                        for seq, (req, resp) in exchanges.items()),
        serving=serving, bundle=audit.bundle)
    return MadeDisclosure(disclosure.to_json(), audit, gateway, log_key, db)


def resign(made: MadeDisclosure, envelope: dict[str, Any], edit: Callable[[dict[str, Any]], dict[str, Any]],
           key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """A DSSE envelope (JSON) whose statement `edit` changed, signed again by `key` (default: the
    genuine gateway key): what a gateway that lies, or a forger with another key, would produce."""
    env = dsse.Envelope.from_json(envelope)
    statement = edit(json.loads(env.payload))
    return dsse.sign(key or made.gateway, env.payload_type, canonical_json(statement)).to_json()

