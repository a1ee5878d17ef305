"""NVIDIA Hopper SPDM measurement reports: parse by length fields, verify signature and chain."""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timezone

import pytest
import vectors
from helpers import flip as _flip
from helpers import step as _step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier import cli
from verifier import policy as policy_mod
from verifier.errors import ParseError, PolicyError
from verifier.evidence import verify_evidence
from verifier.models import Evidence, Status, Verdict
from verifier.platforms import nvidia

AT = datetime(2025, 1, 1, tzinfo=timezone.utc)

HOPPER = vectors.GENUINE["nvidia/hopper"].load()
REPORT = HOPPER.blob
CHAIN = HOPPER.certs
HOPPER_545 = vectors.GENUINE["nvidia/hopper-545"].load()
HOPPER_CHAIN = str(vectors.path(f"{vectors.HOPPER}/chain.pem"))
NONCE = REPORT[4:36]  # request: version, code, param1, param2, then the 32-byte nonce
RECORD_LEN_AT = 37 + 5  # response header: version, code, param1, param2, block count, then u24 length


def _verify(blob: bytes = REPORT, certs: tuple[bytes, ...] = CHAIN, at: datetime = AT, *,
            pol: policy_mod.Policy | None = None, nonce: bytes | None = None) -> Verdict:
    pol = pol or policy_mod.baseline("nvidia", False)
    verdict, _ = verify_evidence(Evidence("nvidia", blob, certs), at=at, policy=pol, expected_nonce=nonce)
    return verdict


def _policy(text: str) -> policy_mod.Policy:
    return policy_mod.parse(tomllib.loads(text), "test.toml")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["evidence", "--platform", "nvidia", *args])
    out, err = capsys.readouterr()
    return rc, out, err


HOPPER_ARGS = ["--evidence", str(vectors.path(f"{vectors.HOPPER}/report.hex")), "--certs", HOPPER_CHAIN]


# ----------------------------------------------------------------------------------------- parse


def test_parse_hopper_report():
    r = nvidia.parse(REPORT)
    assert r.spdm_version == 0x11 and r.request_param1 & 1
    assert r.request_nonce.hex().startswith("931d8dd0") and len(r.request_nonce) == 32
    assert len(r.measurements) == 64 and [m.index for m in r.measurements] == list(range(1, 65))
    assert all(len(m.value) == 48 for m in r.measurements)
    assert r.driver_version == "550.90.07" and r.vbios_version == "96.00.9F.00.01"
    assert r.opaque_field("fwid") is not None and r.trailing_zero_bytes == 0
    assert len(r.signature) == 96 and len(r.signed) == len(REPORT) - 96


def test_trailing_zero_padding_is_ignored_but_recorded():
    r = nvidia.parse(REPORT + b"\0")
    assert r.trailing_zero_bytes == 1 and r.signed == REPORT[:-96]
    verdict = _verify(REPORT + b"\0\0")
    assert verdict.verified and verdict.claims["trailing_zero_bytes"] == 2
    assert "2 trailing zero byte(s) ignored" in _step(verdict, "report").reason


