"""Verify an audit bundle (docs/FORMATS.md) against a policy, step by step.

Order: read -> session evidence binds the enclave keys and the run nonce -> DSSE signature by the
enclave key -> statement well-formed -> final evidence binds this exact statement -> nonce, manifest
and approvals -> expected digests -> thresholds -> report age -> transparency log.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from verifier import dsse
from verifier.binding import NONCE_LEN, key_binding, statement_binding
from verifier.errors import ParseError, UnusableInput
from verifier.evidence import verify_evidence
from verifier.models import CPU_PLATFORMS, Evidence, Status, Verdict, b64d
from verifier.policy import Policy
from verifier.manifest import ROLES, verify_approval
from verifier.statement import AuditStatement, parse_statement

MEDIA_TYPE = "application/vnd.attestable-audits.bundle.v1+json"


def verify_bundle_file(path: str | Path, policy: Policy, *, at: datetime, witness_state: str | None = None) -> Verdict:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnusableInput(f"cannot read bundle {path}: {exc.strerror}") from None
    try:
        bundle = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UnusableInput(f"bundle {path} is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    return verify_bundle(bundle, policy, at=at, witness_state=witness_state)


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise ParseError(f"bundle: {key} missing or not {kind.__name__}")
    return value


def verify_bundle(bundle: Any, policy: Policy, *, at: datetime, witness_state: str | None = None) -> Verdict:
    if not isinstance(bundle, dict) or bundle.get("mediaType") != MEDIA_TYPE:
        raise ParseError(f"bundle: mediaType is not {MEDIA_TYPE}")
    enclave = _field(bundle, "enclave", dict)
    signing, hpke = _field(enclave, "signingKey", dict), _field(enclave, "hpke", dict)
    if signing.get("alg") != "ed25519":
        raise ParseError("bundle: enclave.signingKey.alg must be ed25519")
    signing_pub = b64d(signing.get("public"), "enclave.signingKey.public")
    if len(signing_pub) != 32:
        raise ParseError("bundle: enclave signing key is not a 32-byte Ed25519 key")
    hpke_pub = b64d(hpke.get("public"), "enclave.hpke.public")
    tls_pub = b64d(_field(enclave, "tls", dict).get("public"), "enclave.tls.public")
    suite = hpke.get("suite")
    if not isinstance(suite, str):
        raise ParseError("bundle: enclave.hpke.suite missing")
    try:
        nonce = bytes.fromhex(_field(bundle, "nonce", str))
    except ValueError:
        raise ParseError("bundle: nonce is not hex") from None
    if len(nonce) != NONCE_LEN:
        raise ParseError(f"bundle: nonce must be {NONCE_LEN} bytes")
    evidence = Evidence.from_json(_field(bundle, "evidence", dict), "evidence")
    final = Evidence.from_json(_field(bundle, "finalEvidence", dict), "finalEvidence")
    envelope = dsse.Envelope.from_json(_field(bundle, "envelope", dict))

    verdict = Verdict(subject="audit bundle")
    # 1. The session evidence: a CPU TEE vouching for the enclave's keys and this run's nonce.
    if evidence.platform not in CPU_PLATFORMS:
        verdict.fail("evidence platform", f"{evidence.platform} evidence cannot stand alone; a CPU TEE must vouch")
    verify_evidence(evidence, at=at, policy=policy, verdict=verdict, prefix="evidence: ",
                    expected_report_data=key_binding(signing_pub, suite, hpke_pub, tls_pub, nonce))
    # 2. The report is signed by that key.
    verdict.check("report signature", envelope.payload_type == dsse.IN_TOTO_PAYLOAD_TYPE and dsse.verify(envelope, signing_pub),
                  "DSSE signature by the attested enclave key verifies",
                  "DSSE signature does not verify with the attested enclave key (or wrong payloadType)")
    # 3. The final evidence binds this exact statement.
    if final.platform != evidence.platform:
        verdict.fail("final evidence platform", f"final evidence is {final.platform}, session evidence {evidence.platform}")
    verify_evidence(final, at=at, policy=policy, verdict=verdict, prefix="final evidence: ",
                    expected_report_data=statement_binding(signing_pub, envelope.payload))
    _same_enclave(evidence.platform, verdict)

    try:
        statement = parse_statement(envelope.payload)
    except ParseError as exc:
        verdict.fail("statement", str(exc))
        return verdict
    verdict.ok("statement", "in-toto Statement v1 with the audit/v1 predicate")
    verdict.check("statement nonce", statement.nonce == nonce.hex(),
                  "statement carries the run nonce", f"statement nonce {statement.nonce} is not the bundle's {nonce.hex()}")
    verdict.check("statement platform", statement.platform == evidence.platform,
                  f"statement says {statement.platform}", f"statement says {statement.platform}, evidence is {evidence.platform}")
    _manifest_and_approvals(statement, signing_pub, verdict)
    _code_identity(statement, policy, verdict)
    _warn_if_code_unpinned(policy, verdict)
    _expected_digests(statement, policy, verdict)
    _thresholds(statement, policy, verdict)
    _age(statement, policy, at, verdict)
    if bundle.get("logEntry") is not None or (policy.log is not None and policy.log.require_inclusion):
        from verifier.logentry import verify_log_entry

        verify_log_entry(bundle, policy.log, verdict, witness_state)
    else:
        verdict.skip("transparency log", "bundle has no log entry and the policy does not require one")
    verdict.claims.update(
        platform=evidence.platform,
        model_digest=statement.subject_digest,
        dataset_digest=statement.digest_of("dataset"),
        spec_digest=statement.digest_of("spec"),
        results=statement.results,
        finished_at=statement.finished_at.isoformat(),
    )
    return verdict


# The claims that identify one enclave boot's image; session and final evidence must agree on them.
IDENTITY_CLAIMS = {
    "sim": ("measurement",),
    "sev-snp": ("measurement", "host_data", "chip_id"),
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrconfigid", "mrowner", "mrseam"),
    "nitro": ("pcrs",),
}
# Policy steps that pin the code an enclave runs (a launch measurement or equivalent).
_PIN_STEPS = {"measurement", "mrtd", "rtmr0", "rtmr1", "rtmr2", "pcr0", "pcr1", "pcr2"}


def _same_enclave(platform: str, verdict: Verdict) -> None:
    first, final = verdict.claims.get("evidence", {}), verdict.claims.get("final evidence", {})
    keys = IDENTITY_CLAIMS.get(platform, ())
    differ = [k for k in keys if first.get(k) != final.get(k)]
    if not keys or any(first.get(k) is None for k in keys):
        verdict.fail("same enclave", f"{platform} evidence lacks the claims that identify an enclave image")
    else:
        verdict.check("same enclave", not differ, f"session and final evidence agree on {', '.join(keys)}",
                      f"session and final evidence differ in {', '.join(differ)}")


def _warn_if_code_unpinned(policy: Policy, verdict: Verdict) -> None:
    pinned = any(s.status is Status.OK and s.name.split(": ")[-1] in _PIN_STEPS for s in verdict.steps)
    if policy.code_identities is None and not pinned:
        verdict.warn("the policy pins neither a platform measurement nor the enclave code identity: any code "
                     "running in a genuine TEE would pass")


def _manifest_and_approvals(st: AuditStatement, signing_pub: bytes, verdict: Verdict) -> None:
    digest = st.manifest.digest()
    verdict.check("manifest digest", digest == st.manifest_digest, f"{digest}",
                  f"manifest hashes to {digest}, statement says {st.manifest_digest}")
    verdict.check("model subject", st.subject_digest == st.digest_of("model"),
                  "statement subject is the manifest's model",
                  f"subject {st.subject_digest} is not the manifest's model {st.digest_of('model')}")
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


def _code_identity(st: AuditStatement, policy: Policy, verdict: Verdict) -> None:
    got = st.code_identity  # parse_statement checked the manifest and platform agree
    if policy.code_identities is None:
        verdict.skip("code identity", f"{got} (not pinned by policy)")
    else:
        verdict.check("code identity", got in policy.code_identities, f"{got} is in the policy's allow-list",
                      f"{got} is not in the policy's allow-list")


def _expected_digests(st: AuditStatement, policy: Policy, verdict: Verdict) -> None:
    for kind in ("model", "dataset", "spec"):
        want = policy.expect.get(f"{kind}_digest")
        got = st.digest_of(kind)
        if want is None:
            verdict.skip(f"{kind} digest", f"{got} (not pinned by policy)")
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
    return float(value), key


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
