"""Intel TDX quotes through the verifier CLI: genuine v4 quotes with Intel collateral, tampering, v5 layouts."""

from __future__ import annotations

import base64
import json
import struct
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dcap_qvl
import pytest
import vectors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.cli import main
from verifier.errors import ParseError, PolicyError
from verifier.platforms import tdx

SAMPLE_HEX = vectors.path("tdx/dcap-qvl-sample-hex/quote.hex")
AT = "2025-07-01T00:00:00Z"
QUOTE = vectors.read(f"{vectors.TDX_V4}/quote.bin")
COLLATERAL = str(vectors.path(f"{vectors.TDX_V4}/collateral.json"))

# offsets in a v4 quote
BODY = tdx.HEADER_LEN
TD_ATTRIBUTES = BODY + 16 + 48 + 48 + 8
MRTD = TD_ATTRIBUTES + 8 + 8
SIG_DATA = BODY + 584 + 4
GENUINE_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
GENUINE_RTMR0 = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
GENUINE_REPORT_DATA = ("9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
                       "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20")


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, blob: bytes | None = None, *args: str,
        collateral: str | None = COLLATERAL, at: str = AT) -> tuple[int, str]:
    path = tmp_path / "quote.bin"
    path.write_bytes(QUOTE if blob is None else blob)
    argv = ["evidence", "--platform", "tdx", "--evidence", str(path), "--at", at, *args]
    if collateral is not None:
        argv += ["--collateral", collateral]
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def run_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, blob: bytes | None = None, *args: str,
             **kw: str | None) -> tuple[int, dict]:
    code, out = run(capsys, tmp_path, blob, "--json", *args, **kw)  # type: ignore[arg-type]
    return code, json.loads(out)


def steps(result: dict) -> dict[str, tuple[str, str]]:
    return {s["step"]: (s["result"], s["reason"]) for s in result["steps"]}


def flip(blob: bytes, offset: int) -> bytes:
    out = bytearray(blob)
    out[offset] ^= 0x01
    return bytes(out)


def pck_pem(quote: tdx.Quote, blob: bytes) -> bytes:
    """The raw PCK chain text (with its NUL terminator) as it sits in the quote."""
    start = SIG_DATA + 128 + 6 + 384 + 64 + 2 + len(quote.qe_auth_data)
    size = struct.unpack_from("<I", blob, start + 2)[0]
    return blob[start + 6:start + 6 + size]


def rebuild(quote: tdx.Quote, header: bytes, body: bytes, pem: bytes, descriptor: bytes = b"") -> bytes:
    """Serialize a quote from parts, with every length field recomputed (the spec's layout)."""
    inner = struct.pack("<HI", tdx.CERT_PCK_CHAIN, len(pem)) + pem
    cert = (quote.qe_report + quote.qe_report_signature + struct.pack("<H", len(quote.qe_auth_data))
            + quote.qe_auth_data + inner)
    sig = quote.signature + quote.attestation_key + struct.pack("<HI", tdx.CERT_QE_REPORT, len(cert)) + cert
    return header + descriptor + body + struct.pack("<I", len(sig)) + sig


def as_v5(body_type: int, extra: bytes = b"") -> bytes:
    """The genuine quote's parts laid out as a v5 quote (header version 5, body descriptor)."""
    q = tdx.parse(QUOTE)
    header = struct.pack("<H", 5) + QUOTE[2:BODY]
    body = QUOTE[BODY:BODY + 584] + extra
    return rebuild(q, header, body, pck_pem(q, QUOTE), struct.pack("<HI", body_type, len(body)))


# --- genuine evidence ---------------------------------------------------------------------------------

def test_genuine_v4_quote_verifies_up_to_date(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, tmp_path)
    assert code == 0, out
    assert "VERIFIED (tdx)" in out
    for line in ("PCK chain root", "quote and collateral (dcap-qvl)", "TCB status", "debug"):
        assert any(row.startswith(line) and " ok " in row for row in out.splitlines()), line
    assert "not pinned by policy" in " ".join(out.split())


