"""One disclosed per-sample record: a leaf of an audit's samples tree with its RFC 9162 inclusion proof.

The auditor alone reads the per-sample records; it may show one of them to a third party without the
rest (the paper's selective disclosure). `aaudit auditor disclose-sample` builds a `SampleDisclosure`
and `aaudit-verify sample` checks it with `verify_sample`: the bundle verifies under the policy, the
disclosure names this bundle's signed statement, and the record's canonical JSON (RFC 8785) is the
leaf at `index` of the tree of `treeSize` leaves whose root the statement signs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from verifier import wire
from verifier.bundle import AuditBundle, verify_bundle
from verifier.errors import ParseError
from verifier.inputs import load_json, read_file
from verifier.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from verifier.models import Verdict, canonical_json
from verifier.policy import Policy
from verifier.receipt import payload_digest
from verifier.statement import parse_statement

MEDIA_TYPE = "application/vnd.attestable-audits.sample.v1+json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROOF = 64  # a tree of 2**64 leaves; no real proof is longer


@dataclass(frozen=True)
class SampleDisclosure:
    """docs/FORMATS.md, "Sample disclosure". Built by `aaudit/samples.py`, parsed and checked here."""

    index: int
    tree_size: int
    record: dict[str, Any]
    inclusion_proof: tuple[bytes, ...]
    samples_root: str        # hex, as the statement's predicate.samples.merkleRoot
    statement_digest: str    # sha256:<hex> of the bundle's DSSE payload
    media_type: str = MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "sample disclosure") -> "SampleDisclosure":
        if not isinstance(obj, dict) or obj.get("mediaType") != MEDIA_TYPE:
            raise ParseError(f"{where}: mediaType is not {MEDIA_TYPE}")
        d = wire.from_json(cls, obj, where)
        if not 0 <= d.index < d.tree_size:
            raise ParseError(f"{where}: index {d.index} is not within a tree of {d.tree_size} records")
        if len(d.inclusion_proof) > _MAX_PROOF or any(len(h) != HASH_SIZE for h in d.inclusion_proof):
            raise ParseError(f"{where}.inclusionProof: expected at most {_MAX_PROOF} SHA-256 hashes (32 bytes each)")
        if not _HEX64.fullmatch(d.samples_root):
            raise ParseError(f"{where}.samplesRoot: expected 64 lowercase hex digits")
        if not (d.statement_digest.startswith("sha256:") and _HEX64.fullmatch(d.statement_digest[7:])):
            raise ParseError(f"{where}.statementDigest: expected sha256: and 64 lowercase hex digits")
        canonical_json(d.record)  # ParseError now if the record has no RFC 8785 form (e.g. a huge integer)
        return d


def verify_sample_files(sample: str | Path, bundle: str | Path, policy: Policy, *, at: datetime) -> Verdict:
    disclosure = load_json(read_file(sample, "sample disclosure"), f"sample disclosure {sample}")
    return verify_sample(disclosure, load_json(read_file(bundle, "bundle"), f"bundle {bundle}"), policy, at=at)


def verify_sample(disclosure: Any, bundle: Any, policy: Policy, *, at: datetime) -> Verdict:
    """The bundle's verdict, with the disclosure's steps after it; the record's task, document and
    metrics become the claim `sample` only when every step passed."""
    sample = SampleDisclosure.from_json(disclosure)
    verdict = verify_bundle(bundle, policy, at=at)
    verdict.subject = f"sample {sample.index} of the audit bundle"
    envelope = AuditBundle.from_json(bundle).envelope
    payload, digest = envelope.payload, payload_digest(envelope)
    verdict.check("sample: statement", sample.statement_digest == digest,
                  f"the disclosure names this bundle's statement {digest}",
                  f"the disclosure names statement {sample.statement_digest}, this bundle's is {digest}: "
                  "it was made for another bundle")
    try:
        signed = parse_statement(payload).predicate.samples
    except ParseError as exc:
        verdict.fail("sample: samples root", f"the bundle's statement does not parse: {exc}")
        return verdict
    verdict.check("sample: samples root", sample.samples_root == signed.merkle_root,
                  f"the statement signs the samples root {signed.merkle_root}",
                  f"the disclosure says samples root {sample.samples_root}, the statement signs {signed.merkle_root}")
    verdict.check("sample: tree size", sample.tree_size == signed.count,
                  f"the statement signs {signed.count} records",
                  f"the disclosure says {sample.tree_size} records, the statement signs {signed.count}")
    root = bytes.fromhex(signed.merkle_root) if _HEX64.fullmatch(signed.merkle_root) else b""
    included = verify_inclusion(leaf_hash(canonical_json(sample.record)), sample.index, signed.count,
                                sample.inclusion_proof, root)
    verdict.check("sample: inclusion", included,
                  f"the record's RFC 8785 JSON is leaf {sample.index} of {signed.count} under the signed root",
                  f"the record's RFC 8785 JSON is not leaf {sample.index} of {signed.count} under the statement's "
                  "samples root: the record, its index or its proof was altered, or it is from another audit")
    if verdict.verified:
        r = sample.record
        verdict.claims["sample"] = {"index": sample.index, "task": r.get("task"), "doc_id": r.get("doc_id"),
                                    "filter": r.get("filter"), "metrics": r.get("metrics")}
    return verdict
