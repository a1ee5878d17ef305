"""Step B, attested preparation: the prepare statement, its bundle, and the chain M -> Mq -> R.

A prepare job (enclave/prepare.py) turns the provider's model M into Mq inside the enclave (a
dtype cast, or weight-only quantisation with torchao) and signs an in-toto Statement v1 whose
subjects are Mq's files (`model/<path>`, like an audit's) and whose predicate links digest(M),
digest(Mq), the method with its library and version, the provider's signed request (session, job,
nonce) and the platform. The prepare bundle carries it exactly as an audit bundle carries an audit
statement: session evidence binding the enclave keys and the client nonce, the DSSE envelope, and
final evidence binding this statement (`verifier.bundle.verify_signed`).

An audit of Mq names the prepare statement's digest in its run manifest (`prepared_from`), which
both parties approve, and the audit bundle carries the prepare bundle (`prepare`). `check_chain`
then verifies the prepare bundle under the same policy (platform, measurements, code identity),
that it is the one the manifest names, that its Mq is the audited model, and the policy's
`[prepare]` pins: the original digest and the accepted methods.

No torch here: the verifier knows the methods by name only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from verifier import dsse, wire
from verifier.binding import NONCE_LEN, prepare_message
from verifier.bundle import EnclaveKeys, check_signer_and_nonce, verify_signed
from verifier.errors import ParseError
from verifier.inputs import load_json, read_file
from verifier.manifest import SessionRef, verify_party_signature
from verifier.models import Evidence, Verdict, b64e, digest_of_listing
from verifier.platforms import allowlist
from verifier.policy import Policy
from verifier.statement import STATEMENT_TYPE, FileSubject, PlatformInfo, _check_subjects, _time

PREDICATE_TYPE = "https://attestable-audits.github.io/predicate/prepare/v1"
MEDIA_TYPE = "application/vnd.attestable-audits.prepare-bundle.v1+json"
# Every method a prepare job knows (enclave/prepare.py implements them; a test keeps both equal).
METHODS = ("cast:bfloat16", "cast:float16", "cast:float32", "int8-weight-only", "int4-weight-only")


@dataclass(frozen=True)
class ModelRef:
    """A model by the project's digest (sealing/digest.py), with its file count and total bytes."""

    digest: str
    files: int
    bytes: int


@dataclass(frozen=True)
class MethodInfo:
    """What turned M into Mq: the method's name, the library that did it (torchao, or transformers
    for a cast), its version, and the configuration as that library records it in Mq's config.json."""

    name: str
    library: str
    version: str
    config: dict[str, Any]


@dataclass(frozen=True)
class PrepareRequest:
    """The provider's signed request (verifier.binding.prepare_message): in this session, as this
    job, this method on the model with `original.digest`, Mq's data key wrapped to `recipient`."""

    session: SessionRef
    provider: bytes
    recipient_suite: str
    recipient: bytes
    signature: bytes


@dataclass(frozen=True)
class PreparePredicate:
    original: ModelRef
    prepared: ModelRef
    method: MethodInfo
    request: PrepareRequest
    enclave_key: bytes                  # the enclave boot's signing key
    platform: PlatformInfo
    versions: dict[str, str]            # torch, transformers, torchao, safetensors as run
    device: str
    started_at: str
    finished_at: str
    nonce: str                          # the request's client nonce, hex


@dataclass(frozen=True)
class PrepareStatement:
    """The in-toto Statement v1 of a prepare job. Built by enclave/prepare.py, parsed here."""

    subject: tuple[FileSubject, ...]
    predicate: PreparePredicate
    type: str = field(default=STATEMENT_TYPE, metadata={"json": "_type"})
    predicate_type: str = PREDICATE_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @property
    def subject_digest(self) -> str:
        return digest_of_listing([s.listing_entry() for s in self.subject])


