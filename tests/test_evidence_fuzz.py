"""Corrupt certificates and corrupt evidence never crash the verifier, on every platform.

`cryptography` decodes a certificate's names, extensions and key only when they are first used, so
a certificate that loads can still fail deep inside a chain check. These tests flip single bytes of
the certificates (in --certs files, inside the TDX quote's PCK chain, inside the Nitro document) and
of the evidence itself, and demand that every outcome is a verdict or the verifier's own
unusable-input error, never another exception, and that a changed certificate is never accepted.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import cbor2
import pytest
import vectors
from cryptography import x509
from helpers import flip as _flip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier import policy as policy_mod
from verifier import x509chain
from verifier.cli import main
from verifier.errors import ParseError, UnusableInput
from verifier.evidence import verify_evidence
from verifier.inputs import read_certs
from verifier.platforms import nitro, tdx

_MILAN = vectors.GENUINE["sev-snp/milan-vcek"]
_HOPPER = vectors.GENUINE["nvidia/hopper"]
SNP_REPORT = vectors.path(_MILAN.evidence)
SNP_CERT_FILES = tuple(map(vectors.path, _MILAN.certs))
NVIDIA_REPORT = vectors.path(_HOPPER.evidence)
NVIDIA_CERT_FILES = tuple(map(vectors.path, _HOPPER.certs))
TDX_QUOTE = vectors.read(f"{vectors.TDX_V4}/quote.bin")
TDX_COLLATERAL = vectors.path(f"{vectors.TDX_V4}/collateral.json")
NITRO_DOC = base64.b64decode(vectors.read(f"{vectors.ETERNIS}/attestation.b64"))
# A flipped byte can make a serial number negative, which `cryptography` only warns about so far.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
_PEM_BODY = re.compile(rb"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", re.S)

# Many examples per test, but the same ones on every run (CI must be stable) and no example database.
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _file_certs(*paths: Path) -> tuple[bytes, ...]:
    return tuple(c for p in paths for c in read_certs(p.read_bytes(), str(p)))


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    return b"-----BEGIN CERTIFICATE-----\n" + b"".join(b64[i:i + 64] + b"\n" for i in range(0, len(b64), 64)) \
        + b"-----END CERTIFICATE-----\n"


def _cli(capsys: pytest.CaptureFixture[str], platform: str, evidence: Path, at: str, *args: str) -> tuple[int, dict]:
    """Run `aaudit-verify evidence --json`; any exception other than the verifier's own propagates."""
    rc = main(["evidence", "--platform", platform, "--evidence", str(evidence), "--at", at, "--json", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    result = json.loads(out)
    assert rc in (0, 1, 2), rc
    assert (rc == 2) == bool(result.get("unusable_input")), result
    if rc == 2:
        assert result["error"]
    return rc, result


# ------------------------------------------------------------------ certificates given with --certs

_mutation = st.tuples(st.booleans(), st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.integers(1, 255))


def _mutated_cert_files(files: tuple[Path, ...], tmp: Path, mutation: tuple[bool, int, int, int]) -> list[Path]:
    """Flip one byte either of a file as it is (PEM text or DER) or of one certificate's DER,
    written back as PEM; return the --certs files to give."""
    as_text, which, offset, xor = mutation
    out = []
    if as_text:
        k = which % len(files)
        for i, src in enumerate(files):
            data = src.read_bytes()
            out.append(tmp / f"certs{i}{src.suffix}")
            out[-1].write_bytes(_flip(data, offset, xor) if i == k else data)
    else:
        certs = list(_file_certs(*files))
        k = which % len(certs)
        certs[k] = _flip(certs[k], offset, xor)
        out.append(tmp / "certs.pem")
        out[-1].write_bytes(b"".join(map(_pem, certs)))
    return out


def _assert_only_known_certs_accepted(rc: int, given: list[Path], originals: tuple[bytes, ...]) -> None:
    """Verified only if every certificate still readable from the files that bears the name of an
    original is that original (a mangled PEM header can drop a certificate the verifier has pinned
    anyway, and a certificate whose subject was flipped names nothing in the chain, so the pinned one
    stands in for it)."""
    if rc == 0:
        names = {x509chain.load_der(c, "original").subject for c in originals}
        changed = set(_file_certs(*given)) - set(originals)
        assert not [c for c in changed if x509chain.load_der(c, "changed").subject in names]


@FUZZ
@given(_mutation)
def test_snp_corrupt_certificates_never_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              mutation: tuple[bool, int, int, int]) -> None:
    files = _mutated_cert_files(SNP_CERT_FILES, tmp_path, mutation)
    rc, _ = _cli(capsys, "sev-snp", SNP_REPORT, "2025-01-01T00:00:00Z",
                 "--allow-debug", *(a for f in files for a in ("--certs", str(f))))
    _assert_only_known_certs_accepted(rc, files, _file_certs(*SNP_CERT_FILES))


@FUZZ
@given(_mutation)
def test_nvidia_corrupt_certificates_never_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 mutation: tuple[bool, int, int, int]) -> None:
    files = _mutated_cert_files(NVIDIA_CERT_FILES, tmp_path, mutation)
    rc, _ = _cli(capsys, "nvidia", NVIDIA_REPORT, "2025-01-01T00:00:00Z",
                 *(a for f in files for a in ("--certs", str(f))))
    _assert_only_known_certs_accepted(rc, files, _file_certs(*NVIDIA_CERT_FILES))


