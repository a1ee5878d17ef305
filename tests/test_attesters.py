"""Hardware attesters against fake devices that answer with real evidence (tests/vectors.py).

Success and failure paths per platform, the report-data length rule, and the round trip
attester -> Evidence JSON -> verifier.evidence.verify_evidence (those tests need the platform
verifier modules and skip until they are present).
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
from dataclasses import replace
from datetime import datetime, timezone

import cbor2
import pytest
import vectors

from enclave.tee import AttestationError, CompositeAttester
from enclave.tee import sev_guest as sev_guest_mod
from enclave.tee.configfs_tsm import ConfigfsTsmAttester
from enclave.tee.nitro import NSM_IOCTL_REQUEST, DevNsm, NitroAttester
from enclave.tee.sev_guest import SevGuestAttester
from enclave.tee.sim import SimAttester
from enclave.tee.snp_certs import parse_cert_table
from tests.tee_fakes import (
    ARK_GUID,
    ASK_GUID,
    CRL_GUID,
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    VCEK_GUID,
    VLEK_GUID,
    FakeNsm,
    FakeNsmIoctl,
    FakeSevGuest,
    FakeTsm,
    cert_table,
    hopper_vector,
    nitro_document,
    pem_to_der_list,
    snp_cert_table,
    snp_vector,
)
from verifier.binding import gpu_nonce
from verifier.errors import ParseError
from verifier.models import Evidence

REPORT_DATA = hashlib.sha512(b"attestable-audits attester test").digest()


def tsm_root(tmp_path) -> str:
    return str(tmp_path / "tsm" / "report")


def snp_tsm(tmp_path, **kw) -> FakeTsm:
    v = snp_vector()
    kw.setdefault("auxblob", snp_cert_table(v))
    return FakeTsm(tmp_path / "tsm" / "report", "sev_guest", lambda inblob, privlevel: v.report, **kw)


def tdx_tsm(tmp_path, quote: bytes | None = None, **kw) -> FakeTsm:
    q = quote if quote is not None else vectors.read("tdx/v4-quote/quote.bin")
    return FakeTsm(tmp_path / "tsm" / "report", "tdx_guest", lambda inblob, privlevel: q, **kw)


# --------------------------------------------------------------------------------- configfs-tsm

def test_configfs_snp_report_and_certificate_table(tmp_path):
    v = snp_vector()
    fake = snp_tsm(tmp_path)
    ev = ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)
    assert ev == Evidence("sev-snp", v.report, certs=(v.vcek, v.ask, v.ark))
    assert fake.inblobs == [REPORT_DATA]
    assert os.listdir(fake.root) == [], "the report entry must be removed"


def test_configfs_snp_privlevel_is_written(tmp_path):
    seen = []
    v = snp_vector()
    fake = FakeTsm(tmp_path / "tsm" / "report", "sev_guest",
                   lambda inblob, privlevel: seen.append(privlevel) or v.report, auxblob=b"")
    ev = ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), privlevel=2, fs=fake).attest(REPORT_DATA)
    assert seen == [2]
    assert ev.certs == (), "an empty auxblob means the host supplied no certificates"


def test_configfs_tdx_quote(tmp_path):
    quote = vectors.read("tdx/v4-quote/quote.bin")
    fake = tdx_tsm(tmp_path)
    ev = ConfigfsTsmAttester("tdx", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)
    assert ev == Evidence("tdx", quote)
    assert fake.inblobs == [REPORT_DATA]
    assert os.listdir(fake.root) == []


def test_configfs_wrong_provider_is_refused(tmp_path):
    fake = tdx_tsm(tmp_path)
    with pytest.raises(AttestationError, match="provider is 'tdx_guest'.*sev-snp"):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)
    assert os.listdir(fake.root) == []


def test_configfs_generation_race_is_retried(tmp_path):
    v = snp_vector()
    fake = snp_tsm(tmp_path, interfere=1)
    ev = ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)
    assert ev.blob == v.report
    assert len(fake.created) == 2, "the raced attempt is abandoned and a fresh entry made"
    assert fake.inblobs == [REPORT_DATA, REPORT_DATA]
    assert os.listdir(fake.root) == []


def test_configfs_persistent_race_gives_up_with_reason(tmp_path):
    fake = snp_tsm(tmp_path, interfere=10)
    with pytest.raises(AttestationError, match=r"gave up after 3 attempts.*generation went from 0 to 2"):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake, retries=3).attest(REPORT_DATA)
    assert len(fake.created) == 3
    assert os.listdir(fake.root) == []


def test_configfs_busy_firmware_is_retried_then_reported(tmp_path):
    fake = snp_tsm(tmp_path, outblob_errno=errno.EBUSY)
    with pytest.raises(AttestationError, match="gave up after 2 attempts.*outblob"):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake, retries=2).attest(REPORT_DATA)
    assert os.listdir(fake.root) == []


def test_configfs_firmware_error_names_the_file(tmp_path):
    fake = snp_tsm(tmp_path, outblob_errno=errno.EIO)
    with pytest.raises(AttestationError, match=r"cannot read .*/outblob: Input/output error"):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)
    assert os.listdir(fake.root) == [], "the entry is removed even when the read fails"


def test_configfs_short_snp_outblob(tmp_path):
    v = snp_vector()
    fake = FakeTsm(tmp_path / "tsm" / "report", "sev_guest", lambda i, p: v.report[:1000], auxblob=b"")
    with pytest.raises(AttestationError, match="SEV-SNP report is 1000 bytes, expected 1184"):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)


@pytest.mark.parametrize("mangle, message", [
    (lambda q: q[:20], "shorter than its 48-byte header"),
    (lambda q: (3).to_bytes(2, "little") + q[2:], "version 3 is not supported"),
    (lambda q: q[:4] + (0).to_bytes(4, "little") + q[8:], "TEE type 0x0 is not TDX"),
])
def test_configfs_malformed_tdx_quote(tmp_path, mangle, message):
    quote = vectors.read("tdx/v4-quote/quote.bin")
    fake = tdx_tsm(tmp_path, mangle(quote))
    with pytest.raises(AttestationError, match=message):
        ConfigfsTsmAttester("tdx", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)


def test_configfs_missing_root(tmp_path):
    with pytest.raises(AttestationError, match=r"cannot create .*nope/aaudit-.*configfs mounted"):
        ConfigfsTsmAttester("tdx", str(tmp_path / "nope")).attest(REPORT_DATA)


# --------------------------------------------------------------------------------- certificate table

def test_cert_table_pem_entries_unknown_guids_and_vlek():
    v = snp_vector()
    vcek_pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(v.vcek) + b"-----END CERTIFICATE-----\n"
    table = cert_table([(VLEK_GUID, b"\n" + vcek_pem), (CRL_GUID, b"not a certificate, skipped"), (ASK_GUID, v.ask)])
    certs = parse_cert_table(table)
    assert [(c.name, c.der) for c in certs] == [("VLEK", v.vcek), ("ASK", v.ask)]
    assert parse_cert_table(b"") == []
    assert parse_cert_table(bytes(4096)) == []


def _entry(guid: bytes, offset: int, length: int) -> bytes:
    return guid + offset.to_bytes(4, "little") + length.to_bytes(4, "little")


def _malformed_tables():
    v = snp_vector()
    good = snp_cert_table(v)
    header = 4 * 24
    return [
        ("no terminator", _entry(VCEK_GUID, 24, 10) * 2, "no all-zero terminating entry"),
        ("offset past end", _entry(VCEK_GUID, 48, 99999) + bytes(24) + v.vcek, r"spans bytes 48\.\.100047"),
        ("offset inside header", _entry(VCEK_GUID, 0, 48) + bytes(24), "outside the certificate area"),
        ("duplicate", cert_table([(VCEK_GUID, v.vcek), (VCEK_GUID, v.vcek)]), "VCEK appears more than once"),
        ("zero length", _entry(ARK_GUID, 48, 0) + bytes(24), "has length 0"),
        ("bad terminator", _entry(VCEK_GUID, 48, len(v.vcek)) + bytes(16) + (5).to_bytes(4, "little") + bytes(4)
         + v.vcek, "terminating entry has offset 5"),
        ("not a certificate", cert_table([(VCEK_GUID, b"\x30\x03\x02\x01\x00")]),
         r"VCEK entry \(5 bytes\) is not exactly one DER X.509 certificate"),
        ("trailing bytes", cert_table([(ASK_GUID, v.ask + b"\x00\x00")]),
         rf"ASK entry \({len(v.ask) + 2} bytes\) is not exactly one DER X.509 certificate \(DER length says {len(v.ask)}\)"),
        ("bad PEM", cert_table([(VCEK_GUID, b"-----BEGIN CERTIFICATE-----\nMII*\n-----END CERTIFICATE-----\n")]),
         "invalid base64 in its PEM body"),
        ("two PEM certs", cert_table([(ARK_GUID, vectors.read("sev-snp/milan-vcek/ask_ark.pem"))]),
         "holds 2 PEM certificates"),
        ("truncated tail of a good table", good[:header + 100], "outside the certificate area"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_malformed_cert_table_is_refused(tmp_path, case):
    name, table, message = _malformed_tables()[case]
    with pytest.raises(ParseError, match=message):
        parse_cert_table(table)
    fake = snp_tsm(tmp_path, auxblob=table)
    with pytest.raises(AttestationError, match="host-supplied SEV-SNP certificate table: .*" + message):
        ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake).attest(REPORT_DATA)


# --------------------------------------------------------------------------------- /dev/sev-guest

def sev_device(tmp_path) -> str:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return str(path)


def test_sev_guest_ioctl_numbers_and_layouts():
    assert sev_guest_mod.SNP_GET_REPORT == SNP_GET_REPORT
    assert sev_guest_mod.SNP_GET_EXT_REPORT == SNP_GET_EXT_REPORT
    assert ctypes.sizeof(sev_guest_mod.SnpGuestRequestIoctl) == 32
    assert ctypes.sizeof(sev_guest_mod.SnpExtReportReq) == 112


def test_sev_guest_extended_report(tmp_path):
    v = snp_vector()
    fake = FakeSevGuest(v.report, snp_cert_table(v))
    ev = SevGuestAttester(sev_device(tmp_path), ioctl=fake).attest(REPORT_DATA)
    assert ev == Evidence("sev-snp", v.report, certs=(v.vcek, v.ask, v.ark))
    assert fake.calls == [(SNP_GET_EXT_REPORT, REPORT_DATA, 0, 4 * 4096)]


def test_sev_guest_grows_certificate_buffer_when_host_asks(tmp_path):
    v = snp_vector()
    table = cert_table([(VCEK_GUID, v.vcek), (ASK_GUID, v.ask), (ARK_GUID, v.ark)], pad_to=6 * 4096)
    fake = FakeSevGuest(v.report, table)
    ev = SevGuestAttester(sev_device(tmp_path), vmpl=1, ioctl=fake).attest(REPORT_DATA)
    assert ev.certs == (v.vcek, v.ask, v.ark)
    assert [(c[0], c[2], c[3]) for c in fake.calls] == [(SNP_GET_EXT_REPORT, 1, 4 * 4096),
                                                         (SNP_GET_EXT_REPORT, 1, 6 * 4096)]


def test_sev_guest_plain_report(tmp_path):
    v = snp_vector()
    fake = FakeSevGuest(v.report)
    ev = SevGuestAttester(sev_device(tmp_path), extended=False, ioctl=fake).attest(REPORT_DATA)
    assert ev == Evidence("sev-snp", v.report)
    assert fake.calls == [(SNP_GET_REPORT, REPORT_DATA, 0, 0)]


def test_sev_guest_firmware_error_is_reported(tmp_path):
    fake = FakeSevGuest(snp_vector().report, fail_errno=errno.EIO, fail_exitinfo2=(2 << 32) | 0x16)
    with pytest.raises(AttestationError, match=r"SNP_GET_EXT_REPORT .* failed: Input/output error; "
                                               r"firmware error 0x16, VMM error 0x2 \(host busy"):
        SevGuestAttester(sev_device(tmp_path), ioctl=fake).attest(REPORT_DATA)


def test_sev_guest_bad_status_and_short_report(tmp_path):
    v = snp_vector()
    with pytest.raises(AttestationError, match="MSG_REPORT_RSP status 0x16"):
        SevGuestAttester(sev_device(tmp_path), ioctl=FakeSevGuest(v.report, status=0x16)).attest(REPORT_DATA)
    with pytest.raises(AttestationError, match="1000 bytes, expected 1184"):
        SevGuestAttester(sev_device(tmp_path), ioctl=FakeSevGuest(v.report[:1000])).attest(REPORT_DATA)


def test_sev_guest_missing_device(tmp_path):
    with pytest.raises(AttestationError, match=r"cannot open .*/absent: No such file"):
        SevGuestAttester(str(tmp_path / "absent"), ioctl=FakeSevGuest(b"")).attest(REPORT_DATA)


# --------------------------------------------------------------------------------- Nitro

def test_nitro_document_and_request_fields():
    doc = nitro_document()
    nsm = FakeNsm.with_document(doc)
    ev = NitroAttester(transport=nsm).attest(REPORT_DATA)
    assert ev == Evidence("nitro", doc)
    assert nsm.requests == [{"Attestation": {"user_data": REPORT_DATA, "nonce": REPORT_DATA, "public_key": None}}]


def test_nitro_public_key_is_passed():
    nsm = FakeNsm.with_document(nitro_document())
    NitroAttester(public_key=b"\x04" * 97, transport=nsm).attest(REPORT_DATA)
    assert nsm.requests[0]["Attestation"]["public_key"] == b"\x04" * 97


@pytest.mark.parametrize("response, message", [
    (cbor2.dumps({"Error": "InvalidArgument"}), "NSM refused the attestation request: InvalidArgument"),
    (b"\xff\x00", "NSM response is not CBOR"),
    (cbor2.dumps({"Attestation": {}}), "carries no Attestation.document"),
    (cbor2.dumps({"DescribePCR": {"lock": False}}), "carries no Attestation.document"),
    (cbor2.dumps({"Attestation": {"document": cbor2.dumps([1, 2, 3])}}), "not a COSE_Sign1"),
])
def test_nitro_bad_responses(response, message):
    with pytest.raises(AttestationError, match=message):
        NitroAttester(transport=FakeNsm(response)).attest(REPORT_DATA)


def test_nitro_device_transport_through_the_ioctl(tmp_path):
    doc = nitro_document()
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    ioctl = FakeNsmIoctl(cbor2.dumps({"Attestation": {"document": doc}}))
    ev = NitroAttester(transport=DevNsm(str(device), ioctl=ioctl)).attest(REPORT_DATA)
    assert ev.blob == doc
    assert NSM_IOCTL_REQUEST == 0xC0200A00
    assert cbor2.loads(ioctl.requests[0])["Attestation"]["user_data"] == REPORT_DATA


def test_nitro_device_errors(tmp_path):
    with pytest.raises(AttestationError, match=r"cannot open .*/nsm-absent"):
        NitroAttester(str(tmp_path / "nsm-absent")).attest(REPORT_DATA)
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    big = NitroAttester(public_key=b"k" * 5000, transport=DevNsm(str(device), ioctl=FakeNsmIoctl(b"")))
    with pytest.raises(AttestationError, match="over the 4096-byte limit"):
        big.attest(REPORT_DATA)
    too_long = DevNsm(str(device), ioctl=FakeNsmIoctl(b"x" * 0x3001))
    with pytest.raises(AttestationError, match="NSM ioctl .* failed"):
        NitroAttester(transport=too_long).attest(REPORT_DATA)


# --------------------------------------------------------------------------------- NVIDIA

def fake_nvml(**kw):
    pytest.importorskip("pynvml")
    from tests.tee_fakes import FakeNvml

    report, chain = hopper_vector()
    return FakeNvml(report, chain, **kw)


def test_nvidia_report_and_chain():
    from enclave.tee.nvidia import NvidiaGpuAttester

    nvml = fake_nvml()
    nonce = hashlib.sha256(b"gpu nonce").digest()
    [ev] = NvidiaGpuAttester(nvml).attest(nonce)
    report, chain = hopper_vector()
    assert ev == Evidence("nvidia", report, certs=tuple(pem_to_der_list(chain)))
    assert nvml.nonces == [nonce]


def test_nvidia_one_evidence_per_gpu():
    from enclave.tee.nvidia import NvidiaGpuAttester

    evs = NvidiaGpuAttester(fake_nvml(gpus=2)).attest(bytes(32))
    assert [e.platform for e in evs] == ["nvidia", "nvidia"]
    with pytest.raises(AttestationError, match="GPU index 5 out of range"):
        NvidiaGpuAttester(fake_nvml(gpus=2), indices=[5])


def test_nvidia_errors():
    from enclave.tee.nvidia import NvidiaGpuAttester

    with pytest.raises(AttestationError, match="confidential-computing mode is off"):
        NvidiaGpuAttester(fake_nvml(cc=False))
    with pytest.raises(AttestationError, match="GPU 0: NVML attestation call failed"):
        NvidiaGpuAttester(fake_nvml(fail="report")).attest(bytes(32))
    with pytest.raises(AttestationError, match="NVML reports a 12288-byte GPU 0 attestation report"):
        NvidiaGpuAttester(fake_nvml(report_size=0x3000)).attest(bytes(32))
    with pytest.raises(AttestationError, match="a 0-byte"):
        NvidiaGpuAttester(fake_nvml(report_size=0)).attest(bytes(32))
    with pytest.raises(ValueError, match="GPU nonce must be 32 bytes"):
        NvidiaGpuAttester(fake_nvml()).attest(bytes(31))


def test_composite_binds_gpu_evidence_to_cpu_report_data(tmp_path):
    from enclave.tee.nvidia import NvidiaGpuAttester

    nvml = fake_nvml()
    fake = snp_tsm(tmp_path)
    ev = CompositeAttester(ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=fake),
                           [NvidiaGpuAttester(nvml)]).attest(REPORT_DATA)
    assert ev.platform == "sev-snp" and [g.platform for g in ev.gpu] == ["nvidia"]
    assert nvml.nonces == [gpu_nonce(REPORT_DATA)]


# --------------------------------------------------------------------------------- report data length

def _attesters(tmp_path):
    v = snp_vector()
    return {
        "configfs sev-snp": (ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=(f := snp_tsm(tmp_path))),
                             lambda: f.inblobs),
        "configfs tdx": (ConfigfsTsmAttester("tdx", str(tmp_path / "t2"),
                                             fs=(t := FakeTsm(tmp_path / "t2", "tdx_guest", lambda i, p: b""))),
                         lambda: t.inblobs),
        "sev-guest": (SevGuestAttester(sev_device(tmp_path), ioctl=(s := FakeSevGuest(v.report))), lambda: s.calls),
        "nitro": (NitroAttester(transport=(n := FakeNsm.with_document(b""))), lambda: n.requests),
        "sim": (SimAttester(measurement="0" * 64), lambda: []),
    }


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_report_data_of_wrong_length_is_refused(tmp_path, length):
    for name, (attester, sent) in _attesters(tmp_path).items():
        with pytest.raises(ValueError, match=f"report data must be 64 bytes, got {length}"):
            attester.attest(bytes(length))
        with pytest.raises(ValueError, match=f"got {length}"):
            CompositeAttester(attester).attest(bytes(length))
        assert sent() == [], f"{name}: nothing may reach the device"


# --------------------------------------------------------------------------------- round trip to the verifier

def _through_json(ev: Evidence) -> Evidence:
    return Evidence.from_json(json.loads(json.dumps(ev.to_json())))


def _verify(ev: Evidence, at: datetime, policy_table: dict, **kw):
    from verifier.evidence import verify_evidence
    from verifier.policy import parse

    verdict, bound = verify_evidence(_through_json(ev), at=at, policy=parse(policy_table), **kw)
    return verdict, bound


def _only_report_data_fails(verdict, got: bytes) -> None:
    failed = {s.name: s.reason for s in verdict.failures}
    assert set(failed) == {"report data"}, failed
    assert got.hex() in failed["report data"] and REPORT_DATA.hex() in failed["report data"]
    assert not verdict.verified


def test_roundtrip_snp_reports_the_report_data_mismatch(tmp_path):
    v = snp_vector()
    ev = ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=snp_tsm(tmp_path)).attest(REPORT_DATA)
    verdict, bound = _verify(ev, datetime(2025, 1, 1, tzinfo=timezone.utc), {"sev-snp": {"allow_debug": True}},
                             expected_report_data=REPORT_DATA)
    assert bound.report_data == v.report[0x50:0x90]
    _only_report_data_fails(verdict, bound.report_data)


def test_roundtrip_tdx_reports_the_report_data_mismatch(tmp_path):
    ev = ConfigfsTsmAttester("tdx", tsm_root(tmp_path), fs=tdx_tsm(tmp_path)).attest(REPORT_DATA)
    # The collateral comes from whoever can reach Intel PCS (the verifier's --collateral), not the enclave.
    ev = replace(ev, collateral=vectors.read("tdx/v4-quote/collateral.json"))
    verdict, bound = _verify(ev, datetime(2025, 7, 1, tzinfo=timezone.utc), {"tdx": {"allow_debug": True}},
                             expected_report_data=REPORT_DATA)
    _only_report_data_fails(verdict, bound.report_data)


def test_roundtrip_nitro_reports_the_report_data_mismatch():
    ev = NitroAttester(transport=FakeNsm.with_document(nitro_document())).attest(REPORT_DATA)
    verdict, bound = _verify(ev, datetime(2024, 9, 9, 20, 0, tzinfo=timezone.utc), {"nitro": {"allow_debug": True}},
                             expected_report_data=REPORT_DATA)
    assert bound.nonce == bytes(19) + b"\x01"
    _only_report_data_fails(verdict, bound.report_data or b"")


def test_roundtrip_snp_with_nvidia_reports_both_binding_failures(tmp_path):
    from enclave.tee.nvidia import NvidiaGpuAttester

    attester = CompositeAttester(ConfigfsTsmAttester("sev-snp", tsm_root(tmp_path), fs=snp_tsm(tmp_path)),
                                 [NvidiaGpuAttester(fake_nvml())])
    ev = attester.attest(REPORT_DATA)
    verdict, bound = _verify(ev, datetime(2025, 1, 1, tzinfo=timezone.utc),
                             {"sev-snp": {"allow_debug": True}, "nvidia": {"required": True}},
                             expected_report_data=REPORT_DATA)
    failed = {s.name: s.reason for s in verdict.failures}
    assert set(failed) == {"report data", "gpu[0] nonce"}, failed
    # The GPU nonce is checked against the CPU evidence's own report data, which the real vector fixes.
    assert gpu_nonce(bound.report_data).hex() in failed["gpu[0] nonce"]
    assert "931d8dd0" in failed["gpu[0] nonce"]
