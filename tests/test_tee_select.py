"""`make_attester`: auto picks what is really present, never sim; explicit choices fail clearly."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone

import pytest

from enclave.measure import code_identity
from enclave.tee.configfs_tsm import ConfigfsTsmAttester
from enclave.tee.nitro import NitroAttester
from enclave.tee.select import NoTeeError, make_attester
from enclave.tee.sev_guest import SevGuestAttester
from enclave.tee.sim import SimAttester
from tests.tee_fakes import FakeTsm
from verifier.errors import UnusableInput

DEFAULT_PATHS = ("/sys/kernel/config/tsm/report", "/dev/sev-guest", "/dev/tdx_guest", "/dev/nsm")
REPORT_DATA = hashlib.sha512(b"select").digest()


class Paths:
    """Device paths under a temporary directory; `make(...)` creates the named ones."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.kw = dict(tsm_root=str(tmp_path / "tsm" / "report"), sev_guest_dev=str(tmp_path / "sev-guest"),
                       tdx_guest_dev=str(tmp_path / "tdx_guest"), nsm_dev=str(tmp_path / "nsm"),
                       nvidia_dev=str(tmp_path / "nvidiactl"))

    def make(self, *names: str) -> "Paths":
        for name in names:
            (self.tmp / name).write_bytes(b"")
        return self

    def tsm(self, provider: str) -> dict:
        fake = FakeTsm(self.tmp / "tsm" / "report", provider, lambda inblob, privlevel: b"")
        return {**self.kw, "tsm_fs": fake}


def test_auto_on_this_machine_raises_quickly_naming_every_path():
    if any(os.path.exists(p) for p in DEFAULT_PATHS):
        pytest.skip("this machine has a TEE interface")
    start = time.perf_counter()
    with pytest.raises(NoTeeError) as info:
        make_attester("auto")
    assert time.perf_counter() - start < 2.0
    assert isinstance(info.value, UnusableInput), "NoTeeError must map to exit 2"
    for path in DEFAULT_PATHS:
        assert f"{path} (absent)" in str(info.value)
    assert "--tee sim" in str(info.value) and "no TEE found" in str(info.value)


def test_auto_picks_configfs_snp_and_tdx(tmp_path):
    p = Paths(tmp_path)
    a = make_attester("auto", **p.tsm("sev_guest"))
    assert isinstance(a.cpu, ConfigfsTsmAttester) and a.platform == "sev-snp" and a.gpus == []
    b = make_attester("auto", **p.tsm("tdx_guest"))
    assert isinstance(b.cpu, ConfigfsTsmAttester) and b.platform == "tdx"
    assert os.listdir(tmp_path / "tsm" / "report") == [], "the provider probe removes its entry"


def test_auto_falls_back_to_sev_guest_and_nitro(tmp_path):
    p = Paths(tmp_path)
    assert isinstance(make_attester("auto", **p.make("nsm").kw).cpu, NitroAttester)
    a = make_attester("auto", **p.make("sev-guest").kw)
    assert isinstance(a.cpu, SevGuestAttester) and a.cpu.device == p.kw["sev_guest_dev"]


def test_auto_with_tdx_device_but_no_configfs(tmp_path):
    p = Paths(tmp_path).make("tdx_guest")
    with pytest.raises(NoTeeError, match=r"tdx_guest exists but TDX quotes need configfs-tsm.*report \(absent\)"):
        make_attester("auto", **p.kw)


def test_auto_with_unsupported_provider(tmp_path):
    p = Paths(tmp_path)
    with pytest.raises(NoTeeError, match="provider 'arm_cca_guest' is not supported"):
        make_attester("auto", **p.tsm("arm_cca_guest"))


def test_auto_nothing_present_names_the_paths(tmp_path):
    p = Paths(tmp_path)
    with pytest.raises(NoTeeError) as info:
        make_attester("auto", **p.kw)
    for key in ("tsm_root", "sev_guest_dev", "tdx_guest_dev", "nsm_dev"):
        assert f"{p.kw[key]} (absent)" in str(info.value)


def test_explicit_choices(tmp_path):
    p = Paths(tmp_path)
    assert make_attester("sev-snp", **p.tsm("sev_guest")).platform == "sev-snp"
    with pytest.raises(NoTeeError, match=r"--tee tdx: .*provider sev_guest"):
        make_attester("tdx", **p.tsm("sev_guest"))
    with pytest.raises(NoTeeError, match=r"--tee sev-snp: no SEV-SNP guest interface.*sev-guest \(absent\)"):
        make_attester("sev-snp", **p.tsm("tdx_guest"))
    with pytest.raises(NoTeeError, match=r"--tee nitro: no Nitro Secure Module at .*/nsm"):
        make_attester("nitro", **p.kw)
    assert isinstance(make_attester("sev-snp", **p.make("sev-guest").kw).cpu, SevGuestAttester)
    with pytest.raises(UnusableInput, match="--tee 'sgx'"):
        make_attester("sgx")
    with pytest.raises(UnusableInput, match="--gpu-evidence 'amd'"):
        make_attester("sim", "amd")


def test_sim_is_unchanged():
    pytest.importorskip("verifier.platforms.sim")
    from verifier.evidence import verify_evidence
    from verifier.policy import parse

    a = make_attester("sim")
    assert isinstance(a.cpu, SimAttester) and a.gpus == []
    ev = a.attest(REPORT_DATA)
    verdict, _ = verify_evidence(ev, at=datetime.now(timezone.utc), policy=parse({"allow_simulated": True}),
                                 expected_report_data=REPORT_DATA)
    assert verdict.verified and verdict.claims["measurement"] == code_identity()


def test_gpu_selection(tmp_path):
    p = Paths(tmp_path)
    assert make_attester("sim", "none", **p.kw).gpus == []
    assert make_attester("sim", "auto", **p.kw).gpus == [], "no NVIDIA driver: auto means none"
    with pytest.raises(NoTeeError, match=r"--gpu-evidence nvidia: no NVIDIA driver here \(.*nvidiactl absent\)"):
        make_attester("sim", "nvidia", **p.kw)


def test_gpu_selection_with_nvml(tmp_path):
    pytest.importorskip("pynvml")
    from tests.tee_fakes import FakeNvml, hopper_vector

    p = Paths(tmp_path)
    report, chain = hopper_vector()
    a = make_attester("sim", "auto", nvml=FakeNvml(report, chain), **p.kw)
    assert [g.platform for g in a.gpus] == ["nvidia"]
    assert make_attester("sim", "auto", nvml=FakeNvml(report, chain, cc=False), **p.kw).gpus == []
    with pytest.raises(NoTeeError, match="--gpu-evidence nvidia: NVIDIA confidential-computing mode is off"):
        make_attester("sim", "nvidia", nvml=FakeNvml(report, chain, cc=False), **p.kw)
    assert [g.platform for g in make_attester("sim", "nvidia", nvml=FakeNvml(report, chain), **p.kw).gpus] == ["nvidia"]


def test_gpu_auto_with_driver_node_but_no_usable_nvml(tmp_path):
    pytest.importorskip("pynvml")
    p = Paths(tmp_path).make("nvidiactl")
    with pytest.raises(NoTeeError, match="--gpu-evidence auto: cannot initialise NVML"):
        make_attester("sim", "auto", **p.kw)
