"""Verify an audit bundle (docs/FORMATS.md) against a policy, step by step.

Order: read -> session evidence binds the enclave keys and the run nonce -> DSSE signature by the
enclave key -> statement well-formed -> final evidence binds this exact statement -> nonce, manifest
and approvals (and the party keys the policy pins) -> expected digests -> thresholds -> report age
-> transparency log. The verdict also names what the policy leaves unpinned (`Verdict.unpinned`).
Platform knowledge stays in the platform modules (`verifier.platforms.Platform`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from verifier import dsse, platforms, wire
from verifier.binding import NONCE_LEN, key_binding, statement_binding
from verifier.errors import ParseError
from verifier.evidence import verify_evidence
from verifier.inputs import load_json, read_file
from verifier.manifest import ROLES, verify_approval
from verifier.models import CPU_PLATFORMS, Evidence, Verdict, b64e
from verifier.platforms import allowlist
from verifier.policy import Policy
from verifier.statement import AuditStatement, parse_statement

MEDIA_TYPE = "application/vnd.attestable-audits.bundle.v1+json"


@dataclass(frozen=True)
class SigningKey:
    alg: str
    public: bytes


@dataclass(frozen=True)
class HpkeKey:
    suite: str
    public: bytes


@dataclass(frozen=True)
class TlsKey:
    public: bytes         # DER SubjectPublicKeyInfo; empty when the enclave served plaintext (development)


@dataclass(frozen=True)
class EnclaveKeys:
    signing_key: SigningKey
    hpke: HpkeKey
    tls: TlsKey


@dataclass(frozen=True)
class AuditBundle:
    """What travels to third parties (docs/FORMATS.md). Built by `enclave/report.py`, parsed here;
    `logEntry` is added by `aaudit log publish` (verifier/logentry.py checks it)."""

    envelope: dsse.Envelope
    enclave: EnclaveKeys
    nonce: str
    evidence: Evidence
    final_evidence: Evidence
    log_entry: dict[str, Any] | None = field(default=None, metadata={"optional": True})
    media_type: str = MEDIA_TYPE
    # The prepare bundle (verifier/prepare.py) of the model, when the manifest names one (step B).
    prepare: dict[str, Any] | None = field(default=None, metadata={"optional": True})

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "bundle") -> "AuditBundle":
        if not isinstance(obj, dict) or obj.get("mediaType") != MEDIA_TYPE:
            raise ParseError(f"{where}: mediaType is not {MEDIA_TYPE}")
        return check_signer_and_nonce(wire.from_json(cls, obj, where), where)


def check_signer_and_nonce(bundle: Any, where: str) -> Any:
    """The fields every signed bundle (audit or prepare) shares: an Ed25519 enclave key and the
    run's nonce, hex of NONCE_LEN bytes. Returns the bundle."""
    if bundle.enclave.signing_key.alg != "ed25519" or len(bundle.enclave.signing_key.public) != 32:
        raise ParseError(f"{where}: enclave.signingKey must be a 32-byte ed25519 key")
    try:
        nonce = bytes.fromhex(bundle.nonce)
    except ValueError:
        raise ParseError(f"{where}: nonce is not hex") from None
    if len(nonce) != NONCE_LEN:
        raise ParseError(f"{where}: nonce must be {NONCE_LEN} bytes")
    return bundle


def verify_bundle_file(path: str | Path, policy: Policy, *, at: datetime, witness_state: str | None = None) -> Verdict:
    data = read_file(path, "bundle")
    return verify_bundle(load_json(data, f"bundle {path}"), policy, at=at, witness_state=witness_state)


