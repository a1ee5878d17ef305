"""One module per evidence type, each in three layers (after google/go-sev-guest):

parse    bytes -> typed record, strict bounds, `ParseError` on anything malformed;
verify   signatures and certificate chains up to the pinned roots, at a given time;
validate claims against a platform policy (measurements, TCB, debug, ...).

Every platform module implements `Platform` (a module satisfies a Protocol, PEP 544), so callers
never special-case a platform: `get(name)` returns the module, typed as `Platform`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Protocol, cast, runtime_checkable

from verifier.errors import UnusableInput
from verifier.models import PLATFORMS, Evidence, Verdict

_MODULES = {
    "sim": "verifier.platforms.sim",
    "sev-snp": "verifier.platforms.snp",
    "tdx": "verifier.platforms.tdx",
    "nitro": "verifier.platforms.nitro",
    "nvidia": "verifier.platforms.nvidia",
}


@dataclass(frozen=True)
class Bound:
    """What a piece of evidence commits to, for binding checks by the caller.

    `report_data`: the 64 bytes of caller data (SNP/TDX report data, Nitro user_data, sim).
    `nonce`: a freshness nonce carried separately (Nitro `nonce`, NVIDIA SPDM request nonce).
    """

    report_data: bytes | None = None
    nonce: bytes | None = None


@runtime_checkable
class Platform(Protocol):
    """The contract of a platform module. `P` below is the module's own frozen policy record."""

    NAME: str  # the platform's name in evidence, policies and verdicts

    def parse(self, blob: bytes) -> Any:
        """The evidence bytes as the module's typed record; `ParseError` on anything malformed."""

    def parse_policy(self, table: dict[str, Any]) -> Any:
        """The policy file's table for this platform as P; `PolicyError` if malformed."""

    def baseline_policy(self, allow_debug: bool) -> Any | None:
        """P used without a policy file (authentic, debug per flag, nothing pinned), or None when
        this platform is accepted only by a policy file that names it (the simulator)."""

    def verify(self, evidence: Evidence, *, at: datetime, policy: Any, verdict: Verdict) -> Bound:
        """Parse, check authenticity at `at`, then `validate`; append steps and claims to `verdict`
        and return what the evidence binds."""

    def validate(self, report: Any, policy: Any, verdict: Verdict) -> None:
        """Append the steps that compare the parsed record's claims with policy P."""

    def identity_claims(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """Out of the claims `verify` wrote, those that identify one enclave image (two pieces of
        evidence from one boot agree on them; a missing claim is None); empty if the platform
        cannot identify an enclave image on its own."""

    def is_pinned(self, policy: Any) -> bool:
        """Whether P pins the code the enclave runs (its launch measurement or equivalent)."""


def get(name: str) -> Platform:
    if name not in _MODULES:
        raise UnusableInput(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})")
    return cast(Platform, importlib.import_module(_MODULES[name]))