@dataclass(frozen=True)
class PrepareBundle:
    """What the provider keeps after a prepare job, and what an audit bundle of Mq carries."""

    envelope: dsse.Envelope
    enclave: EnclaveKeys
    nonce: str
    evidence: Evidence
    final_evidence: Evidence
    media_type: str = MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "prepare bundle") -> "PrepareBundle":
        if not isinstance(obj, dict) or obj.get("mediaType") != MEDIA_TYPE:
            raise ParseError(f"{where}: mediaType is not {MEDIA_TYPE} (is this a prepare bundle from "
                             "`aaudit provider prepare`?)")
        return check_signer_and_nonce(wire.from_json(cls, obj, where), where)

    @property
    def statement_digest(self) -> str:
        """What a run manifest's `prepared_from.statementDigest` names: sha256 of the DSSE payload."""
        return statement_digest(self.envelope.payload)


def statement_digest(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def parse_prepare_statement(payload: bytes) -> PrepareStatement:
    st = wire.from_json(PrepareStatement, load_json(payload, "prepare statement: payload"), "prepare statement")
    if st.type != STATEMENT_TYPE:
        raise ParseError(f"prepare statement: _type is not {STATEMENT_TYPE}")
    if st.predicate_type != PREDICATE_TYPE:
        raise ParseError(f"prepare statement: predicateType is not {PREDICATE_TYPE}")
    _check_subjects(st.subject)
    _time(st.predicate.finished_at, "finishedAt")
    if st.subject_digest != st.predicate.prepared.digest:
        raise ParseError(f"prepare statement: the subjects hash to {st.subject_digest}, but prepared.digest is "
                         f"{st.predicate.prepared.digest}")
    return st


def verify_prepare(bundle: Any, policy: Policy, *, at: datetime) -> tuple[Verdict, PrepareStatement | None]:
    """A prepare bundle on its own: evidence, signature and final evidence as for an audit bundle,
    then the statement, the provider's signed request, the code identity and the `[prepare]` pins."""
    parsed = PrepareBundle.from_json(bundle)
    pinned_original = policy.prepare is not None and policy.prepare.original_model_digest is not None
    unpinned = [] if pinned_original else ["original model digest"]
    if policy.code_identities is None and not policy.pins_measurement(parsed.evidence.platform):
        unpinned.append("code identity")
    verdict = Verdict(subject="prepare bundle", unpinned=unpinned)
    verify_signed(parsed, policy, at=at, verdict=verdict)
    try:
        st = parse_prepare_statement(parsed.envelope.payload)
    except ParseError as exc:
        verdict.fail("statement", str(exc))
        return verdict, None
    p = st.predicate
    verdict.ok("statement", f"in-toto Statement v1 with the prepare/v1 predicate: {p.original.digest} -> "
               f"{p.prepared.digest} by {p.method.name}")
    verdict.check("statement nonce", p.nonce == parsed.nonce, "statement carries the request nonce",
                  f"statement nonce {p.nonce[:64]} is not the bundle's {parsed.nonce}")
    verdict.check("statement platform", p.platform.name == parsed.evidence.platform, f"statement says {p.platform.name}",
                  f"statement says {p.platform.name}, evidence is {parsed.evidence.platform}")
    verdict.check("statement names this enclave", p.enclave_key == parsed.enclave.signing_key.public,
                  "the statement names the attested enclave key", "the statement names another enclave key")
    request = prepare_message(p.enclave_key, p.request.session.id, p.request.session.nonce, p.request.session.job,
                              p.original.digest, p.method.name, p.request.recipient_suite, p.request.recipient,
                              bytes.fromhex(p.nonce) if _is_hex(p.nonce) else b"")
    verdict.check("provider request", verify_party_signature(p.request.provider, request, p.request.signature),
                  f"provider {b64e(p.request.provider)} signed the request for {p.method.name} on {p.original.digest}",
                  "the provider's request signature does not verify over this session, job, model, method and nonce")
    want = policy.party_keys.get("provider")
    if want is not None:
        verdict.check("provider key", p.request.provider == want, "the request is signed by the policy's provider key",
                      f"the request is signed by {b64e(p.request.provider)}, the policy pins {b64e(want)}")
    allowlist.check(verdict, "code identity", p.platform.code_identity, policy.code_identities)
    verdict.check("method known", p.method.name in METHODS, f"{p.method.name} ({p.method.library} {p.method.version})",
                  f"unknown method {p.method.name[:64]!r}; known: {', '.join(METHODS)}")
    _pins(p, policy, verdict)
    verdict.claims.update(platform=parsed.evidence.platform, original_model_digest=p.original.digest,
                          prepared_model_digest=p.prepared.digest, method=p.method.name,
                          library=f"{p.method.library} {p.method.version}", finished_at=p.finished_at)
    return verdict, st


def _pins(p: PreparePredicate, policy: Policy, verdict: Verdict) -> None:
    pins = policy.prepare
    want = pins.original_model_digest if pins else None
    if want is None:
        verdict.skip("original model digest", f"{p.original.digest} (not pinned by policy)")
    else:
        verdict.check("original model digest", p.original.digest == want, f"{want} as the policy expects",
                      f"the prepare statement's original is {p.original.digest}, the policy expects {want}")
    methods = pins.methods if pins else None
    if methods is None:
        verdict.skip("prepare method", f"{p.method.name} (the policy accepts any known method)")
    else:
        verdict.check("prepare method", p.method.name in methods, f"{p.method.name} is accepted",
                      f"{p.method.name} is not among the policy's accepted methods ({', '.join(methods)})")


def check_chain(prepare: dict[str, Any] | None, statement: Any, policy: Policy, *, at: datetime,
                verdict: Verdict) -> None:
    """The audit's model came from the policy's original by an accepted method: the audit bundle's
    prepare bundle verifies, the approved manifest names exactly it, and its Mq is the audited model.
    `statement` is the audit's `AuditStatement`; steps go into `verdict` as "prepare: ..."."""
    ref = statement.manifest.prepared_from
    required = policy.prepare is not None and policy.prepare.original_model_digest is not None
    if prepare is None and ref is None:
        if required:
            verdict.fail("prepare chain", "the policy pins the original model (digest(M)), but the audit carries no "
                         "prepare statement: its model was not shown to come from that original")
        else:
            verdict.skip("prepare chain", "the audited model was uploaded as is (no prepare statement)")
        return
    if prepare is None:
        verdict.fail("prepare chain", "the manifest names a prepare statement but the bundle does not carry it")
        return
    if ref is None:
        verdict.fail("prepare chain", "the bundle carries a prepare bundle that the approved manifest does not name")
        return
    try:
        sub, st = verify_prepare(prepare, policy, at=at)
    except ParseError as exc:
        verdict.fail("prepare chain", str(exc))
        return
    verdict.extend(sub, "prepare: ")
    verdict.claims["prepare"] = sub.claims
    digest = statement_digest(PrepareBundle.from_json(prepare).envelope.payload)
    verdict.check("prepare statement approved", digest == ref.statement_digest,
                  "the manifest both parties approved names this prepare statement",
                  f"the carried prepare statement is {digest}, the manifest names {ref.statement_digest}")
    if st is None:
        return
    p, model = st.predicate, statement.digest_of("model")
    verdict.check("prepare chain", p.prepared.digest == model and p.original.digest == ref.original_model_digest
                  and p.method.name == ref.method,
                  f"{p.original.digest} -> {p.method.name} -> {model} (the audited model)",
                  f"the prepare statement made {p.prepared.digest} from {p.original.digest}, but the audit is of "
                  f"{model} (manifest: from {ref.original_model_digest} by {ref.method})")
    verdict.check("prepare provider", p.request.provider == statement.party_key("provider"),
                  "the audit's provider requested the preparation",
                  "the preparation was requested by another provider key than the audit's")


def verify_prepare_file(path: str | Path, policy: Policy, *, at: datetime) -> Verdict:
    data = read_file(path, "prepare bundle")
    verdict, _ = verify_prepare(load_json(data, f"prepare bundle {path}"), policy, at=at)
    return verdict


def _is_hex(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == NONCE_LEN
    except ValueError:
        return False
