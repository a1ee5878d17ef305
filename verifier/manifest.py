"""The run manifest: what both parties approve before a job runs. One model for enclave and verifier.

The enclave builds a `RunManifest` (enclave/session.py), the parties' client parses and checks it
before signing (aaudit/client.py), and the verifier parses it out of the statement
(verifier/statement.py). A new field is added here and nowhere else.

An approval is Ed25519 over "attestable-audits/v1/approval\\0" || manifest digest; the manifest
names the enclave boot key, the session (id, fresh random nonce, job number), both parties' keys,
every asset digest (the auditor's judge models too, when the spec names judges), the output policy
and, per task, the number of documents and the metrics that will be published, so an approval can
never carry over to another enclave, session or job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verifier import wire
from verifier.errors import ParseError
from verifier.models import canonical_json

MANIFEST_VERSION = 2
ROLES = ("provider", "auditor")
ASSET_KINDS = ("model", "dataset", "spec", "judges")
UPLOADER_ROLE = {"model": "provider", "dataset": "auditor", "spec": "auditor", "judges": "auditor"}
# The auditor's judge models (a folder of `<name>/` model folders): present exactly when the spec
# names `[[judge]]`s, which the enclave enforces; a manifest without them is complete.
OPTIONAL_KINDS = ("judges",)
REQUIRED_KINDS = tuple(k for k in ASSET_KINDS if k not in OPTIONAL_KINDS)
OUTPUT_POLICIES = ("aggregate", "aggregate+samples")
_APPROVAL = b"attestable-audits/v1/approval\x00"


@dataclass(frozen=True)
class SessionRef:
    id: str
    nonce: bytes          # 32 random bytes, fresh per session
    job: int              # 1 for the session's first job, then 2, ...


@dataclass(frozen=True)
class EnclaveRef:
    platform: str
    code_identity: str
    signing_key: bytes


@dataclass(frozen=True)
class Parties:
    provider: bytes       # raw Ed25519 identity keys, named when the session was created
    auditor: bytes

    def key(self, role: str) -> bytes:
        return self.provider if role == "provider" else self.auditor


@dataclass(frozen=True)
class AssetRef:
    digest: str
    bytes: int


@dataclass(frozen=True)
class TaskRef:
    """What the provider sees of a task before approving: how many documents it scores and which
    results it will publish (an aggregate over few documents is one document's score)."""

    name: str
    documents: int        # rows lm-eval scores
    distinct: int         # of them, how many differ in the columns the task's templates read
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    deadline_seconds: int
    min_documents: int | None   # None: output carries per-sample records to the auditor


@dataclass(frozen=True)
class PrepareRef:
    """The prepare statement (step B) the provider attached to the model: the model was made from
    `original_model_digest` by `method` in an attested enclave. The audit bundle carries that
    statement's bundle; `statement_digest` (sha256 of its DSSE payload) pins it."""

    statement_digest: str
    original_model_digest: str
    method: str


@dataclass(frozen=True)
class RunManifest:
    session: SessionRef
    enclave: EnclaveRef
    parties: Parties
    assets: dict[str, AssetRef]
    output: str | None = None
    samples_recipient: str | None = None
    tasks: tuple[TaskRef, ...] = ()
    limits: Limits | None = None
    version: int = MANIFEST_VERSION
    prepared_from: PrepareRef | None = field(default=None, metadata={"optional": True})

    def to_json(self) -> dict:
        return wire.to_json(self)

    @classmethod
    def from_json(cls, obj: object, where: str = "manifest") -> "RunManifest":
        manifest = wire.from_json(cls, obj, where)
        if manifest.version != MANIFEST_VERSION:
            raise ParseError(f"{where}.version is {manifest.version}; this verifier reads version {MANIFEST_VERSION}")
        unknown = sorted(set(manifest.assets) - set(ASSET_KINDS))
        if unknown:
            raise ParseError(f"{where}.assets: unknown asset kind(s) {', '.join(unknown)}")
        if manifest.output is not None and manifest.output not in OUTPUT_POLICIES:
            raise ParseError(f"{where}.output {manifest.output!r} is not one of {', '.join(OUTPUT_POLICIES)}")
        return manifest

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()

    @property
    def complete(self) -> bool:
        return set(REQUIRED_KINDS) <= set(self.assets) and self.output is not None

    def digest_of(self, kind: str) -> str | None:
        asset = self.assets.get(kind)
        return asset.digest if asset is not None else None


def approval_message(digest: str) -> bytes:
    """What a party signs to approve a run: a domain label and the manifest digest."""
    return _APPROVAL + digest.encode("ascii")


def verify_party_signature(public_raw: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public_raw`'s Ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_approval(public_raw: bytes, digest: str, signature: bytes) -> bool:
    """Whether `signature` is `public_raw`'s Ed25519 approval of the manifest with `digest`."""
    try:
        message = approval_message(digest)
    except UnicodeEncodeError:
        return False
    return verify_party_signature(public_raw, message, signature)


__all__ = ["ASSET_KINDS", "AssetRef", "EnclaveRef", "Limits", "OPTIONAL_KINDS", "Parties", "PrepareRef",
           "REQUIRED_KINDS", "ROLES", "RunManifest", "SessionRef", "TaskRef", "UPLOADER_ROLE", "approval_message",
           "verify_approval", "verify_party_signature"]
