"""The parties' side of the enclave protocol: attest and verify first, then upload, approve, run.

A client never wraps a data key or signs an approval for an enclave whose evidence did not verify
against the client's own policy, for the keys it is about to use and a nonce it just made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import grpc

from protos import enclave_pb2 as pb
from protos import enclave_pb2_grpc as pb_grpc
from sealing import keywrap
from sealing.stream import SealedAsset, SealedReader, read_key_file
from verifier.binding import NONCE_LEN, key_binding, wrap_info
from verifier.errors import AAuditError, UnusableInput, VerificationError
from verifier.evidence import verify_evidence
from verifier.models import CPU_PLATFORMS, Evidence, Verdict, b64e, canonical_json
from verifier.policy import Policy
from verifier.statement import ASSET_KINDS, approval_message, manifest_digest

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 5 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class EnclaveError(AAuditError):
    """The enclave refused a request; carries its status and message."""


class AttestationRefused(VerificationError):
    def __init__(self, verdict: Verdict) -> None:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in verdict.failures) or "no check passed"
        super().__init__(f"enclave evidence did not verify against the policy ({reasons}); nothing was sent")
        self.verdict = verdict


@dataclass(frozen=True)
class ExpectedRun:
    """What a party agreed to before approving: every asset digest, the other party's key, and
    whether per-sample records may leave the enclave (to the auditor)."""

    digests: dict[str, str]
    parties: dict[str, bytes]
    allow_samples: bool = False

    def __post_init__(self) -> None:
        missing = [k for k in ASSET_KINDS if k not in self.digests]
        if missing:
            raise UnusableInput(f"an approval must name every asset digest; missing {', '.join(missing)}")


@dataclass(frozen=True)
class AttestedEnclave:
    """The enclave's keys, vouched for by evidence that verified for our nonce."""

    signing_public: bytes
    hpke_suite: str
    hpke_public: bytes
    nonce: bytes
    platform: str
    code_identity: str
    verdict: Verdict


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as exc:
        code = exc.code()
        detail = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            raise EnclaveError(f"enclave unreachable: {detail}") from None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise EnclaveError(f"message too large for the enclave: {detail}") from None
        raise EnclaveError(f"enclave refused ({code.name}): {detail}") from None