def test_nvidia_chain_pem_with_a_non_base64_byte_is_unusable_input(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    """The reviewer's case: one byte of chain.pem's base64 replaced by a control character."""
    data = bytearray(NVIDIA_CERT_FILES[0].read_bytes())
    data[data.index(b"\n", 40) + 5] = 0x01
    (tmp_path / "chain.pem").write_bytes(bytes(data))
    rc, result = _cli(capsys, "nvidia", NVIDIA_REPORT, "2025-01-01T00:00:00Z",
                      "--certs", str(tmp_path / "chain.pem"))
    assert rc == 2 and "base64" in result["error"]


# One-bit flips of the Hopper leaf certificate that `cryptography` loads without complaint but cannot
# decode later: (offset in the DER, xor, the part named in the error).
_LAZY_FAILURES = [(54, 0x01, "issuer"), (194, 0x02, "subject"), (314, 0x01, "public key"),
                  (443, 0x01, "extensions"), (782, 0x01, "signature algorithm")]


@pytest.mark.parametrize("offset, xor, part", _LAZY_FAILURES)
def test_certificate_decoded_whole_when_loaded(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               offset: int, xor: int, part: str) -> None:
    certs = list(_file_certs(*NVIDIA_CERT_FILES))
    certs[0] = _flip(certs[0], offset, xor)
    x509.load_der_x509_certificate(certs[0])  # loads: the damage shows only when the part is read
    with pytest.raises(ParseError, match=f"leaf: the certificate's {part} cannot be read"):
        x509chain.load_der(certs[0], "leaf")
    (tmp_path / "chain.pem").write_bytes(b"".join(map(_pem, certs)))
    rc, result = _cli(capsys, "nvidia", NVIDIA_REPORT, "2025-01-01T00:00:00Z",
                      "--certs", str(tmp_path / "chain.pem"))
    assert rc == 2 and f"nvidia certificate 1: the certificate's {part} cannot be read" in result["error"]


# --------------------------------------------------------------- certificates inside the evidence

def _tdx_with_corrupt_pck_cert(which: int, offset: int, xor: int) -> bytes:
    """The quote with one DER byte of one PCK-chain certificate flipped, re-encoded as PEM of the
    same length so every length field of the quote stays right."""
    bodies = list(_PEM_BODY.finditer(TDX_QUOTE))
    m = bodies[which % len(bodies)]
    der = _flip(base64.b64decode(b"".join(m.group(1).split())), offset, xor)
    b64 = base64.b64encode(der)
    body = b"".join(b64[i:i + 64] + b"\n" for i in range(0, len(b64), 64))
    assert len(body) == len(m.group(1))
    return TDX_QUOTE[:m.start(1)] + body + TDX_QUOTE[m.end(1):]


@FUZZ
@given(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(1, 255))
def test_tdx_corrupt_pck_certificates_never_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  which: int, offset: int, xor: int) -> None:
    (tmp_path / "quote.bin").write_bytes(_tdx_with_corrupt_pck_cert(which, offset, xor))
    rc, _ = _cli(capsys, "tdx", tmp_path / "quote.bin", "2025-07-01T00:00:00Z", "--allow-debug",
                 "--collateral", str(TDX_COLLATERAL))
    assert rc != 0  # a changed PCK certificate never verifies