def verify_bundle(bundle: Any, policy: Policy, *, at: datetime, witness_state: str | None = None) -> Verdict:
    parsed = AuditBundle.from_json(bundle)
    nonce, evidence, envelope = bytes.fromhex(parsed.nonce), parsed.evidence, parsed.envelope
    verdict = Verdict(subject="audit bundle", unpinned=policy.unpinned(evidence.platform))
    verify_signed(parsed, policy, at=at, verdict=verdict)

    try:
        statement = parse_statement(envelope.payload)
    except ParseError as exc:
        verdict.fail("statement", str(exc))
        return verdict
    verdict.ok("statement", "in-toto Statement v1 with the audit/v2 predicate")
    verdict.check("statement nonce", statement.nonce == nonce.hex(),
                  "statement carries the run nonce", f"statement nonce {statement.nonce} is not the bundle's {nonce.hex()}")
    verdict.check("statement platform", statement.platform == evidence.platform,
                  f"statement says {statement.platform}", f"statement says {statement.platform}, evidence is {evidence.platform}")
    _manifest_and_approvals(statement, parsed.enclave.signing_key.public, verdict)
    _party_keys(statement, policy, verdict)
    allowlist.check(verdict, "code identity", statement.code_identity, policy.code_identities)
    _expected_digests(statement, policy, verdict)
    from verifier.prepare import check_chain  # the prepare module builds on this one

    check_chain(parsed.prepare, statement, policy, at=at, verdict=verdict)
    _thresholds(statement, policy, verdict)
    _age(statement, policy, at, verdict)
    if parsed.log_entry is not None or (policy.log is not None and policy.log.require_inclusion):
        from verifier.logentry import verify_log_entry

        verify_log_entry(bundle, policy.log, verdict, witness_state)
    else:
        verdict.skip("transparency log", "bundle has no log entry and the policy does not require one")
    verdict.claims.update(
        platform=evidence.platform,
        model_digest=statement.digest_of("model"),
        dataset_digest=statement.digest_of("dataset"),
        spec_digest=statement.digest_of("spec"),
        **({"judges_digest": statement.digest_of("judges")} if statement.digest_of("judges") else {}),
        results=statement.results,
        finished_at=statement.finished_at.isoformat(),
    )
    return verdict


def verify_signed(parsed: Any, policy: Policy, *, at: datetime, verdict: Verdict) -> None:
    """The steps every signed enclave bundle shares (an audit bundle, a prepare bundle): the session
    evidence binds the enclave's keys and the client nonce, the DSSE envelope is signed by that key,
    and the final evidence binds this exact statement, from the same enclave image."""
    keys, nonce = parsed.enclave, bytes.fromhex(parsed.nonce)
    signing_pub = keys.signing_key.public
    evidence, final, envelope = parsed.evidence, parsed.final_evidence, parsed.envelope
    # 1. The session evidence: a CPU TEE vouching for the enclave's keys and this run's nonce.
    if evidence.platform not in CPU_PLATFORMS:
        verdict.fail("evidence platform", f"{evidence.platform} evidence cannot stand alone; a CPU TEE must vouch")
    verify_evidence(evidence, at=at, policy=policy, verdict=verdict, prefix="evidence: ",
                    expected_report_data=key_binding(signing_pub, keys.hpke.suite, keys.hpke.public, keys.tls.public,
                                                     nonce))
    # 2. The report is signed by that key.
    verdict.check("report signature", envelope.payload_type == dsse.IN_TOTO_PAYLOAD_TYPE and dsse.verify(envelope, signing_pub),
                  "DSSE signature by the attested enclave key verifies",
                  "DSSE signature does not verify with the attested enclave key (or wrong payloadType)")
    # 3. The final evidence binds this exact statement.
    if final.platform != evidence.platform:
        verdict.fail("final evidence platform", f"final evidence is {final.platform}, session evidence {evidence.platform}")
    verify_evidence(final, at=at, policy=policy, verdict=verdict, prefix="final evidence: ",
                    expected_report_data=statement_binding(signing_pub, envelope.payload))
    _same_enclave(platforms.get(evidence.platform), verdict)


def _same_enclave(platform: platforms.Platform, verdict: Verdict) -> None:
    """Session and final evidence come from one boot of one image: they agree on its identity claims."""
    first = platform.identity_claims(verdict.claims.get("evidence", {}))
    final = platform.identity_claims(verdict.claims.get("final evidence", {}))
    if not first or None in first.values():
        verdict.fail("same enclave", f"{platform.NAME} evidence lacks the claims that identify an enclave image")
        return
    differ = [k for k in first if first[k] != final.get(k)]
    verdict.check("same enclave", not differ, f"session and final evidence agree on {', '.join(first)}",
                  f"session and final evidence differ in {', '.join(differ)}")


def _manifest_and_approvals(st: AuditStatement, signing_pub: bytes, verdict: Verdict) -> None:
    digest = st.manifest.digest()
    verdict.check("manifest digest", digest == st.manifest_digest, f"{digest}",
                  f"manifest hashes to {digest}, statement says {st.manifest_digest}")
    files = f"{len(st.subject)} model file{'s' if len(st.subject) != 1 else ''}"
    verdict.check("model subjects", st.subject_digest == st.digest_of("model"),
                  f"the subjects name {files} whose listing hashes to the manifest's model digest",
                  f"the subjects ({files}) hash to {st.subject_digest}, but the manifest's model is "
                  f"{st.digest_of('model')}: subjects and model digest disagree")
    _judge_subjects(st, verdict)
    verdict.check("manifest names this enclave", st.manifest.enclave.signing_key == signing_pub,
                  "approvals were given to this enclave boot key", "manifest names another enclave key")
    for role in ROLES:
        key = st.party_key(role)
        approvals = [a for a in st.approvals if a.role == role]
        if not approvals:
            verdict.fail(f"{role} approval", f"no {role} approval in the statement")
            continue
        ok = any(a.public_key == key and verify_approval(key, st.manifest_digest, a.signature) for a in approvals)
        verdict.check(f"{role} approval", ok, f"{role} signed the manifest",
                      f"{role} approval signature does not verify with the manifest's {role} key")


