"""Intel TDX quotes, versions 4 and 5 (ECDSA P-256 attestation key, QE report certification data).

Layout (Intel TDX DCAP Quoting Library API, appendix "Quote format"), little-endian:

    header      48   version u16 (4|5), att_key_type u16 (2 = ECDSA P-256), tee_type u32 (0x81),
                     qe_svn u16, pce_svn u16, qe_vendor_id 16, user_data 20
    v4 body    584   TD report 1.0
    v5 body          body_type u16 (2 = TD report 1.0, 584 bytes; 3 = TD report 1.5, 648 bytes),
                     body_size u32, then the body
    sig_len u32, then signature data: quote signature 64 (r||s over header + body), attestation
    key 64, certification data (type u16 = 6, size u32): QE report 384, QE report signature 64,
    QE auth data (size u16 + bytes), inner certification data (type u16 = 5, size u32, PCK chain PEM)

Real quotes carry zero padding after the signature data, so everything is parsed by length fields.
The cryptographic check of quote + QE report + PCK chain + Intel collateral is dcap-qvl's; this
module parses the TD report itself, checks the PCK chain to the pinned root separately (so a wrong
root is named clearly) and applies the policy (measurements, debug, TCB status).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from verifier import x509chain
from verifier.errors import ParseError, PolicyError
from verifier.models import Evidence, Verdict
from verifier.inputs import load_json
from verifier.platforms import Bound, allowlist
from verifier.platforms.reader import Reader

NAME = "tdx"
ROOT_NAME = "Intel SGX Root CA"
ROOT_FILE = "intel/sgx_root_ca.pem"

HEADER_LEN = 48
TEE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
BODY_TYPES = {2: ("1.0", 584), 3: ("1.5", 648)}  # v5 body descriptor type -> (TD report version, size)
CERT_QE_REPORT = 6
CERT_PCK_CHAIN = 5
QE_REPORT_LEN = 384
TCB_STATUSES = (
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded",
)
MEASUREMENT_KEYS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner")
# A TD's launch: the TDVF firmware (MRTD), its configuration (RTMR0), the kernel (RTMR1), its
# command line and initrd (RTMR2). Only all four together pin the code the TD boots.
CODE_KEYS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
_IDENTITY = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrconfigid", "mrowner", "mrseam")


@dataclass(frozen=True)
class TdReport:
    """The TD report body the quote signs (TDX module 1.0, or 1.5 with two more fields)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES bit 0 (DEBUG): the host can read and change the TD's state."""
        return bool(self.td_attributes[0] & 1)


@dataclass(frozen=True)
class Quote:
    version: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    tdx_module: str  # TD report version: "1.0" or "1.5"
    report: TdReport
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: tuple[x509.Certificate, ...]
    raw: bytes  # the quote without trailing padding


@dataclass(frozen=True)
class TdxPolicy:
    measurements: dict[str, allowlist.AllowList]  # key in MEASUREMENT_KEYS -> allow-list
    allow_debug: bool
    accepted_tcb_statuses: tuple[str, ...]