def test_json_gives_verdict_steps_and_claims(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path)
    assert code == 0 and result["verified"] is True and result["platform"] == "tdx"
    s = steps(result)
    assert s["TCB status"] == ("ok", "UpToDate is accepted")
    assert s["mrtd"][0] == "skipped" and s["rtmr3"][0] == "skipped"
    c = result["claims"]
    assert c["version"] == 4 and c["tdx_module"] == "1.0"
    assert c["mrtd"] == GENUINE_MRTD and c["rtmr0"] == GENUINE_RTMR0
    assert c["report_data"] == GENUINE_REPORT_DATA
    assert c["tcb_status"] == "UpToDate" and c["advisory_ids"] == []
    assert c["fmspc"] == "B0C06F000000"
    assert c["debug"] is False and c["td_attributes"] == "0000001000000000"
    assert c["tee_tcb_svn"] == "06010300000000000000000000000000"
    assert c["tcb_info_valid"] == "2025-06-19T10:16:03Z .. 2025-07-19T10:16:03Z"


def test_parse_matches_dcap_qvl_parser() -> None:
    """Two independent parsers of the same bytes agree on every TD report field."""
    mine = tdx.parse(QUOTE).report
    theirs = dcap_qvl.parse_quote(QUOTE).report
    assert (mine.mrtd, mine.mrseam, mine.mrsignerseam, mine.report_data) == (
        bytes(theirs.mr_td), bytes(theirs.mr_seam), bytes(theirs.mr_signer_seam), bytes(theirs.report_data))
    assert [bytes(m) for m in (theirs.rt_mr0, theirs.rt_mr1, theirs.rt_mr2, theirs.rt_mr3)] == list(mine.rtmrs)
    assert (mine.td_attributes, mine.xfam, mine.tee_tcb_svn) == (
        bytes(theirs.td_attributes), bytes(theirs.xfam), bytes(theirs.tee_tcb_svn))


def test_report_data_comparison(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, None, "--report-data", GENUINE_REPORT_DATA)
    assert code == 0 and steps(result)["report data"][0] == "ok"
    code, result = run_json(capsys, tmp_path, None, "--report-data", "00" * 64)
    assert code == 1 and steps(result)["report data"][0] == "failed"


# --- time, collateral ---------------------------------------------------------------------------------

def test_after_collateral_window_fails_as_expired(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, None, at="2025-07-20T00:00:00Z")
    assert code == 1 and result["verified"] is False
    status, reason = steps(result)["quote and collateral (dcap-qvl)"]
    assert status == "failed" and "expired" in reason and "2025-07-19T10:16:03Z" in reason
    assert steps(result)["TCB status"][0] == "skipped"


def test_before_collateral_issue_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, None, at="2025-06-01T00:00:00Z")
    assert code == 1
    assert "issue date is in the future" in steps(result)["quote and collateral (dcap-qvl)"][1]


@pytest.mark.parametrize("at", ["1900-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"])
def test_time_before_1970_fails_the_collateral_step(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    at: str) -> None:
    """dcap-qvl takes unsigned seconds since 1970; an earlier --at is a failed step, not an OverflowError."""
    code, result = run_json(capsys, tmp_path, None, at=at)
    assert code == 1 and result["verified"] is False
    status, reason = steps(result)["quote and collateral (dcap-qvl)"]
    assert status == "failed" and "before 1970-01-01" in reason
    assert steps(result)["PCK chain"][0] == "failed"  # the certificates are not valid then either


def test_epoch_itself_reaches_dcap_qvl(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, None, at="1970-01-01T00:00:00Z")
    assert code == 1
    assert "before 1970" not in steps(result)["quote and collateral (dcap-qvl)"][1]