def _judge_subjects(st: AuditStatement, verdict: Verdict) -> None:
    """The `judge/` subjects name exactly the judges asset both parties approved, as the model's do."""
    want, got = st.digest_of("judges"), st.judges_subject_digest
    if want is None and got is None:
        verdict.skip("judge subjects", "the audit used no judge models")
        return
    n = len(st.judges_listing)
    files = f"{n} judge file{'s' if n != 1 else ''}"
    verdict.check("judge subjects", got == want,
                  f"the subjects name {files} whose listing hashes to the manifest's judges digest",
                  f"the judge subjects ({files}) hash to {got}, but the manifest's judges are {want}: "
                  "subjects and judges digest disagree" if got is not None else
                  f"the manifest names judges {want}, but the statement has no judge subjects")


def _party_keys(st: AuditStatement, policy: Policy, verdict: Verdict) -> None:
    """The manifest names the pinned key of each role, and every approval of that role is by it."""
    for role in ROLES:
        want = policy.party_keys.get(role)
        if want is None:
            continue
        others = sorted({b64e(a.public_key) for a in st.approvals if a.role == role and a.public_key != want})
        named = st.party_key(role)
        if named != want:
            verdict.fail(f"{role} key", f"the manifest names {role} key {b64e(named) if named else 'none'}, "
                         f"the policy pins {b64e(want)}")
        else:
            verdict.check(f"{role} key", not others, f"the manifest and every {role} approval use the pinned key",
                          f"{role} approval(s) by key(s) {', '.join(others)}, not the policy's {role} key")


def _expected_digests(st: AuditStatement, policy: Policy, verdict: Verdict) -> None:
    judges = "judges_digest" in policy.expect or st.digest_of("judges") is not None
    for kind in ("model", "dataset", "spec", *(("judges",) if judges else ())):
        want = policy.expect.get(f"{kind}_digest")
        got = st.digest_of(kind)
        if want is None:
            verdict.skip(f"{kind} digest", f"{got} (not pinned by policy)")
            if kind == "judges":
                verdict.unpinned.append("judges digest")  # any judge would pass, as any model would
        else:
            verdict.check(f"{kind} digest", got == want, f"{got} as the policy expects",
                          f"statement has {got}, policy expects {want}")


def metric_value(results: dict[str, Any], task: str, metric: str) -> tuple[float | None, str]:
    """Find `metric` of `task` in lm-eval results; "acc" matches "acc,none" if unambiguous."""
    task_results = results.get(task)
    if not isinstance(task_results, dict):
        return None, f"task {task!r} is not in the results"
    if metric in task_results:
        key = metric
    else:
        keys = [k for k in task_results if k.split(",")[0] == metric]
        if len(keys) != 1:
            return None, (f"metric {metric!r} not in {task} results" if not keys
                          else f"metric {metric!r} is ambiguous in {task}: {', '.join(sorted(keys))}")
        key = keys[0]
    value = task_results[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None, f"{task}/{key} is not a number"
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        return None, f"{task}/{key} is not a finite number"
    return number, key


def _thresholds(st: AuditStatement, policy: Policy, verdict: Verdict) -> None:
    if not policy.thresholds:
        verdict.skip("thresholds", "policy sets no compliance thresholds")
    for t in policy.thresholds:
        value, key = metric_value(st.results, t.task, t.metric)
        name = f"threshold {t.task}/{t.metric}"
        if value is None:
            verdict.fail(name, key)
            continue
        ok = (t.min is None or value >= t.min) and (t.max is None or value <= t.max)
        verdict.check(name, ok, f"{key} = {value:.4g}, required {t.describe()}",
                      f"{key} = {value:.4g} violates {t.describe()}")


def _age(st: AuditStatement, policy: Policy, at: datetime, verdict: Verdict) -> None:
    if policy.max_age_s is None:
        return
    age = at - st.finished_at
    finished = st.finished_at.isoformat()
    verdict.check("report age", timedelta(0) <= age <= timedelta(seconds=policy.max_age_s),
                  f"finished {finished}, {int(age.total_seconds())} s before verification",
                  f"finished {finished}: outside max_age of {policy.max_age_s} s at {at.isoformat()}")