def _td_report(body: bytes, version: str) -> TdReport:
    r = Reader(body, f"TD report {version}")
    fields = dict(
        tee_tcb_svn=r.take(16, "TEE_TCB_SVN"), mrseam=r.take(48, "MRSEAM"), mrsignerseam=r.take(48, "MRSIGNERSEAM"),
        seam_attributes=r.take(8, "SEAMATTRIBUTES"), td_attributes=r.take(8, "TDATTRIBUTES"), xfam=r.take(8, "XFAM"),
        mrtd=r.take(48, "MRTD"), mrconfigid=r.take(48, "MRCONFIGID"), mrowner=r.take(48, "MROWNER"),
        mrownerconfig=r.take(48, "MROWNERCONFIG"),
    )
    rtmrs = (r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3"))
    report_data = r.take(64, "REPORTDATA")
    extra: dict[str, bytes] = {}
    if version == "1.5":
        extra = dict(tee_tcb_svn_2=r.take(16, "TEE_TCB_SVN_2"), mrservicetd=r.take(48, "MRSERVICETD"))
    return TdReport(**fields, rtmrs=rtmrs, report_data=report_data, **extra)


def _pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    text = pem.rstrip(b"\x00")  # the quoting library writes a C string
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ParseError("tdx quote: PCK certificate chain holds no PEM certificate")
    certs = x509chain.load_pem(text, "tdx quote: PCK certificate chain")
    if len(certs) < 2:
        raise ParseError(f"tdx quote: PCK certificate chain has {len(certs)} certificate(s), expected leaf, "
                         "intermediate and root")
    return certs


def _certification_data(s: Reader, kind: int, name: str, meaning: str) -> int:
    """A certification data header (type u16, size u32) of type `kind` whose data fills the rest of
    the signature data; returns that size."""
    got = s.u16(f"{name} type")
    if got != kind:
        raise ParseError(f"tdx quote: {name} type {got} is not supported (expected {kind}, {meaning})")
    size = s.u32(f"{name} size")
    left = len(s.data) - s.pos
    if size != left:
        raise ParseError(f"tdx quote: {name} declares {size} bytes, {left} remain in the signature data")
    return size


def parse(blob: bytes) -> Quote:
    """Parse a TDX quote v4 or v5; `ParseError` on anything malformed or unsupported."""
    r = Reader(blob, "tdx quote")
    header = r.take(HEADER_LEN, "header")
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", header)
    if version not in (4, 5):
        raise ParseError(f"tdx quote: version {version} is not supported (expected 4 or 5)")
    if tee_type != TEE_TDX:
        raise ParseError(f"tdx quote: TEE type {tee_type:#x} is not TDX (0x81)")
    if key_type != ATT_KEY_ECDSA_P256:
        raise ParseError(f"tdx quote: attestation key type {key_type} is not ECDSA P-256 (2)")
    if version == 4:
        tdx_module, size = "1.0", BODY_TYPES[2][1]
    else:
        body_type = r.u16("body type")
        if body_type not in BODY_TYPES:
            raise ParseError(f"tdx quote: v5 body type {body_type} is not supported "
                             "(expected 2 = TD report 1.0 or 3 = TD report 1.5)")
        tdx_module, size = BODY_TYPES[body_type]
        declared = r.u32("body size")
        if declared != size:
            raise ParseError(f"tdx quote: v5 body type {body_type} declares {declared} bytes, expected {size}")
    report = _td_report(r.take(size, f"TD report {tdx_module}"), tdx_module)

    sig_len = r.u32("signature data length")
    sig_start = r.pos
    s = Reader(r.take(sig_len, "signature data"), "tdx quote signature data")
    signature = s.take(64, "quote signature")
    attestation_key = s.take(64, "attestation key")
    _certification_data(s, CERT_QE_REPORT, "certification data", "QE report certification data")
    qe_report = s.take(QE_REPORT_LEN, "QE report")
    qe_report_signature = s.take(64, "QE report signature")
    qe_auth_data = s.take(s.u16("QE auth data size"), "QE auth data")
    inner_size = _certification_data(s, CERT_PCK_CHAIN, "PCK certification data", "PCK certificate chain")
    pck_chain = _pck_chain(s.take(inner_size, "PCK certificate chain"))

    end = sig_start + sig_len
    if blob[end:].strip(b"\x00"):
        raise ParseError(f"tdx quote: {len(blob) - end} bytes after the signature data are not zero padding")
    return Quote(version, qe_svn, pce_svn, header[12:28], tdx_module, report, signature, attestation_key,
                 qe_report, qe_report_signature, qe_auth_data, pck_chain, blob[:end])


def parse_policy(table: dict[str, Any]) -> TdxPolicy:
    unknown = set(table) - {*MEASUREMENT_KEYS, "allow_debug", "accepted_tcb_statuses"}
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))}")
    lists = {key: allowlist.parse(table, key, allowlist.hex_bytes(48)) for key in MEASUREMENT_KEYS}
    measurements = {key: allowed for key, allowed in lists.items() if allowed is not None}
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError("allow_debug must be true or false")
    statuses = table.get("accepted_tcb_statuses", ["UpToDate"])
    if not isinstance(statuses, list) or not statuses or not all(s in TCB_STATUSES for s in statuses):
        raise PolicyError(f"accepted_tcb_statuses must be a non-empty list of: {', '.join(TCB_STATUSES)} "
                          "(Revoked is never acceptable)")
    return TdxPolicy(measurements, allow_debug, tuple(statuses))


