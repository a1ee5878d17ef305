"""AWS Nitro Enclaves attestation documents through the verifier CLI: genuine, tampered, forged, malformed."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cbor2
import pytest
import vectors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.cli import main
from verifier.errors import ParseError, PolicyError
from verifier.platforms import nitro

AT = "2024-09-09T20:00:00Z"
BLOCKY_AT = "2024-09-07T15:00:00Z"
DOC = base64.b64decode(vectors.read(f"{vectors.ETERNIS}/attestation.b64"))
PROD = base64.b64decode(vectors.read(f"{vectors.BLOCKY}/nitro_attestation.b64"))
PROD_DEBUG = base64.b64decode(vectors.read(f"{vectors.BLOCKY}/nitro_attestation_debug.b64"))
NONCE = "00" * 19 + "01"
PROD_PCR0 = "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a"


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, blob: bytes = DOC, *args: str,
        at: str = AT) -> tuple[int, str]:
    path = tmp_path / "doc.cbor"
    path.write_bytes(blob)
    code = main(["evidence", "--platform", "nitro", "--evidence", str(path), "--at", at, *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def run_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, blob: bytes = DOC, *args: str,
             at: str = AT) -> tuple[int, dict]:
    code, out = run(capsys, tmp_path, blob, "--json", *args, at=at)
    return code, json.loads(out)


def steps(result: dict) -> dict[str, tuple[str, str]]:
    return {s["step"]: (s["result"], s["reason"]) for s in result["steps"]}


def flip_at(blob: bytes, needle: bytes, delta: int = 0) -> bytes:
    i = blob.index(needle) + delta
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


# --- genuine documents --------------------------------------------------------------------------------

def test_debug_enclave_fails_baseline_and_passes_with_allow_debug(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path)
    assert code == 1 and result["verified"] is False
    s = steps(result)
    assert s["document signature"][0] == s["cabundle root"][0] == s["certificate chain"][0] == "ok"
    assert s["debug"] == ("failed", "PCR0 is all zeros: the enclave runs in debug mode and the policy forbids debug")
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug")
    assert code == 0 and result["verified"] is True and result["platform"] == "nitro"
    c = result["claims"]
    assert c["debug"] is True and c["digest"] == "SHA384"
    assert c["module_id"] == "i-0bbf1bfe232b8c2ce-enc0191ba35c9d1b77a"
    assert c["timestamp"] == "2024-09-09T19:49:12.400000+00:00"
    assert c["public_key"] == b"dummy".hex() and c["nonce"] == NONCE
    assert len(c["pcrs"]) == 16 and c["pcrs"]["0"] == "00" * 48 and c["pcrs"]["3"].startswith("671ca1e3")
    assert len(bytes.fromhex(c["user_data"])) == 68


def test_step_table_names_every_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, tmp_path, DOC, "--allow-debug")
    assert code == 0 and "VERIFIED (nitro)" in out
    for name in ("document signature", "cabundle root", "certificate chain", "timestamp", "debug", "pcr0", "pcr8"):
        assert any(row.startswith(name) for row in out.splitlines()), name


def test_production_enclave_verifies_in_baseline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, PROD, at=BLOCKY_AT)
    assert code == 0, result
    assert steps(result)["debug"] == ("ok", "PCR0 is set: not a debug-mode enclave")
    c = result["claims"]
    assert c["debug"] is False and c["pcrs"]["0"] == PROD_PCR0
    assert c["user_data"] == c["nonce"] == c["public_key"] == "01" * 1024


def test_second_debug_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_json(capsys, tmp_path, PROD_DEBUG, at=BLOCKY_AT)[0] == 1
    code, result = run_json(capsys, tmp_path, PROD_DEBUG, "--allow-debug", at=BLOCKY_AT)
    assert code == 0 and result["claims"]["pcrs"]["4"] == result["claims"]["pcrs"]["4"]


def test_tagged_cose_sign1_is_accepted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(PROD)))
    assert tagged[:1] == b"\xd2"
    assert run_json(capsys, tmp_path, tagged, at=BLOCKY_AT)[0] == 0


def test_nonce_is_compared(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug", "--nonce", NONCE)
    assert code == 0 and steps(result)["nonce"] == ("ok", "matches the expected nonce")
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug", "--nonce", "00" * 20)
    assert code == 1 and steps(result)["nonce"][0] == "failed"


def test_report_data_is_user_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    user_data = cbor2.loads(cbor2.loads(DOC)[2])["user_data"]
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug", "--report-data", user_data[:64].hex())
    assert code == 1  # 68 bytes of user data are not the 64-byte value given
    assert steps(result)["report data"][0] == "failed"


# --- time ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("at", ["2024-09-09T23:00:00Z", "2024-09-09T19:00:00Z", "2025-01-01T00:00:00Z"])
def test_outside_the_leaf_validity_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, at: str) -> None:
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug", at=at)
    assert code == 1
    status, reason = steps(result)["certificate chain"]
    assert status == "failed" and "not at" in reason


def test_document_from_the_future_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, DOC, "--allow-debug", at="2024-09-09T19:49:10Z")
    assert code == 1
    assert "after the verification time" in steps(result)["timestamp"][1]


# --- tampering ----------------------------------------------------------------------------------------

def test_flipped_byte_in_payload_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pcr3 = cbor2.loads(cbor2.loads(DOC)[2])["pcrs"][3]
    code, result = run_json(capsys, tmp_path, flip_at(DOC, pcr3, 7), "--allow-debug")
    assert code == 1
    assert steps(result)["document signature"][0] == "failed"
    assert result["claims"]["pcrs"]["3"] != pcr3.hex()


def test_flipped_byte_in_signature_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, DOC[:-10] + bytes([DOC[-10] ^ 0x80]) + DOC[-9:], "--allow-debug")
    assert code == 1
    assert steps(result)["document signature"][0] == "failed"
    assert steps(result)["certificate chain"][0] == "ok"


def test_flipped_byte_in_an_intermediate_certificate_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert = cbor2.loads(cbor2.loads(DOC)[2])["cabundle"][2]
    code, result = run_json(capsys, tmp_path, flip_at(DOC, cert, len(cert) - 5), "--allow-debug")
    assert code == 1
    status, reason = steps(result)["certificate chain"]
    assert status == "failed" and "does not verify" in reason


def test_invalid_document_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blob = base64.b64decode(vectors.read(f"{vectors.ETERNIS}/invalid_attestation.b64"))
    for at in (AT, "2024-07-23T21:30:00Z"):  # also within its own certificates' validity
        code, result = run_json(capsys, tmp_path, blob, "--allow-debug", at=at)
        assert code == 1
        assert steps(result)["document signature"][0] == "failed"


@pytest.mark.parametrize("length", [0, 1, 5, 100, 3000, len(DOC) - 1])
def test_truncated_document_is_unusable(capsys: pytest.CaptureFixture[str], tmp_path: Path, length: int) -> None:
    code, out = run(capsys, tmp_path, DOC[:length] or b"\x84")
    assert code == 2 and "unusable input" in out and "Traceback" not in out


# --- forged documents: self-consistent, signed by a chain that is not AWS's -----------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:
    now = datetime(2024, 9, 9, tzinfo=timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA384()))


def forge(*, impersonate_root: bool = False, protected: dict | None = None, tag: int | None = None,
          **payload: Any) -> bytes:
    """A Nitro document signed by a fresh P-384 chain. With `impersonate_root`, the cabundle starts with the
    genuine AWS root and the intermediate claims to be issued by it."""
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
    aws_root = x509.load_der_x509_certificate(cbor2.loads(cbor2.loads(DOC)[2])["cabundle"][0])
    root = aws_root if impersonate_root else _cert(_name("aws.nitro-enclaves"), _name("aws.nitro-enclaves"),
                                                   root_key, root_key, True)
    inter = _cert(_name("forged intermediate"), root.subject, inter_key, root_key, True)
    leaf = _cert(_name("forged leaf"), inter.subject, leaf_key, inter_key, False)
    body = {"module_id": "i-forged-enc0", "digest": "SHA384", "timestamp": 1725911352400,
            "pcrs": {i: bytes([i]) * 48 for i in range(16)},
            "certificate": leaf.public_bytes(serialization.Encoding.DER),
            "cabundle": [c.public_bytes(serialization.Encoding.DER) for c in (root, inter)],
            "public_key": None, "user_data": bytes(64), "nonce": bytes.fromhex(NONCE)}
    body.update(payload)
    body = {k: v for k, v in body.items() if v is not ...}
    prot = cbor2.dumps(protected if protected is not None else {1: -35})
    raw_payload = cbor2.dumps(body)
    der = leaf_key.sign(cbor2.dumps(["Signature1", prot, b"", raw_payload]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    sign1 = [prot, {}, raw_payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")]
    return cbor2.dumps(cbor2.CBORTag(tag, sign1) if tag is not None else sign1)


def test_forged_document_with_its_own_root_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, forge())
    assert code == 1
    s = steps(result)
    assert s["document signature"][0] == "ok"  # self-consistent: only the root gives it away
    status, reason = s["cabundle root"]
    assert status == "failed" and "not the pinned aws.nitro-enclaves root" in reason
    assert "certificate chain" not in s


def test_forged_chain_under_the_real_root_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, forge(impersonate_root=True))
    assert code == 1
    s = steps(result)
    assert s["document signature"][0] == "ok" and s["cabundle root"][0] == "ok"
    status, reason = s["certificate chain"]
    assert status == "failed" and "'forged intermediate'" in reason and "does not verify" in reason


# --- malformed documents --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(protected={1: -7}), "ES384"),
    (dict(protected={}), "ES384"),
    (dict(tag=98), "tag 98 is not COSE_Sign1"),
    (dict(digest="SHA256"), "digest is 'SHA256'"),
    (dict(module_id=""), "module_id"),
    (dict(timestamp=0), "timestamp"),
    (dict(timestamp=-5), "timestamp"),
    (dict(pcrs={0: bytes(32)}), "PCR0 is 32 bytes"),
    (dict(pcrs={32: bytes(48)}), "PCR index 32"),
    (dict(pcrs={1: bytes(48)}), "PCR0 is missing"),
    (dict(pcrs={}), "1..32 entries"),
    (dict(certificate=b""), "certificate is 0 bytes"),
    (dict(certificate=b"\x30\x03\x02\x01\x01"), "not a DER X.509 certificate"),
    (dict(certificate=cbor2.loads(cbor2.loads(DOC)[2])["certificate"].replace(b"\xa0\x03\x02\x01\x02",
                                                                             b"\xa0\x03\x02\x01\x34", 1)),
     "52 is not a valid X509 version"),
    (dict(cabundle=[]), "cabundle must be a non-empty array"),
    (dict(cabundle=[b"x" * 1025]), "cabundle\\[0\\] is 1025 bytes"),
    (dict(user_data=bytes(1025)), "user_data is 1025 bytes"),
    (dict(nonce="text"), "nonce must be a byte string"),
    (dict(public_key=b""), "public_key is 0 bytes"),
    (dict(extra=1), "unknown field"),
    (dict(certificate=...), "lacks certificate"),
])
def test_malformed_documents_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        nitro.parse(forge(**kwargs))


def test_strict_cbor() -> None:
    with pytest.raises(ParseError, match="trailing bytes"):
        nitro.parse(PROD + b"\x00")
    sign1 = cbor2.loads(PROD)
    with pytest.raises(ParseError, match="array of 4"):
        nitro.parse(cbor2.dumps(sign1[:3]))
    with pytest.raises(ParseError, match="not valid CBOR"):  # duplicate key in the protected header
        nitro.parse(cbor2.dumps([b"\xa2\x01\x38\x22\x01\x38\x22", {}, sign1[2], sign1[3]]))
    indefinite = b"\x9f" + b"".join(cbor2.dumps(x) for x in sign1) + b"\xff"
    with pytest.raises(ParseError, match="not valid CBOR"):
        nitro.parse(indefinite)
    with pytest.raises(ParseError, match="signature is 95 bytes"):
        nitro.parse(cbor2.dumps([sign1[0], {}, sign1[2], sign1[3][:95]]))


def test_optional_fields_may_be_null_or_absent() -> None:
    doc = nitro.parse(forge(public_key=None, user_data=..., nonce=None))
    assert doc.public_key is None and doc.user_data is None and doc.nonce is None


# --- policy -------------------------------------------------------------------------------------------

def write_policy(tmp_path: Path, body: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text("[nitro]\n" + body)
    return str(path)


def test_policy_pins_pcrs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = write_policy(tmp_path, f'pcr0 = ["{"ff" * 48}", "{PROD_PCR0.upper()}"]\npcr8 = ["{"00" * 48}"]\n')
    code, result = run_json(capsys, tmp_path, PROD, "--policy", pol, at=BLOCKY_AT)
    assert code == 0
    s = steps(result)
    assert s["pcr0"][0] == s["pcr8"][0] == "ok" and s["pcr1"] [0] == "skipped"
    pol = write_policy(tmp_path, f'pcr1 = ["{"ff" * 48}"]\n')
    code, result = run_json(capsys, tmp_path, PROD, "--policy", pol, at=BLOCKY_AT)
    assert code == 1 and steps(result)["pcr1"][0] == "failed"


def test_policy_allow_debug(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_json(capsys, tmp_path, DOC, "--policy", write_policy(tmp_path, ""))[0] == 1
    assert run_json(capsys, tmp_path, DOC, "--policy", write_policy(tmp_path, "allow_debug = true\n"))[0] == 0


@pytest.mark.parametrize("table, message", [
    ({"pcr0": ["00" * 32]}, "96-digit hex"),
    ({"pcr5": ["00" * 48]}, "unknown key"),
    ({"pcr0": "00" * 48}, "non-empty list"),
    ({"allow_debug": 1}, "allow_debug"),
])
def test_malformed_policy_tables(table: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        nitro.parse_policy(table)


# --- the parser never fails any other way --------------------------------------------------------------

_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.binary(max_size=80) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.integers(-40, 40) | st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=20,
)
_fields = st.sampled_from(["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key",
                           "user_data", "nonce"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_parse_errors(data: bytes) -> None:
    try:
        nitro.parse(data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(_fields, _cbor_values)
def test_random_field_values_only_parse_errors(field: str, value: Any) -> None:
    sign1 = cbor2.loads(PROD)
    payload = cbor2.loads(sign1[2])
    payload[field] = value
    try:
        nitro.parse(cbor2.dumps([sign1[0], sign1[1], cbor2.dumps(payload), sign1[3]]))
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(DOC) - 1))
def test_every_truncation_is_a_parse_error(length: int) -> None:
    with pytest.raises(ParseError):
        nitro.parse(DOC[:length])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(DOC) - 1), st.integers(1, 255))
def test_mutated_documents_parse_or_raise_parse_error(offset: int, xor: int) -> None:
    blob = bytearray(DOC)
    blob[offset] ^= xor
    try:
        nitro.parse(bytes(blob))
    except ParseError:
        pass