class EnclaveClient:
    def __init__(self, target: str, timeout: float = 60.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EnclaveStub(self._channel)
        self.samples: bytes | None = None  # encrypted per-sample records of the last run/result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EnclaveClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attest(self, policy: Policy, *, at: datetime | None = None) -> AttestedEnclave:
        """Fresh nonce -> evidence -> verify against `policy` for exactly the returned keys."""
        nonce = os.urandom(NONCE_LEN)
        resp = _call(self._stub.Attest, pb.AttestRequest(nonce=nonce), timeout=self.timeout)
        evidence = Evidence.from_bytes(resp.evidence)
        verdict = Verdict(subject=f"enclave at {self.target}")
        if evidence.platform not in CPU_PLATFORMS:
            verdict.fail("evidence platform", f"{evidence.platform} evidence cannot stand alone")
        verify_evidence(evidence, at=at or datetime.now(timezone.utc), policy=policy, verdict=verdict,
                        expected_report_data=key_binding(resp.signing_public_key, resp.hpke_suite,
                                                         resp.hpke_public_key, nonce))
        if not verdict.verified:
            raise AttestationRefused(verdict)
        return AttestedEnclave(resp.signing_public_key, resp.hpke_suite, resp.hpke_public_key, nonce,
                               evidence.platform, resp.code_identity, verdict)

    def upload(self, enclave: AttestedEnclave, asset: SealedAsset, identity_public: bytes,
               on_progress: Callable[[int], None] | None = None) -> pb.UploadResult:
        data_key = read_key_file(asset.key_path)
        wrapped = keywrap.wrap(data_key, enclave.hpke_public, enclave.hpke_suite,
                               wrap_info(asset.kind, asset.digest, enclave.signing_public))
        del data_key
        reader = SealedReader(asset.sealed_path)

        def parts() -> Iterator[pb.UploadPart]:
            yield pb.UploadPart(header=pb.UploadHeader(
                kind=asset.kind, digest=asset.digest, wrapped_key=wrapped, stream_header=reader.header,
                party_public_key=identity_public, attest_nonce=enclave.nonce))
            for chunk in reader:
                yield pb.UploadPart(chunk=chunk)
                if on_progress:
                    on_progress(len(chunk))

        return _call(self._stub.Upload, parts(), timeout=None)

    def manifest(self) -> tuple[dict[str, Any], str, list[str], bool]:
        m = _call(self._stub.GetManifest, pb.ManifestRequest(), timeout=self.timeout)
        manifest = json.loads(m.manifest_json)
        if canonical_json(manifest) != m.manifest_json or manifest_digest(manifest) != m.digest:
            raise VerificationError("the enclave's manifest does not hash to the digest it states")
        return manifest, m.digest, list(m.approved_by), m.complete

    def approve(self, enclave: AttestedEnclave, role: str, identity: Any, expected: "ExpectedRun") -> pb.ApprovalResult:
        """Check every field of the manifest against what this party agreed to; then sign it.

        A party approves a whole run, not only its own upload: the other party's key, every
        digest and the output policy must be the ones it expects, or it refuses.
        """
        manifest, digest, _, complete = self.manifest()
        problems = [] if complete else ["manifest is incomplete (an asset is missing)"]
        if manifest.get("enclave", {}).get("signingKey") != b64e(enclave.signing_public):
            problems.append("manifest names another enclave key than the one we attested")
        parties = {**expected.parties, role: identity.public_raw()}
        for who, key in sorted(parties.items()):
            if manifest.get("parties", {}).get(who) != b64e(key):
                problems.append(f"manifest's {who} key is {manifest.get('parties', {}).get(who)}, expected {b64e(key)}")
        for kind in ASSET_KINDS:
            got = (manifest.get("assets", {}).get(kind) or {}).get("digest")
            if got != expected.digests.get(kind):
                problems.append(f"manifest has {kind} {got}, expected {expected.digests.get(kind)}")
        if manifest.get("output") == "aggregate+samples" and not expected.allow_samples:
            problems.append("the spec sends per-sample records to " + str(manifest.get("samplesRecipient"))
                            + "; approve only with allow_samples (--allow-samples) if you agreed to that")
        if problems:
            raise VerificationError("refusing to approve: " + "; ".join(problems))
        return _call(self._stub.Approve, pb.Approval(role=role, manifest_digest=digest,
                                                     signature=identity.sign(approval_message(digest))),
                     timeout=self.timeout)

    def run(self, nonce: bytes, on_progress: Callable[[pb.Progress], None] | None = None) -> dict[str, Any]:
        """Run the approved audit; returns the bundle (encrypted samples, if any, in `self.samples`)."""
        bundle = None
        self.samples = None
        try:
            for event in self._stub.RunAudit(pb.RunRequest(nonce=nonce)):
                kind = event.WhichOneof("event")
                if kind == "progress":
                    if on_progress:
                        on_progress(event.progress)
                elif kind == "samples":
                    self.samples = event.samples
                else:
                    bundle = event.bundle
        except grpc.RpcError as exc:
            raise EnclaveError(f"audit run failed ({exc.code().name}): {exc.details()}") from None
        if bundle is None:
            raise EnclaveError("the enclave ended the run without a bundle")
        result = json.loads(bundle)
        if result.get("nonce") != nonce.hex():
            raise VerificationError("the bundle does not carry the nonce this run was started with (a replay?)")
        return result

    def result(self) -> dict[str, Any]:
        """The last job's bundle (encrypted samples, if any, in `self.samples`)."""
        res = _call(self._stub.GetResult, pb.ResultRequest(), timeout=self.timeout)
        self.samples = res.samples or None
        return json.loads(res.bundle)