def baseline_policy(allow_debug: bool) -> TdxPolicy:
    return TdxPolicy({}, allow_debug, ("UpToDate",))


def is_pinned(policy: TdxPolicy) -> bool:
    return all(key in policy.measurements for key in CODE_KEYS)


def identity_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: claims.get(k) for k in _IDENTITY}


@lru_cache(maxsize=1)
def _root() -> tuple[x509.Certificate, bytes]:
    root = x509chain.pinned_root(ROOT_NAME, ROOT_FILE)
    return root, root.public_bytes(Encoding.DER)


def _claims(quote: Quote) -> dict[str, Any]:
    rep = quote.report
    claims: dict[str, Any] = {
        "version": quote.version,
        "tdx_module": quote.tdx_module,
        "tee_tcb_svn": rep.tee_tcb_svn.hex(),
        "mrseam": rep.mrseam.hex(),
        "mrtd": rep.mrtd.hex(),
        **{f"rtmr{i}": m.hex() for i, m in enumerate(rep.rtmrs)},
        "mrconfigid": rep.mrconfigid.hex(),
        "mrowner": rep.mrowner.hex(),
        "mrownerconfig": rep.mrownerconfig.hex(),
        "td_attributes": rep.td_attributes.hex(),
        "debug": rep.debug,
        "xfam": rep.xfam.hex(),
        "report_data": rep.report_data.hex(),
    }
    if rep.tee_tcb_svn_2 is not None and rep.mrservicetd is not None:
        claims.update(tee_tcb_svn_2=rep.tee_tcb_svn_2.hex(), mrservicetd=rep.mrservicetd.hex())
    return claims


def _check_pck_chain(quote: Quote, at: datetime, verdict: Verdict) -> None:
    root, _ = _root()
    *below, top = quote.pck_chain
    got = x509chain.fingerprint(top)
    if not verdict.check("PCK chain root", got == x509chain.PINNED_ROOTS[ROOT_NAME],
                         f"ends in the pinned {ROOT_NAME} (sha256 {got[:16]}…)",
                         f"ends in {x509chain.name_of(top)!r} (sha256 {got[:16]}…), not the pinned {ROOT_NAME} "
                         f"(sha256 {x509chain.PINNED_ROOTS[ROOT_NAME][:16]}…)"):
        return
    try:
        x509chain.verify_chain(below, root, at)
        verdict.ok("PCK chain", f"{x509chain.name_of(below[0])!r} chains to the pinned root, valid at {at.isoformat()}")
    except x509chain.ChainError as exc:
        verdict.fail("PCK chain", str(exc))


def _collateral_windows(outer: Any) -> dict[str, str]:
    """Issue date .. next update of the TCB info and QE identity, to make expiry failures actionable."""
    out = {}
    try:
        for key, claim in (("tcb_info", "tcb_info_valid"), ("qe_identity", "qe_identity_valid")):
            inner = load_json(outer[key], f"tdx collateral {key}")
            out[claim] = f"{inner['issueDate']} .. {inner['nextUpdate']}"
    except (ParseError, KeyError, TypeError):
        pass  # dcap-qvl reports malformed collateral itself
    return out