def test_without_collateral_fails_saying_it_is_required(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result = run_json(capsys, tmp_path, None, collateral=None)
    assert code == 1
    status, reason = steps(result)["quote and collateral (dcap-qvl)"]
    assert status == "failed" and "--collateral" in reason and "offline" in reason
    assert result["claims"]["mrtd"] == GENUINE_MRTD  # the quote is still parsed and shown


def test_collateral_that_is_not_json_is_unusable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "collateral.json"
    bad.write_text("{not json")
    code, out = run(capsys, tmp_path, None, collateral=str(bad))
    assert code == 2 and "collateral" in out


# --- tampering ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset, what", [
    (MRTD + 5, "TD report (MRTD)"),
    (BODY + 584 - 1, "TD report (REPORTDATA)"),
    (4, "header"),
    (SIG_DATA + 10, "quote signature"),
    (SIG_DATA + 64 + 10, "attestation key"),
    (SIG_DATA + 134 + 100, "QE report"),
])
def test_flipped_byte_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, offset: int, what: str) -> None:
    blob = flip(QUOTE, offset)
    if offset == 4:  # TEE type 0x81 -> 0x80 is not TDX at all: unusable input
        code, out = run(capsys, tmp_path, blob)
        assert code == 2 and "not TDX" in out
        return
    code, result = run_json(capsys, tmp_path, blob)
    assert code == 1 and result["verified"] is False, what
    assert steps(result)["quote and collateral (dcap-qvl)"][0] == "failed", what