def _nitro_with_corrupt_cert(which: int, offset: int, xor: int) -> bytes:
    """The document with one byte of its certificate or of a cabundle entry flipped."""
    sign1 = cbor2.loads(NITRO_DOC)
    payload = cbor2.loads(sign1[2])
    certs = [payload["certificate"], *payload["cabundle"]]
    k = which % len(certs)
    certs[k] = _flip(certs[k], offset, xor)
    payload["certificate"], payload["cabundle"] = certs[0], certs[1:]
    return cbor2.dumps([sign1[0], sign1[1], cbor2.dumps(payload), sign1[3]])


@FUZZ
@given(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(1, 255))
def test_nitro_corrupt_certificates_never_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                which: int, offset: int, xor: int) -> None:
    (tmp_path / "doc.cbor").write_bytes(_nitro_with_corrupt_cert(which, offset, xor))
    rc, _ = _cli(capsys, "nitro", tmp_path / "doc.cbor", "2024-09-09T20:00:00Z", "--allow-debug")
    assert rc != 0  # the certificate is inside the signed payload


# ------------------------------------------------------------- the whole evidence, byte by byte

# Each genuine vector loaded once: (evidence, verification time).
VECTORS = {name: (v.load(), v.when) for name, v in vectors.GENUINE.items()}


def test_nitro_timestamp_after_year_9999_is_a_parse_error() -> None:
    sign1 = cbor2.loads(NITRO_DOC)
    payload = cbor2.loads(sign1[2])
    payload["timestamp"] = 253402300800000  # 10000-01-01T00:00:00Z, in ms
    with pytest.raises(ParseError, match="timestamp 253402300800000 ms is after the year 9999"):
        nitro.parse(cbor2.dumps([sign1[0], sign1[1], cbor2.dumps(payload), sign1[3]]))
    payload["timestamp"] -= 1  # the last millisecond of 9999 is still a time
    assert nitro.parse(cbor2.dumps([sign1[0], sign1[1], cbor2.dumps(payload), sign1[3]])).timestamp.year == 9999


def _same_tdx_quote(a: bytes, b: bytes) -> bool:
    """Equal in every parsed field; PEM line breaks inside the quote may differ, the certificates not."""
    return dataclasses.replace(tdx.parse(a), raw=b"") == dataclasses.replace(tdx.parse(b), raw=b"")


@pytest.mark.parametrize("name", sorted(VECTORS))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(offset=st.integers(0, 1 << 16), xor=st.integers(1, 255))
def test_flipped_evidence_gives_a_verdict_or_unusable_input(name: str, offset: int, xor: int) -> None:
    ev, at = VECTORS[name]
    blob = _flip(ev.blob, offset, xor)
    pol = policy_mod.baseline(ev.platform, True)
    try:
        verdict, _ = verify_evidence(dataclasses.replace(ev, blob=blob), at=at, policy=pol)
    except UnusableInput as exc:
        assert str(exc)
        return
    assert verdict.steps
    assert not verdict.verified or (ev.platform == "tdx" and _same_tdx_quote(blob, ev.blob))
