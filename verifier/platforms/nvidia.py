"""NVIDIA Hopper GPU attestation: an SPDM 1.1 GET_MEASUREMENTS exchange signed by the GPU.

parse     the evidence blob = request || response (DMTF DSP0274 1.1):
          request  = version, 0xE0, param1 (bit 0: signature requested), param2, nonce (32), slot id;
          response = version, 0x60, param1, param2, number of blocks, record length (u24),
                     measurement record (blocks: index, spec, u16 size, DMTF value: type, u16 size,
                     value), nonce (32), opaque length (u16), opaque data, signature (96: P-384 r||s).
          Every length field is checked against what follows; published reports sometimes end in
          zero padding, which is ignored (and counted in the claims); any other trailing byte is
          an error. Opaque data is NVIDIA's TLV list (type u16, size u16, value).
verify    ECDSA P-384/SHA-384 over request || response-without-signature with the key of the first
          certificate of the chain; the chain (leaf first) up to the pinned NVIDIA Device Identity
          CA at the verification time; the firmware ID in the opaque data (if present) against
          the leaf certificate's TCG DICE FWID extension.
validate  against `[nvidia]`: `driver_versions` and `vbios_versions` allow-lists (omitted: not
          pinned). The caller compares the request nonce (`Bound.nonce`) with the expected one.

SPDM 1.2+ sign a prefixed transcript hash instead of the raw messages and are refused rather than
misread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from cryptography import x509

from verifier import der
from verifier.errors import ParseError, PolicyError
from verifier.models import Evidence, Verdict
from verifier.platforms import Bound, allowlist
from verifier.platforms.reader import Reader
from verifier.x509chain import (
    PINNED_ROOTS,
    ChainError,
    fingerprint,
    load_der,
    name_of,
    order_chain,
    pinned_root,
    verify_chain,
    verify_p384,
)

NAME = "nvidia"

ROOT_NAME = "NVIDIA Device Identity CA"
ROOT_FILE = "nvidia/device_identity_root.pem"
SPDM_VERSIONS = (0x10, 0x11)
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_SIZE = 32
REQUEST_SIZE = 4 + NONCE_SIZE + 1
SIGNATURE_SIZE = 96  # ECDSA P-384 r || s, big-endian
DMTF_SPEC = 0x01
_OID_DICE_TCB_INFO = "2.23.133.5.4.1"
_SHA384_OID_BODY = bytes.fromhex("608648016503040202")  # DER body of 2.16.840.1.101.3.4.2.2

# Opaque-data field types, as NVIDIA's nvtrust local GPU verifier names them.
OPAQUE_TYPES = {
    1: "cert_issuer_name", 2: "cert_authority_key_identifier", 3: "driver_version", 4: "gpu_info",
    5: "sku", 6: "vbios_version", 7: "manufacturer_id", 8: "tamper_detection", 9: "smc", 10: "vpr",
    11: "nvdec0_status", 12: "msrscnt", 13: "cprinfo", 14: "board_id", 15: "chip_sku",
    16: "chip_sku_mod", 17: "project", 18: "project_sku", 19: "project_sku_mod", 20: "fwid",
    21: "protected_pcie_status", 22: "switch_pdi", 23: "floorswept_ports", 24: "position_id",
    25: "lock_switch_status", 32: "gpu_link_conn", 34: "opaque_data_version",
}
_TEXT_FIELDS = {"driver_version", "chip_sku", "chip_sku_mod", "project", "project_sku"}
_U32_FIELDS = {"board_id"}


@dataclass(frozen=True)
class Measurement:
    index: int
    value_type: int  # DMTF measurement value type; bit 7 set = raw bit stream, else a digest
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    type: int
    value: bytes

    @property
    def name(self) -> str:
        return OPAQUE_TYPES.get(self.type, f"type_{self.type}")


@dataclass(frozen=True)
class SpdmReport:
    spdm_version: int
    request_param1: int
    request_param2: int
    request_nonce: bytes
    slot_id: int
    response_param1: int
    response_param2: int
    measurements: tuple[Measurement, ...]
    response_nonce: bytes
    opaque: tuple[OpaqueField, ...]
    signature: bytes
    signed: bytes  # request || response without the signature
    trailing_zero_bytes: int

    def opaque_field(self, name: str) -> bytes | None:
        return next((f.value for f in self.opaque if f.name == name), None)

    @property
    def driver_version(self) -> str | None:
        raw = self.opaque_field("driver_version")
        return None if raw is None else _text(raw)

    @property
    def vbios_version(self) -> str | None:
        raw = self.opaque_field("vbios_version")
        return None if raw is None else format_vbios_version(raw)


@dataclass(frozen=True)
class NvidiaPolicy:
    driver_versions: allowlist.AllowList | None = None  # None: not pinned
    vbios_versions: allowlist.AllowList | None = None


# ---------------------------------------------------------------------------------------- parse


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace")


def format_vbios_version(raw: bytes) -> str:
    """VBIOS version as NVIDIA prints it (e.g. 96.00.9F.00.01): for the 8-byte field, bytes 3,2,1,0
    then byte 4, the way nvtrust reads it as a little-endian number and swaps its halves."""
    if len(raw) == 8:
        return ".".join(f"{raw[i]:02X}" for i in (3, 2, 1, 0, 4))
    return _text(raw) if raw.isascii() else raw.hex().upper()


def _parse_measurements(record: bytes, count: int) -> tuple[Measurement, ...]:
    r = Reader(record, "NVIDIA SPDM report")
    out: list[Measurement] = []
    seen: set[int] = set()
    for n in range(count):
        index = r.u8(f"measurement block {n + 1} index")
        spec = r.u8(f"measurement block {index} specification")
        if spec != DMTF_SPEC:
            raise ParseError(f"NVIDIA SPDM report: measurement block {index} uses specification 0x{spec:02x}, "
                             "not DMTF (0x01)")
        size = r.uint(2, f"measurement block {index} size")
        block = Reader(r.take(size, f"measurement block {index} ({size} bytes)"), "NVIDIA SPDM report")
        value_type = block.u8(f"measurement block {index} value type")
        value_size = block.uint(2, f"measurement block {index} value size")
        value = block.take(value_size, f"measurement block {index} value")
        if block.pos != size:
            raise ParseError(f"NVIDIA SPDM report: measurement block {index} is {size} bytes but its DMTF value "
                             f"fills {block.pos}")
        if index in seen:
            raise ParseError(f"NVIDIA SPDM report: measurement index {index} appears twice")
        seen.add(index)
        out.append(Measurement(index, value_type, value))
    if r.pos != len(record):
        raise ParseError(f"NVIDIA SPDM report: measurement record is {len(record)} bytes but its {count} block(s) "
                         f"fill {r.pos}")
    return tuple(out)


def _parse_opaque(data: bytes) -> tuple[OpaqueField, ...]:
    r = Reader(data, "NVIDIA SPDM report")
    out = []
    while r.pos < len(data):
        ftype = r.uint(2, "opaque data field type")
        size = r.uint(2, f"opaque data field {ftype} size")
        out.append(OpaqueField(ftype, r.take(size, f"opaque data field {ftype} value")))
    return tuple(out)


def parse(blob: bytes) -> SpdmReport:
    """Parse request || response strictly by their length fields; ParseError on anything malformed."""
    r = Reader(blob, "NVIDIA SPDM report")
    version = r.u8("request SPDM version")
    if version not in SPDM_VERSIONS:
        raise ParseError(f"NVIDIA SPDM report: SPDM version {version >> 4}.{version & 0xF} is not supported "
                         "(1.0 and 1.1 are; later versions sign a transcript hash this verifier does not build)")
    if (code := r.u8("request code")) != GET_MEASUREMENTS:
        raise ParseError(f"NVIDIA SPDM report: request code 0x{code:02x} is not GET_MEASUREMENTS (0xE0)")
    param1, param2 = r.u8("request param1"), r.u8("request param2")
    if not param1 & 1:
        raise ParseError("NVIDIA SPDM report: the request did not ask for a signed response (param1 bit 0)")
    request_nonce = r.take(NONCE_SIZE, "request nonce")
    slot_id = r.u8("request slot id")
    if (rversion := r.u8("response SPDM version")) != version:
        raise ParseError(f"NVIDIA SPDM report: response SPDM version 0x{rversion:02x} differs from the request's "
                         f"0x{version:02x}")
    if (code := r.u8("response code")) != MEASUREMENTS:
        raise ParseError(f"NVIDIA SPDM report: response code 0x{code:02x} is not MEASUREMENTS (0x60)")
    rparam1, rparam2 = r.u8("response param1"), r.u8("response param2")
    count = r.u8("number of measurement blocks")
    record_len = r.uint(3, "measurement record length")
    measurements = _parse_measurements(r.take(record_len, f"measurement record ({record_len} bytes)"), count)
    response_nonce = r.take(NONCE_SIZE, "response nonce")
    opaque_len = r.uint(2, "opaque data length")
    opaque = _parse_opaque(r.take(opaque_len, f"opaque data ({opaque_len} bytes)"))
    signed_end = r.pos
    signature = r.take(SIGNATURE_SIZE, "signature")
    trailing = blob[r.pos:]
    if any(trailing):
        raise ParseError(f"NVIDIA SPDM report: {len(trailing)} byte(s) after the signature, not all zero")
    return SpdmReport(
        spdm_version=version, request_param1=param1, request_param2=param2, request_nonce=request_nonce,
        slot_id=slot_id, response_param1=rparam1, response_param2=rparam2, measurements=measurements,
        response_nonce=response_nonce, opaque=opaque, signature=signature, signed=blob[:signed_end],
        trailing_zero_bytes=len(trailing),
    )


# --------------------------------------------------------------------------------------- policy


def parse_policy(table: dict[str, Any]) -> NvidiaPolicy:
    unknown = set(table) - {"driver_versions", "vbios_versions"}
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))}")
    return NvidiaPolicy(allowlist.parse(table, "driver_versions", allowlist.VERSION),
                        allowlist.parse(table, "vbios_versions", allowlist.VERSION))


def baseline_policy(allow_debug: bool) -> NvidiaPolicy:
    """GPU evidence has no debug bit of its own; the baseline is: authentic, versions not pinned."""
    return NvidiaPolicy()


def is_pinned(policy: NvidiaPolicy) -> bool:
    """False: a GPU runs no enclave code of its own; the CPU evidence it is bound to pins the code."""
    return False


def identity_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Empty: GPU evidence never identifies an enclave image (it is never accepted alone)."""
    return {}


