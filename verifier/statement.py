"""The audit statement (in-toto Statement v1). The run manifest inside it is `verifier.manifest`'s.

The enclave builds these records and the verifier parses them with this one module, so the two
can never disagree on a field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from verifier.errors import ParseError
from verifier.manifest import RunManifest
from verifier.models import b64d

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://attestable-audits.github.io/predicate/audit/v1"


@dataclass(frozen=True)
class Approval:
    role: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class AuditStatement:
    raw: dict[str, Any]
    subject_digest: str          # "sha256:<hex>" of the model
    manifest: RunManifest
    manifest_digest: str
    approvals: tuple[Approval, ...]
    results: dict[str, dict[str, Any]]
    nonce: str
    finished_at: datetime
    platform: str
    code_identity: str

    def digest_of(self, kind: str) -> str | None:
        return self.manifest.digest_of(kind)

    def party_key(self, role: str) -> bytes:
        return self.manifest.parties.key(role)


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ParseError(f"statement: {where}{key} is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParseError(f"statement: {where}{key} must be {kind.__name__}")
    return value


def parse_statement(payload: bytes) -> AuditStatement:
    try:
        st = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError(f"statement: payload is not JSON ({type(exc).__name__})") from None
    if _get(st, "_type", str, "") != STATEMENT_TYPE:
        raise ParseError(f"statement: _type is not {STATEMENT_TYPE}")
    if _get(st, "predicateType", str, "") != PREDICATE_TYPE:
        raise ParseError(f"statement: predicateType is not {PREDICATE_TYPE}")
    subjects = _get(st, "subject", list, "")
    if len(subjects) != 1:
        raise ParseError("statement: expected exactly one subject (the model)")
    sha = _get(_get(subjects[0], "digest", dict, "subject[0]."), "sha256", str, "subject[0].digest.")
    pred = _get(st, "predicate", dict, "")
    manifest = RunManifest.from_json(_get(pred, "manifest", dict, "predicate."), "statement: predicate.manifest")
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
    code_identity = _get(platform, "codeIdentity", str, "predicate.platform.")
    if code_identity != manifest.enclave.code_identity:
        raise ParseError(f"statement: platform code identity {code_identity} differs from the manifest's "
                         f"{manifest.enclave.code_identity}")
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
    )