def _set_u24(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + value.to_bytes(3, "little") + blob[offset + 3:]


@pytest.mark.parametrize("blob, message", [
    (REPORT + b"\x01", "after the signature, not all zero"),
    (REPORT[:-1], "truncated in signature"),
    (REPORT[:30], "truncated in request nonce"),
    (b"", "truncated in request SPDM version"),
    (bytes([0x12]) + REPORT[1:], "SPDM version 1.2 is not supported"),
    (REPORT[:1] + b"\xE1" + REPORT[2:], "not GET_MEASUREMENTS"),
    (REPORT[:2] + b"\x00" + REPORT[3:], "did not ask for a signed response"),
    (REPORT[:37] + b"\x10" + REPORT[38:], "differs from the request"),
    (REPORT[:38] + b"\x61" + REPORT[39:], "not MEASUREMENTS"),
    (_set_u24(REPORT, RECORD_LEN_AT, 3521), "measurement record is 3521 bytes but its 64 block"),
    (_set_u24(REPORT, RECORD_LEN_AT, 10**6), "truncated in measurement record"),
    (REPORT[:41] + bytes([65]) + REPORT[42:], "truncated in measurement block 65"),
    (REPORT[:41] + bytes([63]) + REPORT[42:], "its 63 block"),
    (REPORT[:45 + 1] + b"\x02" + REPORT[47:], "not DMTF"),
    (REPORT[:50] + b"\x2f" + REPORT[51:], "DMTF value fills"),
    (REPORT[:45 + 55] + b"\x01" + REPORT[101:], "appears twice"),
])
def test_parse_rejects_malformed(blob: bytes, message: str):
    with pytest.raises(ParseError, match=message.replace(".", r"\.")):
        nvidia.parse(blob)


def test_opaque_length_is_checked():
    r = nvidia.parse(REPORT)
    opaque_len_at = len(r.signed) - sum(4 + len(f.value) for f in r.opaque) - 2
    bigger = REPORT[:opaque_len_at] + (int.from_bytes(REPORT[opaque_len_at:opaque_len_at + 2], "little") + 200).to_bytes(2, "little") + REPORT[opaque_len_at + 2:]
    with pytest.raises(ParseError, match="truncated"):
        nvidia.parse(bigger)
    odd = REPORT[:opaque_len_at] + (int.from_bytes(REPORT[opaque_len_at:opaque_len_at + 2], "little") - 1).to_bytes(2, "little") + REPORT[opaque_len_at + 2:]
    with pytest.raises(ParseError):
        nvidia.parse(odd)


def test_vbios_format():
    assert nvidia.format_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9F.00.01"
    assert nvidia.format_vbios_version(b"97.00.11.00.22\0") == "97.00.11.00.22"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600) | st.integers(0, len(REPORT)).map(lambda n: REPORT[:n]))
def test_parser_only_raises_parse_error(data: bytes):
    try:
        nvidia.parse(data)
    except ParseError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(REPORT) - 1), st.integers(1, 255))
def test_mutated_report_never_verifies_or_crashes(offset: int, xor: int):
    blob = REPORT[:offset] + bytes([REPORT[offset] ^ xor]) + REPORT[offset + 1:]
    try:
        verdict = _verify(blob)
    except ParseError:
        return
    assert not verdict.verified


# ---------------------------------------------------------------------------------------- verify


def test_genuine_report_verifies_with_its_nonce():
    verdict = _verify(nonce=NONCE)
    assert verdict.verified, [s for s in verdict.steps if s.status is Status.FAILED]
    for name in ("certificate chain", "report signature", "firmware ID", "nonce"):
        assert _step(verdict, name).status is Status.OK
    c = verdict.claims
    assert c["request_nonce"] == NONCE.hex() and c["measurement_count"] == 64
    assert c["driver_version"] == "550.90.07" and c["vbios_version"] == "96.00.9F.00.01"
    assert c["measurements"]["1"] == nvidia.parse(REPORT).measurements[0].value.hex()
    assert c["opaque"]["board_id"] == 945 and c["opaque"]["project"] == "1010"
    assert "NVIDIA Device Identity CA (pinned" in _step(verdict, "certificate chain").reason


def test_second_hopper_vector_verifies():
    blob, certs = HOPPER_545.blob, HOPPER_545.certs
    verdict = _verify(blob, certs, nonce=blob[4:36])
    assert verdict.verified
    assert verdict.claims["driver_version"] == "545.00" and verdict.claims["vbios_version"] == "96.00.5E.00.01"
    assert _step(verdict, "firmware ID").status is Status.SKIPPED


def test_wrong_nonce_fails():
    verdict = _verify(nonce=bytes(32))
    assert _step(verdict, "nonce").status is Status.FAILED and not verdict.verified


def test_flipped_byte_in_signed_region_fails():
    verdict = _verify(_flip(REPORT, 120))  # inside the value of measurement block 2
    assert _step(verdict, "report signature").status is Status.FAILED
    assert _step(verdict, "certificate chain").status is Status.OK and not verdict.verified


def test_flipped_byte_in_signature_fails():
    verdict = _verify(_flip(REPORT, len(REPORT) - 10))
    assert _step(verdict, "report signature").status is Status.FAILED and not verdict.verified


def test_flipped_byte_in_leaf_certificate_fails():
    fwid = nvidia.parse(REPORT).opaque_field("fwid")
    leaf = bytearray(CHAIN[0])
    leaf[bytes(leaf).index(fwid)] ^= 0x01
    verdict = _verify(certs=(bytes(leaf), *CHAIN[1:]))
    assert _step(verdict, "certificate chain").status is Status.FAILED
    assert _step(verdict, "firmware ID").status is Status.FAILED and not verdict.verified


