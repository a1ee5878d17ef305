"""SEV-SNP: parse, verify and validate genuine reports (Milan v2/v3, Genoa v5, Milan VLEK v5)."""

from __future__ import annotations

import base64
import json
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import vectors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import flip as _flip
from helpers import step as _step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier import cli
from verifier import policy as policy_mod
from verifier.errors import ParseError, PolicyError
from verifier.evidence import verify_evidence
from verifier.inputs import decode_blob, read_certs
from verifier.models import Evidence, Status, Verdict
from verifier.platforms import snp

ROOT = Path(__file__).resolve().parents[1]
AT = "2025-01-01T00:00:00Z"
AT_DT = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _certs(*paths: Path) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for p in paths:
        out.extend(read_certs(p.read_bytes(), str(p)))
    return tuple(out)


VECTORS = vectors.of("sev-snp")
MILAN = vectors.GENUINE["sev-snp/milan-vcek"].load()
MILAN_REPORT = MILAN.blob
MILAN_CERTS = MILAN.certs


def _vector(name: str) -> tuple[bytes, tuple[bytes, ...], datetime]:
    vector = VECTORS[name]
    ev = vector.load()
    return ev.blob, ev.certs, vector.when


def _verify(blob: bytes, certs: tuple[bytes, ...], at: datetime = AT_DT, *, allow_debug: bool = True,
            pol: policy_mod.Policy | None = None, report_data: bytes | None = None) -> Verdict:
    pol = pol or policy_mod.baseline("sev-snp", allow_debug)
    verdict, _ = verify_evidence(Evidence("sev-snp", blob, certs), at=at, policy=pol, expected_report_data=report_data)
    return verdict


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["evidence", "--platform", "sev-snp", *args])
    out, err = capsys.readouterr()
    return rc, out, err


MILAN_ARGS = ["--evidence", str(vectors.path(f"{vectors.MILAN}/report.bin")),
              "--certs", str(vectors.path(f"{vectors.MILAN}/vcek.der")),
              "--certs", str(vectors.path(f"{vectors.MILAN}/ask_ark.pem"))]


# ----------------------------------------------------------------------------------------- parse


