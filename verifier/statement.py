"""The audit statement (in-toto Statement v1) and the run manifest both parties approve.

The enclave builds these records and the verifier parses them with this one module, so the two
can never disagree on a field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from verifier.errors import ParseError
from verifier.models import b64d, canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://attestable-audits.github.io/predicate/audit/v1"
ROLES = ("provider", "auditor")
ASSET_KINDS = ("model", "dataset", "spec")
OUTPUT_POLICIES = ("aggregate", "aggregate+samples")
_APPROVAL = b"attestable-audits/v1/approval\x00"


def manifest_digest(manifest: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(manifest)).hexdigest()


def approval_message(digest: str) -> bytes:
    """What a party signs to approve a run: a domain label and the manifest digest."""
    return _APPROVAL + digest.encode("ascii")


@dataclass(frozen=True)
class Approval:
    role: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class AuditStatement:
    raw: dict[str, Any]
    subject_digest: str          # "sha256:<hex>" of the model
    manifest: dict[str, Any]
    manifest_digest: str
    approvals: tuple[Approval, ...]
    results: dict[str, dict[str, Any]]
    nonce: str
    finished_at: str
    platform: str

    def digest_of(self, kind: str) -> str | None:
        asset = self.manifest.get("assets", {}).get(kind)
        return asset.get("digest") if isinstance(asset, dict) else None

    def party_key(self, role: str) -> bytes | None:
        value = self.manifest.get("parties", {}).get(role)
        return b64d(value, f"manifest parties.{role}") if value is not None else None


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ParseError(f"statement: {where}{key} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise ParseError(f"statement: {where}{key} must be {kind.__name__}")
    return value


def parse_statement(payload: bytes) -> AuditStatement:
    try:
        st = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"statement: payload is not JSON ({exc})") from None
    if _get(st, "_type", str, "") != STATEMENT_TYPE:
        raise ParseError(f"statement: _type is not {STATEMENT_TYPE}")
    if _get(st, "predicateType", str, "") != PREDICATE_TYPE:
        raise ParseError(f"statement: predicateType is not {PREDICATE_TYPE}")
    subjects = _get(st, "subject", list, "")
    if len(subjects) != 1:
        raise ParseError("statement: expected exactly one subject (the model)")
    sha = _get(_get(subjects[0], "digest", dict, "subject[0]."), "sha256", str, "subject[0].digest.")
    pred = _get(st, "predicate", dict, "")
    manifest = _get(pred, "manifest", dict, "predicate.")
    approvals = []
    for i, a in enumerate(_get(pred, "approvals", list, "predicate.")):
        where = f"predicate.approvals[{i}]."
        approvals.append(Approval(_get(a, "role", str, where), b64d(_get(a, "publicKey", str, where), where + "publicKey"),
                                  b64d(_get(a, "signature", str, where), where + "signature")))
    results = _get(pred, "results", dict, "predicate.")
    return AuditStatement(
        raw=st,
        subject_digest="sha256:" + sha,
        manifest=manifest,
        manifest_digest=_get(pred, "manifestDigest", str, "predicate."),
        approvals=tuple(approvals),
        results=results,
        nonce=_get(pred, "nonce", str, "predicate."),
        finished_at=_get(pred, "finishedAt", str, "predicate."),
        platform=_get(_get(pred, "platform", dict, "predicate."), "name", str, "predicate.platform."),
    )
