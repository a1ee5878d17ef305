"""Records shared by every layer: evidence as it travels, steps of a verdict, the verdict itself.

Evidence is carried in bundles and over gRPC as JSON (`Evidence.to_json` / `from_json`): raw bytes
in base64, so the verifier checks exactly the bytes the hardware produced.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import rfc8785

from verifier.errors import ParseError
from verifier.inputs import load_json

PLATFORMS = ("sim", "sev-snp", "tdx", "nitro", "nvidia")
CPU_PLATFORMS = ("sim", "sev-snp", "tdx", "nitro")
GPU_PLATFORMS = ("nvidia",)


def b64d(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ParseError(f"{what}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(f"{what}: not valid base64 ({exc})") from None


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Evidence:
    """One platform's attestation evidence, exactly as produced, plus what is needed to check it.

    `blob` is the raw report / quote / document; `certs` are DER certificates in any order
    (SEV-SNP VCEK/VLEK/ASK/ARK, NVIDIA device chain); `collateral` is platform collateral bytes
    (TDX: dcap-qvl's JSON). `gpu` holds composite GPU evidence taken with a nonce bound to this
    evidence's report data; it is never accepted alone.
    """

    platform: str
    blob: bytes
    certs: tuple[bytes, ...] = ()
    collateral: bytes | None = None
    gpu: tuple["Evidence", ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"platform": self.platform, "blob": b64e(self.blob)}
        if self.certs:
            out["certs"] = [b64e(c) for c in self.certs]
        if self.collateral is not None:
            out["collateral"] = b64e(self.collateral)
        if self.gpu:
            out["gpu"] = [g.to_json() for g in self.gpu]
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "evidence") -> "Evidence":
        if not isinstance(obj, dict):
            raise ParseError(f"{what}: expected an object")
        platform = obj.get("platform")
        if platform not in PLATFORMS:
            raise ParseError(f"{what}: unknown platform {platform!r} (known: {', '.join(PLATFORMS)})")
        certs = obj.get("certs", [])
        if not isinstance(certs, list):
            raise ParseError(f"{what}.certs: expected a list")
        gpu = obj.get("gpu", [])
        if not isinstance(gpu, list):
            raise ParseError(f"{what}.gpu: expected a list")
        collateral = obj.get("collateral")
        return cls(
            platform=platform,
            blob=b64d(obj.get("blob"), f"{what}.blob"),
            certs=tuple(b64d(c, f"{what}.certs[{i}]") for i, c in enumerate(certs)),
            collateral=None if collateral is None else b64d(collateral, f"{what}.collateral"),
            gpu=tuple(Evidence.from_json(g, f"{what}.gpu[{i}]") for i, g in enumerate(gpu)),
        )

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Evidence":
        return cls.from_json(load_json(data, "evidence"))  # the strict reader every verifier input uses


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON, the one form of every digest and Merkle leaf over JSON here.

    Implementations in other languages reproduce it with any JCS library: keys sorted by UTF-16
    code units, no whitespace, numbers in ECMAScript form (1.0 is written 1), integers within
    +-(2**53 - 1), strings in UTF-8 with the minimal escapes.
    """
    try:
        return rfc8785.dumps(obj)
    except rfc8785.IntegerDomainError:
        raise ParseError("an integer is beyond +-(2**53 - 1), which RFC 8785 JSON cannot represent exactly") from None
    except rfc8785.FloatDomainError:
        raise ParseError("a number is NaN or infinite, which JSON cannot represent") from None
    except rfc8785.CanonicalizationError as exc:
        raise ParseError(f"no RFC 8785 canonical form: {exc}") from None
    except RecursionError:
        raise ParseError("structure nested too deeply to have a canonical form") from None


def digest_of_listing(entries: list[dict[str, Any]]) -> str:
    """An asset's canonical digest from its listing (`{"path", "sha256", "size"}` per file, the
    format `sealing/digest.py` defines): "sha256:" + hex SHA-256 of the canonical JSON of the
    entries sorted by path. Entries are sorted here, so callers cannot get it wrong; the verifier
    recomputes a model digest from the statement's subjects with it."""
    ordered = sorted(entries, key=lambda e: e["path"])
    return "sha256:" + hashlib.sha256(canonical_json(ordered)).hexdigest()


LOG_ENTRY_KEY = "logEntry"


def log_entry_bytes(bundle: dict[str, Any]) -> bytes:
    """The bytes a transparency log stores for a bundle: the bundle without its own log entry."""
    return canonical_json({k: v for k, v in bundle.items() if k != LOG_ENTRY_KEY})


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Step:
    """One line of a verdict: what was checked, how it went, and why."""

    name: str
    status: Status
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"step": self.name, "result": self.status.value, "reason": self.reason}


@dataclass
class Verdict:
    """The outcome of a verification: steps in order, and the claims read from the evidence.

    `verified` holds only when no step failed and at least one step succeeded, so an empty or
    all-skipped verdict can never pass. `unpinned` names what the policy left open (a bundle's
    "model digest", "dataset digest", "spec digest", "code identity", "log"): the checks passed,
    but for any value there; `accepted` is what a caller that demands pinning should use.
    """

    subject: str
    steps: list[Step] = field(default_factory=list)
    claims: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # shown beside the verdict line, e.g. SIMULATED
    unpinned: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def ok(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, Status.OK, reason))

    def fail(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, Status.FAILED, reason))

    def skip(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, Status.SKIPPED, reason))

    def check(self, name: str, condition: bool, ok_reason: str, fail_reason: str) -> bool:
        (self.ok if condition else self.fail)(name, ok_reason if condition else fail_reason)
        return condition

    def extend(self, other: "Verdict", prefix: str = "") -> None:
        self.steps.extend(Step(prefix + s.name, s.status, s.reason) for s in other.steps)
        for w in other.warnings:
            self.warn(w)

    @property
    def verified(self) -> bool:
        return bool(self.steps) and all(s.status is not Status.FAILED for s in self.steps) and any(
            s.status is Status.OK for s in self.steps
        )

    def accepted(self, allow_unpinned: bool = False) -> bool:
        """Verified, and either nothing is unpinned or the caller accepts that."""
        return self.verified and (allow_unpinned or not self.unpinned)

    @property
    def failures(self) -> list[Step]:
        return [s for s in self.steps if s.status is Status.FAILED]

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "subject": self.subject,
            "warnings": self.warnings,
            "unpinned": self.unpinned,
            "steps": [s.to_json() for s in self.steps],
            "claims": self.claims,
        }