def test_parse_milan_v2_fields():
    r = snp.parse(MILAN_REPORT)
    assert r.version == 2
    assert r.signer == "VCEK"
    assert r.policy.raw == 0xB0000 and r.policy.debug and r.policy.bit("smt")
    assert r.report_data == bytes.fromhex("0102030405").ljust(64, b"\0")
    assert r.measurement.hex().startswith("b07af9620f3b839b")
    assert r.vmpl == 0 and r.signature_algo == 1 and r.cpuid is None and r.launch_mit_vector is None
    assert r.current_version == (1, 49, 3)
    assert snp.Tcb.decode(r.reported_tcb, snp.PRODUCTS["Milan"]).parts() == {
        "bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert len(r.signed) == 0x2A0


def test_parse_v3_and_v5_fields():
    v3 = snp.parse(_vector("sev-snp/azure-milan-v3")[0])
    assert v3.version == 3 and v3.cpuid == (0x19, 0x01, 0x01) and v3.launch_mit_vector is None
    v5 = snp.parse(_vector("sev-snp/yaxi-genoa-v5")[0])
    assert v5.version == 5 and v5.cpuid == (0x19, 0x11, 0x01)
    assert v5.launch_mit_vector is not None and v5.current_mit_vector is not None
    vlek = snp.parse(_vector("sev-snp/aws-milan-vlek-v5")[0])
    assert vlek.signer == "VLEK" and vlek.vmpl == 1 and not any(vlek.chip_id)


def test_tcb_layout_differs_per_product():
    raw = int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]), "little")
    assert snp.Tcb.decode(raw, snp.PRODUCTS["Genoa"]).parts() == {"bootloader": 1, "tee": 2, "snp": 7, "microcode": 8}
    assert snp.Tcb.decode(raw, snp.PRODUCTS["Turin"]).parts() == {
        "fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 8}


def test_product_from_cpuid():
    assert snp.product_from_cpuid(0x19, 0x01).name == "Milan"
    assert snp.product_from_cpuid(0x19, 0x11).name == "Genoa"
    assert snp.product_from_cpuid(0x19, 0xA0).name == "Genoa"
    assert snp.product_from_cpuid(0x1A, 0x02).name == "Turin"
    assert snp.product_from_cpuid(0x17, 0x31) is None


def _with(blob: bytes, offset: int, data: bytes) -> bytes:
    return blob[:offset] + data + blob[offset + len(data):]


@pytest.mark.parametrize("blob, message", [
    (MILAN_REPORT[:-1], "1183 bytes, expected 1184"),
    (MILAN_REPORT + b"\0", "1185 bytes"),
    (_with(MILAN_REPORT, 0, struct.pack("<I", 4)), "version 4 is not supported"),
    (_with(MILAN_REPORT, 0, struct.pack("<I", 1)), "version 1 is not supported"),
    (_with(MILAN_REPORT, 0x34, struct.pack("<I", 2)), "signature algorithm 2"),
    (_with(MILAN_REPORT, 0x08, struct.pack("<Q", 0x90000)), "reserved bit 17"),
    (_with(MILAN_REPORT, 0x08, struct.pack("<Q", 0xB0000 | 1 << 40)), "reserved bits above bit 25"),
    (_with(MILAN_REPORT, 0x48, struct.pack("<I", 2 << 2)), "SIGNING_KEY 2 is reserved"),
    (_with(MILAN_REPORT, 0x48, struct.pack("<I", 1 << 5)), "reserved bits 5..31"),
    (_with(MILAN_REPORT, 0x1F8, b"\1"), "reserved [0x1f8:0x2a0]"),
    (_with(MILAN_REPORT, 0x188, b"\1"), "reserved [0x188:0x1a0]"),
    (_with(MILAN_REPORT, 0x2A0 + 60, b"\1"), "signature R padding"),
    (_with(MILAN_REPORT, 0x2E8 + 50, b"\1"), "signature S padding"),
    (_with(MILAN_REPORT, 0x400, b"\1"), "signature reserved"),
])
def test_parse_rejects_malformed(blob: bytes, message: str):
    with pytest.raises(ParseError, match=message.replace("[", r"\[").replace(".", r"\.")):
        snp.parse(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1300) | st.integers(0, 1184).map(lambda n: MILAN_REPORT[:n]))
def test_parser_only_raises_parse_error(data: bytes):
    try:
        snp.parse(data)
    except ParseError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1183), st.integers(1, 255))
def test_verify_of_mutated_report_never_crashes(offset: int, xor: int):
    blob = MILAN_REPORT[:offset] + bytes([MILAN_REPORT[offset] ^ xor]) + MILAN_REPORT[offset + 1:]
    try:
        verdict = _verify(blob, MILAN_CERTS)
    except ParseError:
        return
    assert not verdict.verified  # any change to the signed bytes or the signature is caught


# ---------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_genuine_vectors_verify(name: str):
    blob, certs, at = _vector(name)
    verdict = _verify(blob, certs, at)
    assert verdict.verified, [s for s in verdict.steps if s.status is Status.FAILED]
    for step in ("certificate chain", "report signature", "product"):
        assert _step(verdict, step).status is Status.OK
    signer = verdict.claims["signer"]
    assert _step(verdict, f"{signer} TCB").status is Status.OK