# --------------------------------------------------------------------------------------- verify


def _opaque_claims(report: SpdmReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in report.opaque:
        if f.name in _TEXT_FIELDS:
            out[f.name] = _text(f.value)
        elif f.name in _U32_FIELDS and len(f.value) == 4:
            out[f.name] = struct.unpack("<I", f.value)[0]
        elif f.name == "vbios_version":
            out[f.name] = format_vbios_version(f.value)
        elif f.name == "msrscnt" and len(f.value) % 4 == 0:
            out[f.name] = list(struct.unpack(f"<{len(f.value) // 4}I", f.value))
        else:
            out[f.name] = f.value.hex()
    return out


def _cert_fwid(leaf: x509.Certificate) -> bytes | None:
    """The SHA-384 firmware ID from the leaf's TCG DICE extension: its last element is
    SEQUENCE { hashAlgorithm OID, digest OCTET STRING }. DerError if it holds something else."""
    try:
        raw = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(_OID_DICE_TCB_INFO)).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(raw, x509.UnrecognizedExtension):
        return None
    items = der.children(der.read_one(raw.value, der.TAG_SEQUENCE))
    if not items or items[-1].tag != der.TAG_SEQUENCE:
        raise der.DerError("no FWID sequence")
    fwid = der.children(items[-1].value)
    if [t.tag for t in fwid] != [der.TAG_OID, der.TAG_OCTET_STRING]:
        raise der.DerError("FWID is not (OID, OCTET STRING)")
    if fwid[0].value != _SHA384_OID_BODY:
        raise der.DerError("FWID hash algorithm is not SHA-384")
    return fwid[1].value


