"""The audit statement (in-toto Statement v1) and the run manifest both parties approve.

The enclave builds these records and the verifier parses them with this one module, so the two
can never disagree on a field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verifier.errors import ParseError
from verifier.inputs import load_json
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


def verify_approval(public_raw: bytes, digest: str, signature: bytes) -> bool:
    """Whether `signature` is `public_raw`'s Ed25519 approval of the manifest with `digest`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, approval_message(digest))
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        return False
    return True


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
    finished_at: datetime
    platform: str
    code_identity: str | None
    digests: dict[str, str]          # asset kind -> digest, from the manifest
    party_keys: dict[str, bytes]     # role -> raw Ed25519 key, from the manifest
    enclave_key: str | None          # the manifest's enclave signing key (base64)

    def digest_of(self, kind: str) -> str | None:
        return self.digests.get(kind)

    def party_key(self, role: str) -> bytes | None:
        return self.party_keys.get(role)


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ParseError(f"statement: {where}{key} is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParseError(f"statement: {where}{key} must be {kind.__name__}")
    return value


def _opt(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    return _get(obj, key, kind, where) if obj.get(key) is not None else None


def _manifest_fields(manifest: dict[str, Any]) -> tuple[dict[str, str], dict[str, bytes], str | None, str | None]:
    digests = {}
    for kind, asset in _get(manifest, "assets", dict, "predicate.manifest.").items():
        digests[kind] = _get(asset, "digest", str, f"predicate.manifest.assets.{kind}.")
    keys = {}
    for role, value in _get(manifest, "parties", dict, "predicate.manifest.").items():
        if not isinstance(value, str):
            raise ParseError(f"statement: predicate.manifest.parties.{role} must be str")
        keys[role] = b64d(value, f"statement: manifest parties.{role}")
    enclave = _get(manifest, "enclave", dict, "predicate.manifest.")
    where = "predicate.manifest.enclave."
    return digests, keys, _opt(enclave, "signingKey", str, where), _opt(enclave, "codeIdentity", str, where)


def parse_statement(payload: bytes) -> AuditStatement:
    st = load_json(payload, "statement: payload")
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
    digests, party_keys, enclave_key, manifest_code = _manifest_fields(manifest)
    approvals = []
    for i, a in enumerate(_get(pred, "approvals", list, "predicate.")):
        where = f"predicate.approvals[{i}]."
        approvals.append(Approval(_get(a, "role", str, where), b64d(_get(a, "publicKey", str, where), where + "publicKey"),
                                  b64d(_get(a, "signature", str, where), where + "signature")))
    results = _get(pred, "results", dict, "predicate.")
    if not all(isinstance(v, dict) for v in results.values()):
        raise ParseError("statement: predicate.results must map each task to an object")
    finished_text = _get(pred, "finishedAt", str, "predicate.")
    try:
        finished = datetime.fromisoformat(finished_text)
    except ValueError:
        raise ParseError(f"statement: predicate.finishedAt {finished_text!r} is not an ISO 8601 time") from None
    if finished.tzinfo is None:
        raise ParseError("statement: predicate.finishedAt has no time zone")
    platform = _get(pred, "platform", dict, "predicate.")
    code_identity = _opt(platform, "codeIdentity", str, "predicate.platform.")
    if code_identity != manifest_code:
        raise ParseError(f"statement: platform code identity {code_identity} differs from the manifest's {manifest_code}")
    return AuditStatement(
        raw=st,
        subject_digest="sha256:" + sha,
        manifest=manifest,
        manifest_digest=_get(pred, "manifestDigest", str, "predicate."),
        approvals=tuple(approvals),
        results=results,
        nonce=_get(pred, "nonce", str, "predicate."),
        finished_at=finished,
        platform=_get(platform, "name", str, "predicate.platform."),
        code_identity=code_identity,
        digests=digests,
        party_keys=party_keys,
        enclave_key=enclave_key,
    )
