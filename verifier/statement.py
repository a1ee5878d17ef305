"""The audit statement (in-toto Statement v1): one typed model; its run manifest is `verifier.manifest`'s.

The enclave builds these records and the verifier parses them with this one module, so the two
can never disagree on a field.

Its subjects are the model's files, one in-toto ResourceDescriptor each, in listing order:
`{"name": "model/<path>", "digest": {"sha256": <file sha256>}, "annotations": {"size": <bytes>}}`.
Any tool that matches subjects by sha256 (and anyone holding the files and `sha256sum`) can check
them; the project's own model digest stays the run manifest's `assets.model.digest`, and the
subjects recomputed into the canonical listing must hash to it (`AuditStatement.subject_digest`,
checked by the verifier's "model subjects" step), so the two can never disagree.

When the spec names judges, the auditor's judge models follow the model's files in the same form,
`{"name": "judge/<judge>/<path>", ...}` for each file of the judges asset (whose listing paths are
`<judge>/<path>`), sorted by name; recomputed into a listing they must hash to the manifest's
`assets.judges.digest` (`AuditStatement.judges_subject_digest`, the "judge subjects" step).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from verifier import wire
from verifier.errors import ParseError
from verifier.inputs import load_json
from verifier.manifest import RunManifest
from verifier.models import digest_of_listing

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://attestable-audits.github.io/predicate/audit/v2"
MODEL_SUBJECT_PREFIX = "model/"
JUDGE_SUBJECT_PREFIX = "judge/"
_SUBJECT_PREFIXES = (MODEL_SUBJECT_PREFIX, JUDGE_SUBJECT_PREFIX)  # subject order: model files, then judge files
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_JSON_INT = 2**53 - 1   # RFC 8785 represents integers exactly up to here


@dataclass(frozen=True)
class Subject:
    name: str
    digest: dict[str, str]


@dataclass(frozen=True)
class FileAnnotations:
    """The in-toto `annotations` of a model file subject: its size, which the canonical listing
    (and so the model digest) includes besides path and sha256."""

    size: int


@dataclass(frozen=True)
class FileSubject:
    """One model file as an in-toto ResourceDescriptor: "model/<relative path>", sha256, size (or
    one file of the judges asset: "judge/<judge>/<path>")."""

    name: str
    digest: dict[str, str]
    annotations: FileAnnotations

    @property
    def path(self) -> str:
        """The file's path in its asset's listing: the name without `model/` or `judge/`."""
        return self.name.partition("/")[2]

    def listing_entry(self) -> dict[str, Any]:
        """This file's entry in the canonical listing (`sealing/digest.py`)."""
        return {"path": self.path, "sha256": self.digest["sha256"], "size": self.annotations.size}


def model_subjects(listing: Iterable[Mapping[str, Any]]) -> tuple[FileSubject, ...]:
    """The statement's subjects for a model's canonical listing, in listing order."""
    return _file_subjects(MODEL_SUBJECT_PREFIX, listing)


def judge_subjects(listing: Iterable[Mapping[str, Any]]) -> tuple[FileSubject, ...]:
    """The subjects for the judges asset's canonical listing (paths `<judge>/<path>`), in listing
    order; they follow the model's subjects."""
    return _file_subjects(JUDGE_SUBJECT_PREFIX, listing)


def _file_subjects(prefix: str, listing: Iterable[Mapping[str, Any]]) -> tuple[FileSubject, ...]:
    return tuple(FileSubject(prefix + e["path"], {"sha256": e["sha256"]}, FileAnnotations(e["size"]))
                 for e in sorted(listing, key=lambda e: e["path"]))


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
class EngineInfo:
    """The lm-eval model class that ran the audit ("hf": HFLM over transformers, "vllm": VLLM),
    the version of the library under it, and its settings as applied: the spec's `[engine]` values
    with defaults filled in, plus what the engine chose itself (`detected_batch_sizes` with
    `batch_size = "auto"` on hf, the `max_model_len` vLLM used, the `devices` a parallelized model
    spans)."""

    name: str
    version: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class JudgeInfo:
    """A judge model the run's judge metrics used: its [[judge]] name and kind, and the dtype it
    was loaded in ("" when no document needed it). Its digest is in the statement's subjects."""

    name: str
    kind: str
    dtype: str