def _check_collateral(quote: Quote, collateral: bytes | None, at: datetime,
                      verdict: Verdict) -> tuple[str, list[str]] | None:
    """dcap-qvl's check of quote, QE report and PCK chain against Intel collateral.

    Returns the TCB status and advisory IDs, or None when the check failed."""
    step = "quote and collateral (dcap-qvl)"
    if collateral is None:
        verdict.fail(step, "TDX verification needs Intel collateral (TCB info, QE identity, CRLs); this verifier "
                     "is offline: pass --collateral with dcap-qvl's collateral JSON")
        return None
    outer = load_json(collateral, "tdx collateral")  # strict first: dcap-qvl would take the last duplicate key
    try:
        col = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode("utf-8"))
    except ValueError as exc:
        raise ParseError(f"tdx collateral: not dcap-qvl collateral JSON ({' '.join(str(exc).split())})") from None
    windows = _collateral_windows(outer)
    verdict.claims.update(windows)
    now_secs = int(at.timestamp())
    if now_secs < 0:  # dcap-qvl takes unsigned seconds since 1970; nothing Intel issues is valid earlier
        verdict.fail(step, f"the verification time {at.isoformat()} is before 1970-01-01, when no Intel "
                     "collateral or PCK certificate is valid; give --at as a time the evidence was current")
        return None
    try:
        report = dcap_qvl.verify_with_root_ca(quote.raw, col, _root()[1], now_secs)
    except (ValueError, RuntimeError) as exc:
        when = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in windows.items())
        verdict.fail(step, f"{' '.join(str(exc).split())} (at {at.isoformat()}{'; ' + when if when else ''})")
        return None
    verdict.ok(step, "quote signature, QE report, PCK chain and CRLs, TCB info and QE identity verify "
               f"at {at.isoformat()} against the pinned {ROOT_NAME}")
    status, advisories = str(report.status), [str(a) for a in report.advisory_ids]
    verdict.claims.update(tcb_status=status, advisory_ids=advisories)
    return status, advisories


def _fmspc(quote: Quote) -> str | None:
    try:
        return str(dcap_qvl.parse_quote(quote.raw).fmspc())
    except ValueError:
        return None


def verify(evidence: Evidence, *, at: datetime, policy: TdxPolicy, verdict: Verdict) -> Bound:
    quote = parse(evidence.blob)
    verdict.claims.update(_claims(quote))
    fmspc = _fmspc(quote)
    if fmspc is not None:
        verdict.claims["fmspc"] = fmspc
    _check_pck_chain(quote, at, verdict)
    tcb = _check_collateral(quote, evidence.collateral, at, verdict)
    if tcb is None:
        verdict.skip("TCB status", "not known: the quote and collateral did not verify")
    else:
        status, advisories = tcb
        extra = f"; advisories {', '.join(advisories)}" if advisories else ""
        verdict.check("TCB status", status in policy.accepted_tcb_statuses,
                      f"{status} is accepted{extra}",
                      f"{status} is not accepted (policy accepts {', '.join(policy.accepted_tcb_statuses)}){extra}")
    validate(quote, policy, verdict)
    return Bound(report_data=quote.report.report_data)


def validate(report: Quote, policy: TdxPolicy, verdict: Verdict) -> None:
    """Debug and the measurement allow-lists; the TCB status is checked in `verify`, where
    dcap-qvl's collateral check yields it."""
    td = report.report  # the quote's TD report body
    attrs = td.td_attributes.hex()
    verdict.check("debug", policy.allow_debug or not td.debug,
                  f"TD attributes {attrs}: DEBUG set, allowed by policy" if td.debug
                  else f"TD attributes {attrs}: DEBUG not set",
                  f"TD attributes {attrs} have DEBUG set and the policy forbids debug")
    values = {"mrtd": td.mrtd, "mrconfigid": td.mrconfigid, "mrowner": td.mrowner,
              **{f"rtmr{i}": m for i, m in enumerate(td.rtmrs)}}
    for key in MEASUREMENT_KEYS:
        allowlist.check(verdict, key, values[key].hex(), policy.measurements.get(key))