def test_claims_of_the_milan_vector():
    verdict = _verify(MILAN_REPORT, MILAN_CERTS)
    c = verdict.claims
    assert c["platform"] == "sev-snp" and c["product"] == "Milan" and c["signer"] == "VCEK" and c["version"] == 2
    assert c["debug"] is True and c["policy"]["debug"] is True and c["policy"]["raw"] == "0xb0000"
    assert c["reported_tcb"] == {"raw": "0x4405000000000002", "bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert c["chip_id"].startswith("3ac3fe21") and c["vmpl"] == 0
    assert c["platform_info"]["smt_enabled"] is True
    assert _step(verdict, "VCEK hwID").status is Status.OK


def test_vlek_vector_claims():
    blob, certs, at = _vector("sev-snp/aws-milan-vlek-v5")
    verdict = _verify(blob, certs, at)
    assert verdict.claims["signer"] == "VLEK" and verdict.claims["product"] == "Milan"
    assert verdict.claims["vlek_csp_id"].endswith("amazonaws.com")
    assert verdict.claims["reported_tcb"]["microcode"] == 222
    assert "SEV-VLEK-Milan" in _step(verdict, "certificate chain").reason
    assert not [s for s in verdict.steps if s.name == "VCEK hwID"]


def test_genoa_vector_claims():
    blob, certs, at = _vector("sev-snp/yaxi-genoa-v5")
    verdict = _verify(blob, certs, at)
    assert verdict.claims["product"] == "Genoa"
    assert verdict.claims["cpuid"] == {"family": "0x19", "model": "0x11", "stepping": 1}
    assert verdict.claims["launch_mit_vector"].startswith("0x")
    assert "CPUID family 19h model 11h" in _step(verdict, "product").reason


@pytest.mark.parametrize("at", [datetime(2030, 1, 1, tzinfo=timezone.utc), datetime(2022, 1, 1, tzinfo=timezone.utc)])
def test_fails_outside_the_validity_window(at: datetime):
    verdict = _verify(MILAN_REPORT, MILAN_CERTS, at)
    step = _step(verdict, "certificate chain")
    assert step.status is Status.FAILED and "not at" in step.reason and not verdict.verified


def test_flipped_byte_in_signed_region_fails():
    verdict = _verify(_flip(MILAN_REPORT, 0x90), MILAN_CERTS)  # first byte of the measurement
    assert _step(verdict, "report signature").status is Status.FAILED
    assert _step(verdict, "certificate chain").status is Status.OK
    assert not verdict.verified


def test_flipped_byte_in_signature_fails():
    verdict = _verify(_flip(MILAN_REPORT, 0x2A0), MILAN_CERTS)
    assert _step(verdict, "report signature").status is Status.FAILED and not verdict.verified


def test_flipped_byte_in_vcek_fails():
    vcek = bytearray(MILAN_CERTS[0])
    hwid_at = bytes(vcek).index(bytes.fromhex("3ac3fe21e13fb099"))
    vcek[hwid_at] ^= 0x01
    verdict = _verify(MILAN_REPORT, (bytes(vcek), *MILAN_CERTS[1:]))
    assert _step(verdict, "certificate chain").status is Status.FAILED
    assert "does not verify" in _step(verdict, "certificate chain").reason
    assert _step(verdict, "VCEK hwID").status is Status.FAILED and not verdict.verified


def test_reported_tcb_that_differs_from_the_vcek_is_named():
    blob = _with(MILAN_REPORT, 0x186, bytes([10]))  # reported_tcb snp 5 -> 10
    verdict = _verify(blob, MILAN_CERTS)
    step = _step(verdict, "VCEK TCB")
    assert step.status is Status.FAILED
    assert "VCEK TCB snp=5 does not match report's reported_tcb snp=10" in step.reason


def test_cpuid_that_disagrees_with_the_vcek_fails():
    blob, certs, at = _vector("sev-snp/yaxi-genoa-v5")
    verdict = _verify(_with(blob, 0x189, bytes([0x01])), certs, at)  # model 11h (Genoa) -> 01h (Milan)
    step = _step(verdict, "product")
    assert step.status is Status.FAILED and "is Milan, but the VCEK is issued for Genoa" in step.reason


def test_genoa_roots_for_the_milan_vcek_fail():
    genoa = _certs(ROOT / "verifier" / "roots" / "amd" / "ask_ark_genoa.pem")
    verdict = _verify(MILAN_REPORT, (MILAN_CERTS[0], *genoa))
    step = _step(verdict, "certificate chain")
    assert step.status is Status.FAILED
    assert "'SEV-Genoa' belongs to another product line" in step.reason
    assert "'ARK-Genoa'" in step.reason and "not the pinned ARK-Milan" in step.reason


def test_unpinned_ark_is_refused():
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Milan")])
    now = datetime.now(timezone.utc)
    fake = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=4000)).not_valid_after(now + timedelta(days=4000))
            .sign(key, hashes.SHA384()))
    verdict = _verify(MILAN_REPORT, (MILAN_CERTS[0], fake.public_bytes(serialization.Encoding.DER)))
    assert "not the pinned ARK-Milan" in _step(verdict, "certificate chain").reason