def _check_chain(certs: list[x509.Certificate], at: datetime, verdict: Verdict) -> x509.Certificate | None:
    if not certs:
        verdict.fail("certificate chain", "no GPU certificate chain was given (chain.pem, leaf first)")
        return None
    leaf = certs[0]
    try:
        root = pinned_root(ROOT_NAME, ROOT_FILE)
        path = order_chain(leaf, certs[1:], root)
        used = {fingerprint(c) for c in path} | {fingerprint(root)}
        stray = [name_of(c) for c in certs if fingerprint(c) not in used]
        if stray:
            raise ChainError(f"certificate(s) {', '.join(map(repr, stray))} are not on the path from the leaf "
                             f"to the pinned {ROOT_NAME}")
        verify_chain(path, root, at)
    except ChainError as exc:
        verdict.fail("certificate chain", str(exc))
    else:
        names = " <- ".join(name_of(c) for c in path)
        verdict.ok("certificate chain", f"{names} <- {ROOT_NAME} (pinned, sha256 {PINNED_ROOTS[ROOT_NAME][:16]}…), "
                   f"valid at {at.isoformat()}")
    return leaf


def _check_signature(report: SpdmReport, leaf: x509.Certificate, verdict: Verdict) -> None:
    half = SIGNATURE_SIZE // 2
    problem = verify_p384(leaf, int.from_bytes(report.signature[:half], "big"),
                          int.from_bytes(report.signature[half:], "big"), report.signed)
    verdict.check("report signature", problem is None,
                  f"ECDSA P-384/SHA-384 over request + response ({len(report.signed)} bytes) verifies with the key "
                  f"of {name_of(leaf)!r}", f"ECDSA P-384/SHA-384 signature over request + response: {problem}")