@dataclass(frozen=True)
class Runtime:
    """Library versions, the device and dtype the weights were loaded on and in, and the judges
    (absent when the spec names none)."""

    versions: dict[str, str]
    device: str
    dtype: str
    engine: EngineInfo
    judges: tuple[JudgeInfo, ...] | None = field(default=None, metadata={"optional": True})


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

    subject: tuple[FileSubject, ...]
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
    def model_listing(self) -> list[dict[str, Any]]:
        """The model's canonical listing, read back from the subjects."""
        return [s.listing_entry() for s in self.subject if s.name.startswith(MODEL_SUBJECT_PREFIX)]

    @property
    def judges_listing(self) -> list[dict[str, Any]]:
        """The judges asset's canonical listing, read back from the `judge/` subjects (empty: no judges)."""
        return [s.listing_entry() for s in self.subject if s.name.startswith(JUDGE_SUBJECT_PREFIX)]

    @property
    def subject_digest(self) -> str:
        """The project's model digest of the files the subjects name; a statement that verifies has
        it equal to the manifest's model digest (the "model subjects" step)."""
        return digest_of_listing(self.model_listing)

    @property
    def judges_subject_digest(self) -> str | None:
        """The judges digest of the files the `judge/` subjects name, None when there are none; a
        statement that verifies has it equal to the manifest's judges digest (the "judge subjects" step)."""
        listing = self.judges_listing
        return digest_of_listing(listing) if listing else None

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


def _check_subjects(subjects: tuple[FileSubject, ...]) -> None:
    """Subjects are model files, then judge files, each with one sha256 and a size, named in strict
    listing order within each (so one listing has exactly one encoding and no file is named twice)."""
    if not any(s.name.startswith(MODEL_SUBJECT_PREFIX) for s in subjects):
        raise ParseError("statement: no subject; expected one per model file")
    previous: tuple[int, str] = (0, "")
    for i, s in enumerate(subjects):
        where = f"statement: subject[{i}]"
        group = next((g for g, prefix in enumerate(_SUBJECT_PREFIXES) if s.name.startswith(prefix)), None)
        judge, slash, rest = s.path.partition("/")
        if group is None or not s.path or (group == 1 and not (judge and slash and rest)):
            raise ParseError(f"{where}: name must be {MODEL_SUBJECT_PREFIX}<path of a model file> or "
                             f"{JUDGE_SUBJECT_PREFIX}<judge>/<path of its file>")
        if set(s.digest) != {"sha256"} or not _HEX64.fullmatch(s.digest["sha256"]):
            raise ParseError(f"{where}: digest must be exactly {{\"sha256\": <64 lowercase hex>}}")
        if not 0 <= s.annotations.size <= _MAX_JSON_INT:
            raise ParseError(f"{where}: annotations.size must be a byte count from 0 to 2**53 - 1")
        if (group, s.name) <= previous:
            raise ParseError(f"{where}: subjects must be sorted by name, each file once (the model's files, then "
                             "the judges')")
        previous = (group, s.name)


def parse_statement(payload: bytes) -> AuditStatement:
    st = wire.from_json(AuditStatement, load_json(payload, "statement: payload"), "statement")
    if st.type != STATEMENT_TYPE:
        raise ParseError(f"statement: _type is not {STATEMENT_TYPE}")
    if st.predicate_type != PREDICATE_TYPE:
        raise ParseError(f"statement: predicateType is not {PREDICATE_TYPE}")
    _check_subjects(st.subject)
    st.finished_at  # noqa: B018 - parses the time or raises ParseError
    if st.predicate.platform.code_identity != st.manifest.enclave.code_identity:
        raise ParseError(f"statement: platform code identity {st.predicate.platform.code_identity} differs from the "
                         f"manifest's {st.manifest.enclave.code_identity}")
    return st