def test_missing_vcek_fails_with_a_reason():
    verdict = _verify(MILAN_REPORT, MILAN_CERTS[1:])
    step = _step(verdict, "VCEK certificate")
    assert step.status is Status.FAILED and "no VCEK certificate" in step.reason and not verdict.verified


def test_vlek_report_with_only_a_vcek_fails():
    blob, _, at = _vector("sev-snp/aws-milan-vlek-v5")
    verdict = _verify(blob, MILAN_CERTS, at)
    assert "no VLEK certificate" in _step(verdict, "VLEK certificate").reason


# -------------------------------------------------------------------------------------- validate


def _policy(text: str) -> policy_mod.Policy:
    import tomllib

    return policy_mod.parse(tomllib.loads(text), "test.toml")


MILAN_MEASUREMENT = snp.parse(MILAN_REPORT).measurement.hex()


def test_baseline_forbids_debug():
    verdict = _verify(MILAN_REPORT, MILAN_CERTS, allow_debug=False)
    step = _step(verdict, "debug")
    assert step.status is Status.FAILED and "allows debug" in step.reason and not verdict.verified


def test_debug_off_vector_passes_baseline():
    blob, certs, at = _vector("sev-snp/azure-milan-v3")
    assert _verify(blob, certs, at, allow_debug=False).verified


def test_measurement_allow_list():
    ok = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy(
        f'[sev-snp]\nallow_debug = true\nmeasurements = ["{MILAN_MEASUREMENT.upper()}"]\n'))
    assert ok.verified and _step(ok, "measurement").status is Status.OK
    bad = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy(f'[sev-snp]\nallow_debug = true\nmeasurements = ["{"0" * 96}"]\n'))
    assert _step(bad, "measurement").status is Status.FAILED and not bad.verified
    unpinned = _verify(MILAN_REPORT, MILAN_CERTS)
    assert _step(unpinned, "measurement").status is Status.SKIPPED
    assert "not pinned by policy" in _step(unpinned, "measurement").reason


def test_min_tcb():
    ok = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy("[sev-snp]\nallow_debug = true\nmin_tcb = { snp = 5, microcode = 68 }\n"))
    assert _step(ok, "minimum TCB").status is Status.OK
    low = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy("[sev-snp]\nallow_debug = true\nmin_tcb = { snp = 8 }\n"))
    step = _step(low, "minimum TCB")
    assert step.status is Status.FAILED and "reported_tcb snp=5 is below the policy minimum snp=8" in step.reason
    other = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy("[sev-snp]\nallow_debug = true\n[sev-snp.min_tcb.Genoa]\nsnp = 1\n"))
    assert "not for Milan" in _step(other, "minimum TCB").reason
    per_product = _verify(MILAN_REPORT, MILAN_CERTS, pol=_policy(
        "[sev-snp]\nallow_debug = true\n[sev-snp.min_tcb.Milan]\nbootloader = 2\n[sev-snp.min_tcb.Genoa]\nsnp = 30\n"))
    assert _step(per_product, "minimum TCB").status is Status.OK