def _check_fwid(report: SpdmReport, leaf: x509.Certificate, verdict: Verdict) -> None:
    fwid = report.opaque_field("fwid")
    if fwid is None:
        verdict.skip("firmware ID", "the report carries no FWID field (older drivers omit it)")
        return
    try:
        cert_fwid = _cert_fwid(leaf)
    except der.DerError as exc:
        verdict.fail("firmware ID", f"the leaf certificate's DICE extension cannot be read ({exc})")
        return
    if cert_fwid is None:
        verdict.fail("firmware ID", f"the report carries an FWID but the leaf certificate has no DICE extension "
                     f"({_OID_DICE_TCB_INFO})")
        return
    verdict.check("firmware ID", fwid == cert_fwid, "the report's FWID equals the leaf certificate's DICE FWID",
                  f"the report's FWID {fwid.hex()} differs from the leaf certificate's {cert_fwid.hex()}")


def verify(evidence: Evidence, *, at: datetime, policy: NvidiaPolicy, verdict: Verdict) -> Bound:
    report = parse(evidence.blob)
    certs = [load_der(c, f"nvidia certificate {i + 1}") for i, c in enumerate(evidence.certs)]
    verdict.claims.update(
        spdm_version=f"{report.spdm_version >> 4}.{report.spdm_version & 0xF}",
        request_nonce=report.request_nonce.hex(),
        response_nonce=report.response_nonce.hex(),
        driver_version=report.driver_version,
        vbios_version=report.vbios_version,
        measurement_count=len(report.measurements),
        measurements={str(m.index): m.value.hex() for m in report.measurements},
        opaque=_opaque_claims(report),
        trailing_zero_bytes=report.trailing_zero_bytes,
    )
    pad = f"; {report.trailing_zero_bytes} trailing zero byte(s) ignored" if report.trailing_zero_bytes else ""
    verdict.ok("report", f"SPDM {verdict.claims['spdm_version']} GET_MEASUREMENTS exchange, "
               f"{len(report.measurements)} measurement block(s){pad}")
    leaf = _check_chain(certs, at, verdict)
    if leaf is not None:
        _check_signature(report, leaf, verdict)
        _check_fwid(report, leaf, verdict)
        verdict.skip("revocation", "NVIDIA OCSP is not consulted (offline verification)")
    validate(report, policy, verdict)
    return Bound(nonce=report.request_nonce)


def validate(report: SpdmReport, policy: NvidiaPolicy, verdict: Verdict) -> None:
    allowlist.check(verdict, "driver version", report.driver_version, policy.driver_versions)
    allowlist.check(verdict, "VBIOS version", report.vbios_version, policy.vbios_versions)
