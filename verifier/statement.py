"""The audit statement (in-toto Statement v1): one typed model; its run manifest is `verifier.manifest`'s.

The enclave builds these records and the verifier parses them with this one module, so the two
can never disagree on a field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from verifier import wire
from verifier.errors import ParseError
from verifier.inputs import load_json
from verifier.manifest import RunManifest

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://attestable-audits.github.io/predicate/audit/v1"


@dataclass(frozen=True)
class Subject:
    name: str
    digest: dict[str, str]


@dataclass(frozen=True)
class Approval:
    role: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class PlatformInfo:
    name: str
    simulated: bool
    code_identity: str


@dataclass(frozen=True)
class SamplesDelivery:
    """Where the per-sample records went: HPKE-encrypted to the auditor's samples key."""

    recipient: str
    suite: str
    ciphertext_sha256: str


@dataclass(frozen=True)
class SamplesInfo:
    merkle_root: str      # hex RFC 9162 root over the records' canonical JSON
    count: int
    hashing: str
    record: str
    delivery: SamplesDelivery | None


@dataclass(frozen=True)
class Runtime:
    versions: dict[str, str]
    device: str
    dtype: str


@dataclass(frozen=True)
class AuditPredicate:
    manifest: RunManifest
    manifest_digest: str
    approvals: tuple[Approval, ...]
    platform: PlatformInfo
    results: dict[str, dict[str, Any]]   # lm-eval's aggregates per task
    n_samples: dict[str, dict[str, int]]
    configs: dict[str, Any]
    seeds: dict[str, int]
    samples: SamplesInfo
    runtime: Runtime
    started_at: str
    finished_at: str
    nonce: str                           # the run's client nonce, hex
    party_nonces: dict[str, str]


@dataclass(frozen=True)
class AuditStatement:
    """The in-toto Statement v1 the enclave signs. Built by `enclave/report.py`, parsed here."""

    subject: tuple[Subject, ...]
    predicate: AuditPredicate
    type: str = field(default=STATEMENT_TYPE, metadata={"json": "_type"})
    predicate_type: str = PREDICATE_TYPE

    def to_json(self) -> dict[str, Any]:
        return wire.to_json(self)

    @property
    def manifest(self) -> RunManifest:
        return self.predicate.manifest

    @property
    def manifest_digest(self) -> str:
        return self.predicate.manifest_digest

    @property
    def approvals(self) -> tuple[Approval, ...]:
        return self.predicate.approvals

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.predicate.results

    @property
    def nonce(self) -> str:
        return self.predicate.nonce

    @property
    def platform(self) -> str:
        return self.predicate.platform.name

    @property
    def code_identity(self) -> str:
        return self.predicate.platform.code_identity

    @property
    def subject_digest(self) -> str:
        return "sha256:" + self.subject[0].digest["sha256"]

    @property
    def finished_at(self) -> datetime:
        return _time(self.predicate.finished_at, "finishedAt")

    def digest_of(self, kind: str) -> str | None:
        return self.manifest.digest_of(kind)

    def party_key(self, role: str) -> bytes:
        return self.manifest.parties.key(role)


def _time(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"statement: predicate.{what} {text[:64]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ParseError(f"statement: predicate.{what} has no time zone")
    return when


def parse_statement(payload: bytes) -> AuditStatement:
    st = wire.from_json(AuditStatement, load_json(payload, "statement: payload"), "statement")
    if st.type != STATEMENT_TYPE:
        raise ParseError(f"statement: _type is not {STATEMENT_TYPE}")
    if st.predicate_type != PREDICATE_TYPE:
        raise ParseError(f"statement: predicateType is not {PREDICATE_TYPE}")
    if len(st.subject) != 1 or not isinstance(st.subject[0].digest.get("sha256"), str):
        raise ParseError("statement: expected exactly one subject (the model) with a sha256 digest")
    st.finished_at  # noqa: B018 - parses the time or raises ParseError
    if st.predicate.platform.code_identity != st.manifest.enclave.code_identity:
        raise ParseError(f"statement: platform code identity {st.predicate.platform.code_identity} differs from the "
                         f"manifest's {st.manifest.enclave.code_identity}")
    return st
