"""The signed report: an in-toto Statement in a DSSE envelope, and the bundle that carries it.

The enclave signs with its boot key and then takes one more attestation whose report data binds
the statement itself (verifier/binding.statement_binding), so the result stays bound to the
hardware even if the signing key were exposed later.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from enclave.keys import BootKeys
from enclave.session import JobInputs
from enclave.tee import CompositeAttester
from sealing.keywrap import DEFAULT_SUITE, seal_to
from verifier import dsse
from verifier.binding import key_binding, samples_info, statement_binding
from verifier.bundle import AuditBundle, EnclaveKeys, HpkeKey, SigningKey, TlsKey
from verifier.models import Evidence, canonical_json
from verifier.statement import (
    Approval,
    AuditPredicate,
    AuditStatement,
    EngineInfo,
    JudgeInfo,
    PlatformInfo,
    Runtime,
    SamplesDelivery,
    SamplesInfo,
    judge_subjects,
    model_subjects,
)


def encrypt_samples(run: Any, recipient_b64: str, keys: BootKeys) -> bytes:
    """The per-sample records as JSONL, HPKE-encrypted to the auditor's samples key; only the
    auditor can read them, and `aaudit auditor open-samples` checks them against the Merkle root."""
    plaintext = bytearray()  # appended in place: the JSONL is held once next to its ciphertext
    for record in run.records:
        plaintext += canonical_json(record)
        plaintext += b"\n"
    return seal_to(plaintext, base64.b64decode(recipient_b64), DEFAULT_SUITE,
                   samples_info(run.samples_root, keys.signing_public))


def build_statement(job: JobInputs, run: Any, *, platform: str, simulated: bool, code_identity: str,
                    nonce: bytes, samples_ciphertext: bytes | None = None) -> AuditStatement:
    """`run` is an `enclave.runner.AuditRun`."""
    delivery = None
    if samples_ciphertext is not None:
        delivery = SamplesDelivery(job.spec.samples_recipient, DEFAULT_SUITE,
                                   hashlib.sha256(samples_ciphertext).hexdigest())
    return AuditStatement(
        subject=model_subjects(job.model_listing) + judge_subjects(job.judges_listing),
        predicate=AuditPredicate(
            manifest=job.manifest,
            manifest_digest=job.manifest_digest,
            approvals=tuple(Approval(r, job.manifest.parties.key(r), sig) for r, sig in job.approvals.items()),
            platform=PlatformInfo(platform, simulated, code_identity),
            results=run.results,
            n_samples=run.n_samples,
            configs=run.configs,
            seeds=run.seeds,
            samples=SamplesInfo(run.samples_root, len(run.records), "RFC9162-SHA256", "RFC 8785 JSON", delivery),
            runtime=Runtime(run.versions, run.device, run.dtype, EngineInfo(**run.engine),
                            tuple(JudgeInfo(**j) for j in run.judges) or None),
            started_at=run.started_at,
            finished_at=run.finished_at,
            nonce=nonce.hex(),
            party_nonces=job.party_nonces,
        ),
    )


def build_bundle(statement: AuditStatement, *, keys: BootKeys, tls_public: bytes, attester: CompositeAttester,
                 nonce: bytes, prepare: bytes | None = None) -> bytes:
    """Sign the statement and collect the session and final evidence into a bundle (canonical JSON).
    `prepare`: the prepare bundle the manifest names (step B), carried along for the verifier."""
    envelope, enclave, session, final = sign_and_attest(statement.to_json(), keys=keys, tls_public=tls_public,
                                                        attester=attester, nonce=nonce)
    return canonical_json(AuditBundle(
        envelope=envelope,
        enclave=enclave,
        nonce=nonce.hex(),
        evidence=session,
        final_evidence=final,
        prepare=json.loads(prepare) if prepare is not None else None,
    ).to_json())


def sign_and_attest(statement_json: dict[str, Any], *, keys: BootKeys, tls_public: bytes,
                    attester: CompositeAttester, nonce: bytes) -> tuple[dsse.Envelope, EnclaveKeys, Evidence, Evidence]:
    """What every signed bundle holds (audit, prepare): the DSSE envelope over the statement, the
    enclave's keys, evidence binding those keys and the client's `nonce`, and final evidence whose
    report data binds the statement itself."""
    payload = canonical_json(statement_json)
    envelope = dsse.sign(keys.signing, dsse.IN_TOTO_PAYLOAD_TYPE, payload)
    hpke_pub = keys.hpke.public_bytes()
    session = attester.attest(key_binding(keys.signing_public, keys.hpke.suite, hpke_pub, tls_public, nonce))
    final = attester.attest(statement_binding(keys.signing_public, payload))
    enclave = EnclaveKeys(SigningKey("ed25519", keys.signing_public), HpkeKey(keys.hpke.suite, hpke_pub),
                          TlsKey(tls_public))
    return envelope, enclave, session, final
