"""One module per evidence type, each in three layers (after google/go-sev-guest):

parse    bytes -> typed record, strict bounds, `ParseError` on anything malformed;
verify   signatures and certificate chains up to the pinned roots, at a given time;
validate claims against a platform policy (measurements, TCB, debug, ...).

Every platform module exports the same four names, so callers never special-case a platform:

    NAME: str
    parse_policy(table: dict) -> P          # the policy file's [NAME] table; PolicyError if malformed
    baseline_policy(allow_debug: bool) -> P # no policy file: authentic + not debug; measurements unpinned
    verify(evidence, *, at, policy, verdict) -> Bound
        # appends steps and claims to `verdict`; returns what the evidence binds (report data, nonce)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from verifier.errors import UnusableInput
from verifier.models import PLATFORMS

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


def get(name: str) -> ModuleType:
    if name not in _MODULES:
        raise UnusableInput(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})")
    return importlib.import_module(_MODULES[name])
