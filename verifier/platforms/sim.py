"""The simulated attester's evidence: signed in software, for development, tests and the demo.

It proves nothing about hardware. The payload says `"simulated": true` and carries a warning, every
verdict says SIMULATED, and no policy accepts it unless it sets `allow_simulated = true`.

blob = JSON {"payload": base64(canonical JSON), "signature": base64(Ed25519 over payload)}
payload = {"format", "simulated", "warning", "measurement", "report_data", "debug", "issued_at",
           "public_key"}   (the signer's raw Ed25519 public key, fresh per enclave boot)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verifier.errors import ParseError, PolicyError
from verifier.inputs import load_json
from verifier.models import Evidence, Verdict, b64d
from verifier.platforms import Bound, allowlist

NAME = "sim"
FORMAT = "attestable-audits/sim-evidence/v1"
WARNING = "SIMULATED EVIDENCE: NOT FROM A TEE, PROVES NOTHING ABOUT HARDWARE"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_IDENTITY = ("measurement",)


@dataclass(frozen=True)
class SimReport:
    measurement: str
    report_data: bytes
    debug: bool
    issued_at: datetime
    public_key: bytes
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class SimPolicy:
    measurements: allowlist.AllowList | None  # None: not pinned
    allow_debug: bool


def parse_policy(table: dict[str, Any]) -> SimPolicy:
    unknown = set(table) - {"measurements", "allow_debug"}
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))}")
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError("allow_debug must be true or false")
    return SimPolicy(allowlist.parse(table, "measurements", allowlist.hex_bytes(32)), allow_debug)


def baseline_policy(allow_debug: bool) -> None:
    """None: simulated evidence proves nothing, so only a policy saying `allow_simulated = true` accepts it."""
    return None


def is_pinned(policy: SimPolicy) -> bool:
    return policy.measurements is not None


def identity_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: claims.get(k) for k in _IDENTITY}


def parse(blob: bytes) -> SimReport:
    outer = load_json(blob, "sim evidence")
    if not isinstance(outer, dict) or set(outer) != {"payload", "signature"}:
        raise ParseError("sim evidence: expected an object with payload and signature")
    payload = b64d(outer["payload"], "sim evidence payload")
    signature = b64d(outer["signature"], "sim evidence signature")
    p = load_json(payload, "sim evidence payload")
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise ParseError(f"sim evidence: payload format is not {FORMAT}")
    if p.get("simulated") is not True:
        raise ParseError("sim evidence: payload does not say simulated = true")
    try:
        report_data = bytes.fromhex(p["report_data"])
        public_key = b64d(p["public_key"], "sim evidence public_key")
        issued = datetime.fromisoformat(p["issued_at"])
        measurement = p["measurement"]
        debug = p["debug"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"sim evidence: missing or malformed field ({exc})") from None
    if len(report_data) != 64 or len(public_key) != 32 or not isinstance(debug, bool) or not (
        isinstance(measurement, str) and _HEX64.match(measurement)
    ) or issued.tzinfo is None:
        raise ParseError("sim evidence: field of wrong size or type")
    return SimReport(measurement, report_data, debug, issued, public_key, payload, signature)


def verify(evidence: Evidence, *, at: datetime, policy: SimPolicy, verdict: Verdict) -> Bound:
    report = parse(evidence.blob)
    verdict.warn(WARNING)
    verdict.claims.update(
        simulated=True,
        warning=WARNING,
        measurement=report.measurement,
        report_data=report.report_data.hex(),
        debug=report.debug,
        issued_at=report.issued_at.isoformat(),
    )
    try:
        Ed25519PublicKey.from_public_bytes(report.public_key).verify(report.signature, report.payload)
        verdict.ok("sim signature", "Ed25519 signature by the simulator's boot key verifies (SIMULATED: no hardware root)")
    except InvalidSignature:
        verdict.fail("sim signature", "Ed25519 signature over the simulated report does not verify")
    verdict.check("issued before verification time", report.issued_at <= at,
                  f"issued {report.issued_at.isoformat()}", f"issued {report.issued_at.isoformat()}, after --at {at.isoformat()}")
    validate(report, policy, verdict)
    return Bound(report_data=report.report_data)


def validate(report: SimReport, policy: SimPolicy, verdict: Verdict) -> None:
    verdict.check("debug", policy.allow_debug or not report.debug, f"debug={report.debug}",
                  "report says debug mode and the policy forbids debug")
    allowlist.check(verdict, "measurement", report.measurement, policy.measurements)
