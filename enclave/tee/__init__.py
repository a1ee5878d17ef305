"""Attesters: one module per platform. Each turns 64 bytes of report data into `Evidence`.

Interface (every attester):

    class Attester(Protocol):
        platform: str                          # "sim", "sev-snp", "tdx", "nitro"
        def attest(self, report_data: bytes) -> Evidence   # exactly 64 bytes in

    class GpuAttester(Protocol):
        platform: str                          # "nvidia"
        def attest(self, nonce: bytes) -> list[Evidence]    # 32-byte nonce, one Evidence per GPU

`composite(cpu, gpus, report_data)` takes CPU evidence for `report_data` and attaches GPU evidence
taken with `verifier.binding.gpu_nonce(report_data)`, so both are bound to the same session.
Every device path is a constructor parameter, so tests can point an attester at a fake tree.

Modules: `sim` (software, development only), `configfs_tsm` (SEV-SNP and TDX, kernel >= 6.7),
`sev_guest` (SEV-SNP ioctls, older kernels), `snp_certs` (the host's SNP certificate table),
`nitro` (AWS Nitro Secure Module), `nvidia` (GPU evidence through NVML), `select` (`--tee` and
`--gpu-evidence` to a `CompositeAttester`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from verifier.binding import gpu_nonce
from verifier.errors import AAuditError
from verifier.models import Evidence

REPORT_DATA_LEN = 64


class AttestationError(AAuditError):
    """The platform could not produce evidence (device missing, firmware error, busy): exit 1, not a
    problem with anything the user gave."""


class Attester(Protocol):
    platform: str

    def attest(self, report_data: bytes) -> Evidence: ...


class GpuAttester(Protocol):
    platform: str

    def attest(self, nonce: bytes) -> list[Evidence]: ...


class CompositeAttester:
    """A CPU attester with optional GPU attesters whose evidence is bound to the CPU report data."""

    def __init__(self, cpu: Attester, gpus: list[GpuAttester] | None = None) -> None:
        self.cpu = cpu
        self.gpus = gpus or []
        self.platform = cpu.platform

    def attest(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        evidence = self.cpu.attest(report_data)
        gpu_evidence: list[Evidence] = []
        for g in self.gpus:
            gpu_evidence.extend(g.attest(gpu_nonce(report_data)))
        return replace(evidence, gpu=tuple(gpu_evidence)) if gpu_evidence else evidence
