"""Choosing the attester for `aaudit enclave serve --tee ... --gpu-evidence ...`.

`auto` picks the platform that is really present and never falls back to `sim`: with no TEE it
raises `NoTeeError` naming every place it looked. Detection only stats device nodes and, where a
configfs-tsm report root exists, reads its provider from a scratch entry, so it takes milliseconds
and imports nothing heavy. Every path is a parameter so tests can point selection at fakes.

    CPU   configfs-tsm provider sev_guest -> sev-snp   (kernel >= 6.7)
          configfs-tsm provider tdx_guest -> tdx
          /dev/sev-guest                  -> sev-snp through ioctls (older kernels)
          /dev/nsm                        -> nitro
    GPU   auto: NVIDIA evidence when an NVIDIA GPU runs in confidential-computing mode, else none
"""

from __future__ import annotations

import os
from typing import Any

from enclave.measure import code_identity
from enclave.tee import AttestationError, Attester, CompositeAttester, GpuAttester
from enclave.tee.configfs_tsm import (
    DEFAULT_TSM_ROOT,
    PROVIDERS,
    ConfigfsTsmAttester,
    TsmFs,
    TsmReportClient,
)
from enclave.tee.nitro import DEFAULT_DEVICE as DEFAULT_NSM
from enclave.tee.nvidia import DEFAULT_CONTROL_DEVICE
from enclave.tee.sev_guest import DEFAULT_DEVICE as DEFAULT_SEV_GUEST
from verifier.errors import UnusableInput

TEE_CHOICES = ("auto", "sim", "sev-snp", "tdx", "nitro")
GPU_CHOICES = ("auto", "none", "nvidia")
DEFAULT_TDX_GUEST = "/dev/tdx_guest"


class NoTeeError(UnusableInput):
    """The requested (or any, for auto) TEE is not present on this machine."""


def _tsm_provider(root: str, fs: TsmFs | None) -> tuple[str | None, str]:
    """(provider name or None, what we found at `root`, for messages)."""
    if not os.path.isdir(root):
        return None, f"{root} (absent)"
    try:
        provider = TsmReportClient(root, fs).provider()
    except AttestationError as exc:
        return None, f"{root} ({exc})"
    if provider not in PROVIDERS:
        return None, f"{root} (provider {provider!r} is not supported)"
    return provider, f"{root} (provider {provider})"


def _state(path: str) -> str:
    return f"{path} ({'present' if os.path.exists(path) else 'absent'})"


def _cpu_attester(tee: str, *, tsm_root: str, sev_guest_dev: str, tdx_guest_dev: str, nsm_dev: str,
                  tsm_fs: TsmFs | None) -> Attester:
    if tee == "sim":
        from enclave.tee.sim import SimAttester

        return SimAttester(measurement=code_identity())
    if tee == "nitro":
        if not os.path.exists(nsm_dev):
            raise NoTeeError(f"--tee nitro: no Nitro Secure Module at {nsm_dev}")
        from enclave.tee.nitro import NitroAttester

        return NitroAttester(nsm_dev)

    provider, tsm_note = _tsm_provider(tsm_root, tsm_fs)
    if provider is not None and (tee == "auto" or PROVIDERS[provider] == tee):
        return ConfigfsTsmAttester(PROVIDERS[provider], tsm_root, fs=tsm_fs)
    if tee in ("auto", "sev-snp") and os.path.exists(sev_guest_dev):
        from enclave.tee.sev_guest import SevGuestAttester

        return SevGuestAttester(sev_guest_dev)
    if tee == "sev-snp":
        raise NoTeeError(f"--tee sev-snp: no SEV-SNP guest interface; looked at configfs-tsm {tsm_note} "
                         f"and {_state(sev_guest_dev)}")
    if tee == "tdx":
        raise NoTeeError(f"--tee tdx: TDX quotes come from configfs-tsm (kernel >= 6.7, provider tdx_guest); "
                         f"looked at {tsm_note}; TDX guest device {_state(tdx_guest_dev)}")
    if os.path.exists(tdx_guest_dev):
        raise NoTeeError(f"--tee auto: {tdx_guest_dev} exists but TDX quotes need configfs-tsm, "
                         f"which is unusable: {tsm_note}")
    if os.path.exists(nsm_dev):
        from enclave.tee.nitro import NitroAttester

        return NitroAttester(nsm_dev)
    raise NoTeeError(f"--tee auto: no TEE found on this machine; looked for a configfs-tsm provider at "
                     f"{tsm_note}, SEV-SNP guest device {_state(sev_guest_dev)}, TDX guest device "
                     f"{_state(tdx_guest_dev)}, Nitro Secure Module {_state(nsm_dev)}. "
                     "For development without hardware pass --tee sim explicitly.")


def _gpu_attesters(gpu_evidence: str, *, nvidia_dev: str, nvml: Any | None) -> list[GpuAttester]:
    if gpu_evidence == "none":
        return []
    from enclave.tee.nvidia import (
        NvidiaGpuAttester,
        cc_enabled,
        load_nvml,
        nvidia_present,
    )

    if nvml is None and not nvidia_present(nvidia_dev):
        if gpu_evidence == "auto":
            return []
        raise NoTeeError(f"--gpu-evidence nvidia: no NVIDIA driver here ({nvidia_dev} absent)")
    try:
        lib = nvml if nvml is not None else load_nvml()
        if gpu_evidence == "auto" and not cc_enabled(lib):
            return []
        return [NvidiaGpuAttester(lib)]
    except AttestationError as exc:
        raise NoTeeError(f"--gpu-evidence {gpu_evidence}: {exc}") from None


def make_attester(
    tee: str,
    gpu_evidence: str = "none",
    *,
    tsm_root: str = DEFAULT_TSM_ROOT,
    sev_guest_dev: str = DEFAULT_SEV_GUEST,
    tdx_guest_dev: str = DEFAULT_TDX_GUEST,
    nsm_dev: str = DEFAULT_NSM,
    nvidia_dev: str = DEFAULT_CONTROL_DEVICE,
    tsm_fs: TsmFs | None = None,
    nvml: Any | None = None,
) -> CompositeAttester:
    """The attester for `--tee` / `--gpu-evidence`; NoTeeError (exit 2) when it is not available here."""
    if tee not in TEE_CHOICES:
        raise UnusableInput(f"--tee {tee!r}: choose one of {', '.join(TEE_CHOICES)}")
    if gpu_evidence not in GPU_CHOICES:
        raise UnusableInput(f"--gpu-evidence {gpu_evidence!r}: choose one of {', '.join(GPU_CHOICES)}")
    cpu = _cpu_attester(tee, tsm_root=tsm_root, sev_guest_dev=sev_guest_dev, tdx_guest_dev=tdx_guest_dev,
                        nsm_dev=nsm_dev, tsm_fs=tsm_fs)
    return CompositeAttester(cpu, _gpu_attesters(gpu_evidence, nvidia_dev=nvidia_dev, nvml=nvml))
