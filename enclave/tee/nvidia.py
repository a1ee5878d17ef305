"""NVIDIA GPU evidence (Hopper, Blackwell) through NVML, as composite evidence beside a CPU TEE.

For each GPU, `nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)` returns the SPDM
GET_MEASUREMENTS request (carrying our 32-byte nonce) followed by the signed response, and
`nvmlDeviceGetConfComputeGpuCertificate(handle)` the device's attestation certificate chain as
concatenated PEM, leaf first (as nvtrust's local verifier reads it). The evidence is
Evidence("nvidia", blob=request+response bytes, certs=chain as DER, leaf first). The nonce is
`verifier.binding.gpu_nonce(cpu report data)`, supplied by `CompositeAttester`, so GPU evidence is
only ever checked as part of CPU evidence.

`nvml` is the `pynvml` module of `nvidia-ml-py` unless a test passes a stand-in with the same
functions and result structures.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from enclave.tee import AttestationError
from verifier.binding import NONCE_LEN
from verifier.models import Evidence

DEFAULT_CONTROL_DEVICE = "/dev/nvidiactl"


def load_nvml() -> Any:
    """Import pynvml and initialise NVML; AttestationError saying what is missing otherwise."""
    try:
        import pynvml
    except ImportError:
        raise AttestationError("NVIDIA GPU evidence needs the `nvidia-ml-py` package (module pynvml)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise AttestationError(f"cannot initialise NVML (is the NVIDIA driver loaded?): {exc}") from None
    return pynvml


def cc_enabled(nvml: Any) -> bool:
    """True when the driver runs the GPUs in confidential-computing mode."""
    try:
        return nvml.nvmlSystemGetConfComputeState().ccFeature == nvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    except nvml.NVMLError as exc:
        raise AttestationError(f"NVML cannot report the confidential-computing state: {exc}") from None


def nvidia_present(control_device: str = DEFAULT_CONTROL_DEVICE) -> bool:
    """Cheap presence test (no library load): the NVIDIA driver's control device exists."""
    return os.path.exists(control_device)


def _pem_chain(data: bytes, where: str) -> tuple[bytes, ...]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(data.rstrip(b"\x00"))
    except ValueError as exc:
        raise AttestationError(f"{where}: certificate chain is not PEM ({exc})") from None
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def _bounded(array: Any, size: int, what: str) -> bytes:
    if not 0 < size <= len(array):
        raise AttestationError(f"NVML reports a {size}-byte {what}; its buffer holds {len(array)}")
    return bytes(array[:size])


class NvidiaGpuAttester:
    """One Evidence per GPU in confidential-computing mode."""

    platform = "nvidia"

    def __init__(self, nvml: Any | None = None, indices: Sequence[int] | None = None) -> None:
        self.nvml = nvml if nvml is not None else load_nvml()
        if not cc_enabled(self.nvml):
            raise AttestationError("NVIDIA confidential-computing mode is off: no GPU evidence can be produced "
                                   "(enable it with nvidia_gpu_tools.py --set-cc-mode on, or use --gpu-evidence none)")
        try:
            count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            raise AttestationError(f"NVML cannot count GPUs: {exc}") from None
        self.indices = tuple(range(count)) if indices is None else tuple(indices)
        if not self.indices:
            raise AttestationError("NVML reports no GPU to attest")
        bad = [i for i in self.indices if not 0 <= i < count]
        if bad:
            raise AttestationError(f"GPU index {bad[0]} out of range: NVML reports {count} GPU(s)")

    def attest(self, nonce: bytes) -> list[Evidence]:
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"GPU nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
        return [self._one(i, nonce) for i in self.indices]

    def _one(self, index: int, nonce: bytes) -> Evidence:
        where = f"GPU {index}"
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        except nvml.NVMLError as exc:
            raise AttestationError(f"{where}: NVML attestation call failed: {exc}") from None
        blob = _bounded(report.attestationReport, report.attestationReportSize, f"{where} attestation report")
        chain = _bounded(cert.attestationCertChain, cert.attestationCertChainSize, f"{where} certificate chain")
        return Evidence("nvidia", blob, certs=_pem_chain(chain, where))
