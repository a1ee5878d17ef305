"""Choosing the attester for `aaudit enclave serve --tee ... --gpu-evidence ...`.

`auto` picks the platform that is really present and never falls back to `sim`.
"""

from __future__ import annotations

from enclave.measure import code_identity
from enclave.tee import Attester, CompositeAttester
from verifier.errors import UnusableInput

TEE_CHOICES = ("auto", "sim", "sev-snp", "tdx", "nitro")
GPU_CHOICES = ("auto", "none", "nvidia")


class NoTeeError(UnusableInput):
    """The requested (or any, for auto) TEE is not present on this machine."""


def make_attester(tee: str, gpu_evidence: str = "none") -> CompositeAttester:
    if tee == "sim":
        from enclave.tee.sim import SimAttester

        cpu: Attester = SimAttester(measurement=code_identity())
    else:
        raise NoTeeError(f"--tee {tee}: hardware attesters are not available in this build")
    return CompositeAttester(cpu, [])