def test_vmpl_host_data_and_id_key_allow_lists():
    blob, certs, at = _vector("sev-snp/aws-milan-vlek-v5")
    r = snp.parse(blob)
    pol = _policy(f'[sev-snp]\nmax_vmpl = 0\nhost_data = ["{r.host_data.hex()}"]\nid_key_digests = ["{"a" * 96}"]\n')
    verdict = _verify(blob, certs, at, pol=pol)
    assert "VMPL 1, the policy allows at most VMPL 0" in _step(verdict, "VMPL").reason
    assert _step(verdict, "host data").status is Status.OK
    assert _step(verdict, "ID key digest").status is Status.FAILED


@pytest.mark.parametrize("table, message", [
    ('measurements = ["abc"]', "96-digit hex"),
    ("allow_debug = 1", "allow_debug"),
    ("min_tcb = { snp = 300 }", "0..255"),
    ("min_tcb = { sn = 3 }", "unknown component"),
    ("min_tcb = { Milan = { snp = 1 }, snp = 2 }", "unknown component"),
    ("max_vmpl = 4", "max_vmpl"),
    ("host_data = [1]", "64-digit hex"),
    ("colour = 1", "unknown key"),
])
def test_policy_errors(table: str, message: str):
    with pytest.raises(PolicyError, match=message):
        _policy(f"[sev-snp]\n{table}\n")


# ------------------------------------------------------------------------------------------- CLI


def test_cli_baseline_fails_on_debug(capsys):
    rc, out, _ = _cli(capsys, *MILAN_ARGS, "--at", AT)
    assert rc == 1
    assert "debug" in out and "FAILED" in out and "NOT VERIFIED (sev-snp)" in out


def test_cli_allow_debug_and_report_data(capsys):
    rc, out, _ = _cli(capsys, *MILAN_ARGS, "--at", AT, "--allow-debug", "--report-data", "0102030405")
    assert rc == 0, out
    assert "report data" in out and "matches the expected report data" in out and "VERIFIED (sev-snp)" in out
    rc, out, _ = _cli(capsys, *MILAN_ARGS, "--at", AT, "--allow-debug", "--report-data", "0102030406")
    assert rc == 1


def test_cli_json(capsys):
    rc, out, _ = _cli(capsys, *MILAN_ARGS, "--at", AT, "--allow-debug", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["verified"] is True and doc["platform"] == "sev-snp"
    assert {"step": "report signature", "result": "ok"}.items() <= next(
        s for s in doc["steps"] if s["step"] == "report signature").items()
    assert doc["claims"]["measurement"] == MILAN_MEASUREMENT


def test_cli_truncated_input_is_unusable(capsys, tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(MILAN_REPORT[:600])
    rc, _, err = _cli(capsys, "--evidence", str(short), "--certs", str(vectors.path(f"{vectors.MILAN}/vcek.der")), "--at", AT)
    assert rc == 2 and "600 bytes, expected 1184" in err


def test_cli_base64_evidence_and_pem_vlek(capsys):
    d = "sev-snp/aws-milan-vlek-v5"
    rc, out, _ = _cli(capsys, "--evidence", str(vectors.path(f"{d}/report.b64")),
                      "--certs", str(vectors.path(f"{d}/vlek.pem")), "--at", "2026-03-23T21:09:19Z", "--json")
    assert rc == 0 and json.loads(out)["claims"]["signer"] == "VLEK"


def test_cli_policy_file(capsys, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text(f'[sev-snp]\nallow_debug = true\nmeasurements = ["{MILAN_MEASUREMENT}"]\n')
    rc, out, _ = _cli(capsys, *MILAN_ARGS, "--at", AT, "--policy", str(pol))
    assert rc == 0, out
    pol.write_text("[sev-snp]\nmax_vmpl = 9\n")
    rc, _, err = _cli(capsys, *MILAN_ARGS, "--at", AT, "--policy", str(pol))
    assert rc == 2 and "max_vmpl" in err


def test_hex_and_base64_forms_decode_to_the_same_report():
    blob, _, _ = _vector("sev-snp/yaxi-genoa-v5")
    assert decode_blob(base64.b64encode(blob)) == decode_blob(blob.hex().encode()) == blob