def test_chain_outside_its_validity_fails():
    verdict = _verify(at=datetime(2019, 1, 1, tzinfo=timezone.utc))
    step = _step(verdict, "certificate chain")
    assert step.status is Status.FAILED and "not at" in step.reason


def test_missing_intermediate_fails():
    verdict = _verify(certs=(CHAIN[0], *CHAIN[2:]))
    assert "no certificate for issuer" in _step(verdict, "certificate chain").reason


def test_certificate_off_the_path_fails():
    other_leaf = HOPPER_545.certs[0]
    verdict = _verify(certs=(*CHAIN, other_leaf))
    assert "not on the path" in _step(verdict, "certificate chain").reason


def test_other_devices_chain_fails_the_signature():
    verdict = _verify(certs=HOPPER_545.certs)
    assert _step(verdict, "certificate chain").status is Status.OK
    assert _step(verdict, "report signature").status is Status.FAILED
    assert _step(verdict, "firmware ID").status is Status.FAILED


def test_no_chain_fails():
    verdict = _verify(certs=())
    assert "no GPU certificate chain" in _step(verdict, "certificate chain").reason


# -------------------------------------------------------------------------------------- validate


def test_version_allow_lists():
    ok = _verify(pol=_policy('[nvidia]\ndriver_versions = ["550.90.07"]\nvbios_versions = ["96.00.9f.00.01"]\n'))
    assert ok.verified and _step(ok, "VBIOS version").status is Status.OK
    bad = _verify(pol=_policy('[nvidia]\ndriver_versions = ["535.104.05"]\n'))
    step = _step(bad, "driver version")
    assert step.status is Status.FAILED and "550.90.07 is not in the policy's allow-list" in step.reason
    baseline = _verify()
    assert _step(baseline, "driver version").status is Status.SKIPPED


@pytest.mark.parametrize("table, message", [
    ("driver_versions = []", "non-empty list"),
    ('vbios_versions = ["96 00"]', "version strings"),
    ("rim = 1", "unknown key"),
])
def test_policy_errors(table: str, message: str):
    with pytest.raises(PolicyError, match=message):
        _policy(f"[nvidia]\n{table}\n")


def test_required_key_is_left_to_the_policy_module():
    pol = _policy("[nvidia]\nrequired = true\n")
    assert pol.gpu_required and pol.accepts("nvidia")


# ------------------------------------------------------------------------------------------- CLI


def test_cli_verifies_with_nonce(capsys):
    rc, out, _ = _cli(capsys, *HOPPER_ARGS, "--nonce", NONCE.hex(), "--at", "2025-01-01T00:00:00Z")
    assert rc == 0, out
    assert "matches the expected nonce" in out and "VERIFIED (nvidia)" in out


def test_cli_wrong_nonce_and_json(capsys):
    rc, out, _ = _cli(capsys, *HOPPER_ARGS, "--nonce", "00" * 32, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["verified"] is False and doc["platform"] == "nvidia"
    assert any(s["step"] == "nonce" and s["result"] == "failed" for s in doc["steps"])
    assert doc["claims"]["measurement_count"] == 64


def test_cli_truncated_is_unusable(capsys, tmp_path):
    short = tmp_path / "short.hex"
    short.write_text(REPORT[:2000].hex())
    rc, _, err = _cli(capsys, "--evidence", str(short), "--certs", HOPPER_CHAIN)
    assert rc == 2 and "truncated" in err


def test_cli_trailing_byte_does_not_break_parsing(capsys, tmp_path):
    padded = tmp_path / "padded.hex"
    padded.write_text((REPORT + b"\0").hex())
    rc, out, _ = _cli(capsys, "--evidence", str(padded), "--certs", HOPPER_CHAIN, "--json")
    assert rc == 0 and json.loads(out)["claims"]["trailing_zero_bytes"] == 1


def test_gpu_evidence_not_bound_to_the_cpu_report_fails_in_a_composite():
    milan = vectors.GENUINE["sev-snp/milan-vcek"].load()
    cpu = Evidence("sev-snp", milan.blob, milan.certs, gpu=(Evidence("nvidia", REPORT, CHAIN),))
    pol = _policy("[sev-snp]\nallow_debug = true\n[nvidia]\nrequired = true\n")
    verdict, _ = verify_evidence(cpu, at=AT, policy=pol)
    assert _step(verdict, "gpu[0] report signature").status is Status.OK
    assert _step(verdict, "gpu[0] nonce").status is Status.FAILED and not verdict.verified
    assert verdict.claims["gpus"][0]["driver_version"] == "550.90.07"