def with_leaf_der(change: bytes, to: bytes) -> bytes:
    """The genuine quote with a same-length change inside the PCK leaf's DER (re-encoded as PEM in place)."""
    leaf = tdx.parse(QUOTE).pck_chain[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert der.count(change) == 1
    der = der.replace(change, to)
    old = leaf.public_bytes(serialization.Encoding.PEM)
    new = (b"-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64)).encode()
           + b"\n-----END CERTIFICATE-----\n")
    assert len(new) == len(old) and old in QUOTE
    return QUOTE.replace(old, new)


def test_flipped_byte_in_pck_leaf_certificate_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    der = tdx.parse(QUOTE).pck_chain[0].public_bytes(serialization.Encoding.DER)
    tail = der[-8:]  # inside the signature's s integer
    code, result = run_json(capsys, tmp_path, with_leaf_der(tail, tail[:3] + bytes([tail[3] ^ 1]) + tail[4:]))
    assert code == 1
    status, reason = steps(result)["PCK chain"]
    assert status == "failed" and "does not verify" in reason
    assert steps(result)["quote and collateral (dcap-qvl)"][0] == "failed"


def test_pck_leaf_of_unknown_x509_version_is_unusable() -> None:
    with pytest.raises(ParseError, match="not a valid X509 version"):
        tdx.parse(with_leaf_der(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x34"))


def _fake_root() -> bytes:
    """A self-signed certificate that calls itself the Intel SGX Root CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=3650)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_chain_to_another_root_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    q = tdx.parse(QUOTE)
    pem = pck_pem(q, QUOTE)
    root_pem = q.pck_chain[-1].public_bytes(serialization.Encoding.PEM)
    blob = rebuild(q, QUOTE[:BODY], QUOTE[BODY:BODY + 584], pem.replace(root_pem, _fake_root()))
    code, result = run_json(capsys, tmp_path, blob)
    assert code == 1
    status, reason = steps(result)["PCK chain root"]
    assert status == "failed" and "not the pinned Intel SGX Root CA" in reason
    assert "PCK chain" not in steps(result)  # nothing is checked against a root that is not pinned


def test_rebuild_reproduces_the_genuine_quote() -> None:
    """The test serializer writes the spec's layout: on the genuine parts it gives the genuine bytes."""
    q = tdx.parse(QUOTE)
    assert rebuild(q, QUOTE[:BODY], QUOTE[BODY:BODY + 584], pck_pem(q, QUOTE)) == q.raw
    assert QUOTE[len(q.raw):].strip(b"\x00") == b""


def test_debug_attribute_is_refused_unless_allowed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blob = flip(QUOTE, TD_ATTRIBUTES)  # DEBUG bit; the signature no longer verifies either
    code, result = run_json(capsys, tmp_path, blob)
    assert code == 1 and result["claims"]["debug"] is True
    assert steps(result)["debug"][0] == "failed"
    code, result = run_json(capsys, tmp_path, blob, "--allow-debug")
    assert code == 1 and steps(result)["debug"][0] == "ok"
    assert steps(result)["quote and collateral (dcap-qvl)"][0] == "failed"


# --- unparseable input --------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 10, 47, 48, 300, 632, 636, 700, 1300, 4935])
def test_truncated_quote_is_unusable(capsys: pytest.CaptureFixture[str], tmp_path: Path, length: int) -> None:
    blob = QUOTE[:length]
    if not blob:
        blob = b"\x00"
    code, out = run(capsys, tmp_path, blob)
    assert code == 2, out
    assert "unusable input" in out and "Traceback" not in out


@pytest.mark.parametrize("blob, message", [
    (QUOTE[:4936] + b"\x01", "not zero padding"),
    (struct.pack("<H", 3) + QUOTE[2:], "version 3"),
    (QUOTE[:2] + struct.pack("<H", 3) + QUOTE[4:], "attestation key type 3"),
    (QUOTE[:SIG_DATA - 4] + struct.pack("<I", 10_000) + QUOTE[SIG_DATA:], "truncated in signature data"),
    (QUOTE[:SIG_DATA + 128] + struct.pack("<H", 5) + QUOTE[SIG_DATA + 130:], "certification data type 5"),
    (QUOTE[:SIG_DATA + 130] + struct.pack("<I", 4000) + QUOTE[SIG_DATA + 134:], "declares 4000 bytes"),
])
def test_malformed_quotes_are_named(blob: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        tdx.parse(blob)


# --- v5 -----------------------------------------------------------------------------------------------

def test_v5_td10_body_parses_like_v4() -> None:
    v5 = as_v5(2)
    mine = tdx.parse(v5)
    assert mine.version == 5 and mine.tdx_module == "1.0"
    assert mine.report == tdx.parse(QUOTE).report
    assert bytes(dcap_qvl.parse_quote(v5).report.mr_td) == mine.report.mrtd


def test_v5_td15_body_parses_new_fields_like_dcap_qvl() -> None:
    svn2, service_td = bytes(range(16)), bytes(range(100, 148))
    v5 = as_v5(3, svn2 + service_td)
    mine = tdx.parse(v5)
    assert mine.tdx_module == "1.5"
    assert mine.report.tee_tcb_svn_2 == svn2 and mine.report.mrservicetd == service_td
    assert mine.report.report_data == bytes.fromhex(GENUINE_REPORT_DATA)
    theirs = dcap_qvl.parse_quote(v5).report
    assert bytes(theirs.tee_tcb_svn2) == svn2 and bytes(theirs.mr_service_td) == service_td
    assert bytes(theirs.rt_mr0) == mine.report.rtmrs[0]


def test_v5_signature_covers_the_body_descriptor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Re-laid-out as v5, the same signature no longer matches: the parse succeeds, verification fails."""
    code, result = run_json(capsys, tmp_path, as_v5(3, bytes(64)))
    assert code == 1
    assert result["claims"]["version"] == 5 and result["claims"]["mrservicetd"] == "00" * 48
    assert "signature" in steps(result)["quote and collateral (dcap-qvl)"][1]


@pytest.mark.parametrize("body_type, size, message", [
    (4, 584, "body type 4 is not supported"),
    (1, 384, "body type 1 is not supported"),
    (3, 584, "declares 584 bytes, expected 648"),
])
def test_v5_bad_body_descriptor(body_type: int, size: int, message: str) -> None:
    v5 = bytearray(as_v5(2))
    v5[BODY:BODY + 6] = struct.pack("<HI", body_type, size)
    with pytest.raises(ParseError, match=message):
        tdx.parse(bytes(v5))


# --- another genuine quote ----------------------------------------------------------------------------

def test_dcap_qvl_sample_quote_passes_signatures_and_fails_tcb_matching(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hex_path = tmp_path / "quote.hex"
    hex_path.write_text(SAMPLE_HEX.read_text())
    code = main(["evidence", "--platform", "tdx", "--evidence", str(hex_path), "--collateral", COLLATERAL,
                 "--at", AT, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert result["claims"]["mrtd"].startswith("7ba9e262ce697908") and result["claims"]["fmspc"] == "B0C06F000000"
    assert steps(result)["PCK chain"][0] == "ok"
    assert "No matching TCB level" in steps(result)["quote and collateral (dcap-qvl)"][1]
    # tampered, it fails earlier, on the quote signature: the genuine one passed every signature check
    blob = flip(bytes.fromhex(SAMPLE_HEX.read_text()[2:]), MRTD)
    code, result = run_json(capsys, tmp_path, blob)
    assert code == 1 and "signature is invalid" in steps(result)["quote and collateral (dcap-qvl)"][1]


# --- policy -------------------------------------------------------------------------------------------

def write_policy(tmp_path: Path, body: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text("[tdx]\n" + body)
    return str(path)


def test_policy_pins_measurements(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = write_policy(tmp_path, f'mrtd = ["{GENUINE_MRTD.upper()}"]\nrtmr0 = ["{GENUINE_RTMR0}"]\n'
                                 f'mrowner = ["{"00" * 48}"]\n')
    code, result = run_json(capsys, tmp_path, None, "--policy", pol)
    assert code == 0
    s = steps(result)
    assert s["mrtd"][0] == s["rtmr0"][0] == s["mrowner"][0] == "ok" and s["rtmr1"][0] == "skipped"
    pol = write_policy(tmp_path, f'mrtd = ["{"ab" * 48}"]\n')
    code, result = run_json(capsys, tmp_path, None, "--policy", pol)
    assert code == 1 and steps(result)["mrtd"] == ("failed", f"{GENUINE_MRTD} is not in the policy's allow-list")


def test_policy_tcb_statuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = write_policy(tmp_path, 'accepted_tcb_statuses = ["OutOfDate"]\n')
    code, result = run_json(capsys, tmp_path, None, "--policy", pol)
    assert code == 1
    assert steps(result)["TCB status"] == ("failed", "UpToDate is not accepted (policy accepts OutOfDate)")


@pytest.mark.parametrize("table, message", [
    ({"mrtd": ["abc"]}, "96-digit hex"),
    ({"mrtd": []}, "non-empty"),
    ({"rtmr4": ["00" * 48]}, "unknown key"),
    ({"allow_debug": "no"}, "allow_debug"),
    ({"accepted_tcb_statuses": ["Revoked"]}, "Revoked is never acceptable"),
    ({"accepted_tcb_statuses": "UpToDate"}, "accepted_tcb_statuses"),
])
def test_malformed_policy_tables(table: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        tdx.parse_policy(table)


def test_baseline_policy() -> None:
    assert tdx.baseline_policy(False) == tdx.TdxPolicy({}, False, ("UpToDate",))
    assert tdx.parse_policy({}) == tdx.baseline_policy(False)


# --- the parser never fails any other way --------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_only_parse_errors(data: bytes) -> None:
    for blob in (data, QUOTE[:BODY] + data, QUOTE[:SIG_DATA] + data):
        try:
            tdx.parse(blob)
        except ParseError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4935))
def test_every_truncation_is_a_parse_error(length: int) -> None:
    with pytest.raises(ParseError):
        tdx.parse(QUOTE[:length])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(QUOTE) - 1), st.integers(1, 255))
def test_mutated_quotes_parse_or_raise_parse_error(offset: int, xor: int) -> None:
    blob = bytearray(QUOTE)
    blob[offset] ^= xor
    try:
        tdx.parse(bytes(blob))
    except ParseError:
        pass
