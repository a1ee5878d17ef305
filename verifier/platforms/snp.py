"""AMD SEV-SNP attestation reports, in three layers as google/go-sev-guest has them.

parse     the 1184-byte ATTESTATION_REPORT (AMD SEV-SNP ABI spec 56860, report versions 2, 3, 5),
          with every must-be-zero range checked, into an `SnpReport`;
verify    the VCEK/VLEK chain ARK -> ASK/ASVK -> VCEK/VLEK (RSASSA-PSS) up to the pinned ARK of the
          product line, the report's ECDSA P-384 signature over bytes 0..0x29F, and the VCEK/VLEK
          extensions against the report (TCB SPLs = reported_tcb, hwID = chip_id);
validate  against the `[sev-snp]` policy: debug, measurement allow-list, minimum TCB, VMPL, host
          data and ID-key allow-lists.

Policy table `[sev-snp]`:

    measurements = ["<96 hex digits>", ...]   # omitted: not pinned (a skipped step says so)
    allow_debug = false                       # default false: a debug-enabled guest policy fails
    min_tcb = { bootloader = 7, tee = 0, snp = 14, microcode = 72 }      # every product, or
    # min_tcb = { Milan = { snp = 22, ... }, Genoa = { ... } }           # per product line
    # (fmc is a Turin component; floors for it are ignored on Milan and Genoa)
    max_vmpl = 0                              # highest VMPL the report may come from
    host_data = ["<64 hex digits>", ...]      # allow-list for HOST_DATA
    id_key_digests = ["<96 hex digits>", ...] # allow-list for ID_KEY_DIGEST

The TCB_VERSION layout depends on the product line: Milan and Genoa put the bootloader SPL in byte
0, TEE in 1, SNP in 6, microcode in 7; Turin puts FMC in byte 0, bootloader 1, TEE 2, SNP 3,
microcode 7. The product comes from the VCEK/VLEK issuer (SEV-Milan, SEV-VLEK-Genoa, ...); a v3+
report's CPUID family/model must agree with it.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from verifier import der
from verifier.errors import ParseError, PolicyError
from verifier.models import Evidence, Verdict
from verifier.platforms import Bound, allowlist
from verifier.x509chain import (
    PINNED_ROOTS,
    ChainError,
    fingerprint,
    load_der,
    load_pem_file,
    name_of,
    pinned_root,
    verify_chain,
    verify_p384,
)

NAME = "sev-snp"

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0..0x29F
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
_ECDSA_COMPONENT = 72  # r and s are 72-byte little-endian fields; P-384 uses the low 48 bytes
_P384_BYTES = 48

# Guest policy (spec 56860, "GUEST_POLICY"): bit 17 is reserved and must be 1; bits 26..63 are
# reserved and must be 0.
_POLICY_BITS = {
    "smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20, "cxl_allowed": 21,
    "mem_aes_256_xts": 22, "rapl_dis": 23, "ciphertext_hiding": 24, "page_swap_disable": 25,
}
_POLICY_RESERVED_ONE = 1 << 17
_POLICY_KNOWN_TOP = 25
_PLATFORM_INFO_BITS = {
    "smt_enabled": 0, "tsme_enabled": 1, "ecc_enabled": 2, "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4, "alias_check_complete": 5, "tio_enabled": 7,
}
SIGNERS = {0: "VCEK", 1: "VLEK", 7: None}  # SIGNING_KEY; 7 means the report is not signed

# VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key" specification 57230).
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_HWID = "1.3.6.1.4.1.3704.1.4"
_OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"
_TCB_OIDS = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
TCB_COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")

_IDENTITY = ("measurement", "host_data", "chip_id")


@dataclass(frozen=True)
class Product:
    """An SEV-SNP product line and where its pinned roots live."""

    name: str
    ark: str  # key of PINNED_ROOTS
    vcek_roots: str  # ASK + ARK, under verifier/roots/
    vlek_roots: str  # ASVK + ARK
    fmc_tcb: bool  # Turin layout: FMC SPL first in TCB_VERSION


PRODUCTS = {
    p.name: p
    for p in (
        Product("Milan", "ARK-Milan", "amd/ask_ark_milan.pem", "amd/ask_ark_milan_vlek.pem", False),
        Product("Genoa", "ARK-Genoa", "amd/ask_ark_genoa.pem", "amd/ask_ark_genoa_vlek.pem", False),
        Product("Turin", "ARK-Turin", "amd/ask_ark_turin_vcek.pem", "amd/ask_ark_turin_vlek.pem", True),
    )
}


@dataclass(frozen=True)
class Tcb:
    """A decoded TCB_VERSION. `fmc` is None on products without an FMC SPL."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: Product) -> "Tcb":
        b = raw.to_bytes(8, "little")
        if product.fmc_tcb:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def parts(self) -> dict[str, int]:
        out = {} if self.fmc is None else {"fmc": self.fmc}
        out.update(bootloader=self.bootloader, tee=self.tee, snp=self.snp, microcode=self.microcode)
        return out

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.parts().items())


@dataclass(frozen=True)
class GuestPolicy:
    raw: int

    def bit(self, name: str) -> bool:
        return bool(self.raw >> _POLICY_BITS[name] & 1)

    @property
    def debug(self) -> bool:
        return self.bit("debug")

    def to_claim(self) -> dict[str, Any]:
        return {
            "raw": f"0x{self.raw:x}",
            "abi": f"{self.raw >> 8 & 0xFF}.{self.raw & 0xFF}",
            **{name: self.bit(name) for name in _POLICY_BITS},
        }


@dataclass(frozen=True)
class SnpReport:
    """An ATTESTATION_REPORT; TCB fields stay raw until the product line is known."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid: tuple[int, int, int] | None  # family, model, stepping (v3+)
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]  # major, minor, build
    committed_version: tuple[int, int, int]
    launch_tcb: int
    launch_mit_vector: int | None  # v5+
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    signed: bytes

    @property
    def signer(self) -> str | None:
        return SIGNERS[self.signing_key]


@dataclass(frozen=True)
class SnpPolicy:
    measurements: allowlist.AllowList | None  # None: not pinned
    allow_debug: bool = False
    min_tcb: dict[str | None, dict[str, int]] | None = None  # product (None: every product) -> floor
    max_vmpl: int | None = None
    host_data: allowlist.AllowList | None = None
    id_key_digests: allowlist.AllowList | None = None


# ---------------------------------------------------------------------------------------- parse


def _mbz(blob: bytes, lo: int, hi: int, what: str) -> None:
    if any(blob[lo:hi]):
        raise ParseError(f"SEV-SNP report: {what} [0x{lo:x}:0x{hi:x}] must be zero, is {blob[lo:hi].hex()}")


def parse(blob: bytes) -> SnpReport:
    """Parse an ATTESTATION_REPORT strictly; raises ParseError on any size, version or reserved-bit problem."""
    if len(blob) != REPORT_SIZE:
        raise ParseError(f"SEV-SNP report is {len(blob)} bytes, expected {REPORT_SIZE} (0x{REPORT_SIZE:X})")
    u32 = lambda off: struct.unpack_from("<I", blob, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", blob, off)[0]  # noqa: E731
    version = u32(0x00)
    if version not in SUPPORTED_VERSIONS:
        raise ParseError(f"SEV-SNP report version {version} is not supported (supported: 2, 3, 5)")
    policy = u64(0x08)
    if not policy & _POLICY_RESERVED_ONE:
        raise ParseError(f"SEV-SNP report: guest policy 0x{policy:x} has reserved bit 17 clear (must be 1)")
    if policy >> (_POLICY_KNOWN_TOP + 1):
        raise ParseError(f"SEV-SNP report: guest policy 0x{policy:x} sets reserved bits above bit {_POLICY_KNOWN_TOP}")
    sig_algo = u32(0x34)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise ParseError(f"SEV-SNP report: signature algorithm {sig_algo} is not 1 (ECDSA P-384 with SHA-384)")
    key_info = u32(0x48)
    if key_info >> 5:
        raise ParseError(f"SEV-SNP report: key info 0x{key_info:x} sets reserved bits 5..31")
    signing_key = key_info >> 2 & 0x7
    if signing_key not in SIGNERS:
        raise ParseError(f"SEV-SNP report: SIGNING_KEY {signing_key} is reserved (0 = VCEK, 1 = VLEK, 7 = none)")
    _mbz(blob, 0x4C, 0x50, "reserved")
    cpuid = None
    if version >= 3:
        cpuid = (blob[0x188], blob[0x189], blob[0x18A])
        _mbz(blob, 0x18B, 0x1A0, "reserved")
    else:
        _mbz(blob, 0x188, 0x1A0, "reserved")
    _mbz(blob, 0x1EB, 0x1EC, "reserved")
    _mbz(blob, 0x1EF, 0x1F0, "reserved")
    launch_mit = current_mit = None
    if version >= 5:
        launch_mit, current_mit = u64(0x1F8), u64(0x200)
        _mbz(blob, 0x208, SIGNED_SIZE, "reserved")
    else:
        _mbz(blob, 0x1F8, SIGNED_SIZE, "reserved")
    r_field = blob[SIGNED_SIZE:SIGNED_SIZE + _ECDSA_COMPONENT]
    s_field = blob[SIGNED_SIZE + _ECDSA_COMPONENT:SIGNED_SIZE + 2 * _ECDSA_COMPONENT]
    _mbz(blob, SIGNED_SIZE + _P384_BYTES, SIGNED_SIZE + _ECDSA_COMPONENT, "signature R padding")
    _mbz(blob, SIGNED_SIZE + _ECDSA_COMPONENT + _P384_BYTES, SIGNED_SIZE + 2 * _ECDSA_COMPONENT, "signature S padding")
    _mbz(blob, SIGNED_SIZE + 2 * _ECDSA_COMPONENT, REPORT_SIZE, "signature reserved")
    return SnpReport(
        version=version,
        guest_svn=u32(0x04),
        policy=GuestPolicy(policy),
        family_id=blob[0x10:0x20],
        image_id=blob[0x20:0x30],
        vmpl=u32(0x30),
        signature_algo=sig_algo,
        current_tcb=u64(0x38),
        platform_info=u64(0x40),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key=signing_key,
        report_data=blob[0x50:0x90],
        measurement=blob[0x90:0xC0],
        host_data=blob[0xC0:0xE0],
        id_key_digest=blob[0xE0:0x110],
        author_key_digest=blob[0x110:0x140],
        report_id=blob[0x140:0x160],
        report_id_ma=blob[0x160:0x180],
        reported_tcb=u64(0x180),
        cpuid=cpuid,
        chip_id=blob[0x1A0:0x1E0],
        committed_tcb=u64(0x1E0),
        current_version=(blob[0x1EA], blob[0x1E9], blob[0x1E8]),
        committed_version=(blob[0x1EE], blob[0x1ED], blob[0x1EC]),
        launch_tcb=u64(0x1F0),
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=int.from_bytes(r_field, "little"),
        signature_s=int.from_bytes(s_field, "little"),
        signed=blob[:SIGNED_SIZE],
    )


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Product line from the report's CPUID family/model (v3+): 19h Milan/Genoa, 1Ah Turin."""
    if family == 0x19:
        return PRODUCTS.get({0x0: "Milan", 0x1: "Genoa", 0xA: "Genoa"}.get(model >> 4, ""))
    if family == 0x1A and model >> 4 in (0x0, 0x1):
        return PRODUCTS["Turin"]
    return None


# --------------------------------------------------------------------------------------- policy


def _tcb_floor(table: Any, where: str) -> dict[str, int]:
    if not isinstance(table, dict) or not table:
        raise PolicyError(f"{where} must be a non-empty table of {', '.join(TCB_COMPONENTS)}")
    unknown = set(table) - set(TCB_COMPONENTS)
    if unknown:
        raise PolicyError(f"{where}: unknown component(s) {', '.join(sorted(unknown))}")
    for k, v in table.items():
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
            raise PolicyError(f"{where}.{k} must be an integer 0..255")
    return dict(table)


def parse_policy(table: dict[str, Any]) -> SnpPolicy:
    unknown = set(table) - {"measurements", "allow_debug", "min_tcb", "max_vmpl", "host_data", "id_key_digests"}
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))}")
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError("allow_debug must be true or false")
    min_tcb = None
    if "min_tcb" in table:
        raw = table["min_tcb"]
        if isinstance(raw, dict) and raw and set(raw) <= set(PRODUCTS):
            min_tcb = {p: _tcb_floor(v, f"min_tcb.{p}") for p, v in raw.items()}
        else:
            min_tcb = {None: _tcb_floor(raw, "min_tcb")}
    max_vmpl = table.get("max_vmpl")
    if max_vmpl is not None and (not isinstance(max_vmpl, int) or isinstance(max_vmpl, bool) or not 0 <= max_vmpl <= 3):
        raise PolicyError("max_vmpl must be an integer 0..3")
    return SnpPolicy(
        measurements=allowlist.parse(table, "measurements", allowlist.hex_bytes(48)),
        allow_debug=allow_debug,
        min_tcb=min_tcb,
        max_vmpl=max_vmpl,
        host_data=allowlist.parse(table, "host_data", allowlist.hex_bytes(32)),
        id_key_digests=allowlist.parse(table, "id_key_digests", allowlist.hex_bytes(48)),
    )


def baseline_policy(allow_debug: bool) -> SnpPolicy:
    return SnpPolicy(measurements=None, allow_debug=allow_debug)


def is_pinned(policy: SnpPolicy) -> bool:
    """The launch digest covers the firmware and, with measured direct boot, kernel, initrd and
    command line: it is what pins the guest's code."""
    return policy.measurements is not None


def identity_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: claims.get(k) for k in _IDENTITY}


# --------------------------------------------------------------------------------------- verify


def load_certs(blobs: Sequence[bytes]) -> list[x509.Certificate]:
    """DER certificates; VCEKs have serial number 0, which `cryptography` warns about, so that one
    warning is silenced here (the serial plays no part in any check)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parsed a serial number which wasn't positive", CryptographyDeprecationWarning)
        return [load_der(b, f"sev-snp certificate {i + 1}") for i, b in enumerate(blobs)]


def _ext(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _issuer_cn(cert: x509.Certificate) -> str:
    cns = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.issuer.rfc4514_string()


def _find_leaf(report: SnpReport, certs: list[x509.Certificate], verdict: Verdict) -> x509.Certificate | None:
    kind = report.signer
    wanted = f"SEV-{kind}"
    leaves = {fingerprint(c): c for c in certs if name_of(c) == wanted}
    if not leaves:
        given = ", ".join(repr(name_of(c)) for c in certs) or "none"
        verdict.fail(f"{kind} certificate", f"the report is signed by the {kind} but no {kind} certificate "
                     f"(CN={wanted}) was given with the evidence (certificates given: {given})")
        return None
    if len(leaves) > 1:
        verdict.fail(f"{kind} certificate", f"{len(leaves)} different {kind} certificates were given; give only "
                     "the one for the chip that signed the report")
        return None
    return next(iter(leaves.values()))


def _check_chain(kind: str, leaf: x509.Certificate, certs: list[x509.Certificate], at: datetime,
                 verdict: Verdict) -> Product | None:
    """ARK (pinned) -> ASK/ASVK (given, else the pinned file's) -> VCEK/VLEK, all valid at `at`."""
    issuer = _issuer_cn(leaf)
    prefix = "SEV-" if kind == "VCEK" else "SEV-VLEK-"
    product = PRODUCTS.get(issuer.removeprefix(prefix)) if issuer.startswith(prefix) else None
    if product is None:
        known = ", ".join(prefix + p for p in PRODUCTS)
        verdict.fail("certificate chain", f"{kind} issuer {issuer!r} is not a known AMD {kind} signing key ({known})")
        return None
    roots_file = product.vcek_roots if kind == "VCEK" else product.vlek_roots
    problems: list[str] = []
    supplied_asks: list[x509.Certificate] = []
    other_lines = {f"SEV-{p}" for p in PRODUCTS if p != product.name} | {f"SEV-VLEK-{p}" for p in PRODUCTS if p != product.name}
    for cert in certs:
        cn = name_of(cert)
        if cn.startswith("ARK-") and fingerprint(cert) != PINNED_ROOTS[product.ark]:
            problems.append(f"the given root {cn!r} (sha256 {fingerprint(cert)[:16]}…) is not the pinned "
                            f"{product.ark} for this {product.name} {kind}")
        elif cn == issuer:
            supplied_asks.append(cert)
        elif cn in other_lines:
            problems.append(f"the given {cn!r} belongs to another product line than the {kind} (issued by {issuer!r})")
    if problems:
        verdict.fail("certificate chain", "; ".join(problems))
        return product
    try:
        root = pinned_root(product.ark, roots_file)
        if supplied_asks:
            ask, source = supplied_asks[0], "given"
        else:
            ask = next(c for c in load_pem_file(roots_file) if c.subject == leaf.issuer)
            source = "pinned"
        verify_chain([leaf, ask], root, at)
    except StopIteration:
        verdict.fail("certificate chain", f"{roots_file} holds no certificate named {issuer!r}")
    except ChainError as exc:
        verdict.fail("certificate chain", str(exc))
    else:
        verdict.ok("certificate chain", f"{kind} <- {issuer} ({source}) <- {product.ark} (pinned, sha256 "
                   f"{PINNED_ROOTS[product.ark][:16]}…), all valid at {at.isoformat()}")
    return product


def _check_signature(report: SnpReport, kind: str, leaf: x509.Certificate, verdict: Verdict) -> None:
    problem = verify_p384(leaf, report.signature_r, report.signature_s, report.signed)
    verdict.check("report signature", problem is None,
                  f"ECDSA P-384/SHA-384 over bytes 0..0x29F verifies with the {kind} key",
                  f"signature over report bytes 0..0x29F: {problem} ({kind})")


def _check_product(report: SnpReport, kind: str, leaf: x509.Certificate, product: Product, verdict: Verdict) -> None:
    """The VCEK's product-name extension and a v3+ report's CPUID must name the issuer's product line."""
    evidence = [f"{kind} issuer SEV-{'' if kind == 'VCEK' else 'VLEK-'}{product.name}"]
    problems = []
    raw_name = _ext(leaf, _OID_PRODUCT_NAME)
    if raw_name is not None:
        try:
            pname = der.read_one(raw_name, der.TAG_IA5STRING).decode("ascii")
        except (der.DerError, UnicodeDecodeError):
            problems.append(f"{kind} product-name extension is not an IA5String")
        else:
            evidence.append(f"{kind} product name {pname}")
            if pname.split("-")[0] != product.name:
                problems.append(f"{kind} product name {pname!r} does not match its issuer's product line {product.name}")
    if report.cpuid is not None and any(report.cpuid):
        fam, model, step = report.cpuid
        cpu_product = product_from_cpuid(fam, model)
        desc = f"CPUID family {fam:02X}h model {model:02X}h stepping {step}"
        if cpu_product is None:
            problems.append(f"report's {desc} is not a known SEV-SNP product line")
        elif cpu_product is not product:
            problems.append(f"report's {desc} is {cpu_product.name}, but the {kind} is issued for {product.name}")
        else:
            evidence.append(desc)
    verdict.check("product", not problems, f"{product.name} ({'; '.join(evidence)})", "; ".join(problems))


def _check_tcb_extensions(report: SnpReport, kind: str, leaf: x509.Certificate, product: Product,
                          verdict: Verdict) -> None:
    reported = Tcb.decode(report.reported_tcb, product)
    problems = []
    for name, value in reported.parts().items():
        raw = _ext(leaf, _TCB_OIDS[name])
        if raw is None:
            problems.append(f"{kind} lacks the {name} SPL extension ({_TCB_OIDS[name]})")
            continue
        try:
            cert_value = der.unsigned_integer(raw)
        except der.DerError as exc:
            problems.append(f"{kind} {name} SPL extension is not a DER INTEGER ({exc})")
            continue
        if cert_value != value:
            problems.append(f"{kind} TCB {name}={cert_value} does not match report's reported_tcb {name}={value}")
    verdict.check(f"{kind} TCB", not problems, f"{kind} TCB extensions equal reported_tcb ({reported.describe()})",
                  "; ".join(problems))


def _check_hwid(report: SnpReport, leaf: x509.Certificate, product: Product, verdict: Verdict) -> None:
    if report.mask_chip_key:
        verdict.skip("VCEK hwID", "the host masked CHIP_ID (MASK_CHIP_KEY=1); the VCEK hwID cannot be compared")
        return
    hwid = _ext(leaf, _OID_HWID)
    if hwid is None:
        verdict.fail("VCEK hwID", f"VCEK lacks the hwID extension ({_OID_HWID})")
        return
    # Turin VCEKs carry an 8-byte hwID: the first 8 bytes of CHIP_ID (as go-sev-guest compares).
    want = report.chip_id[:8] if product.fmc_tcb and len(hwid) == 8 else report.chip_id
    verdict.check("VCEK hwID", hwid == want, f"VCEK hwID equals the report's chip_id ({len(hwid)} bytes)",
                  f"VCEK hwID {hwid.hex()} does not match the report's chip_id {want.hex()}")


def _claims(report: SnpReport, product: Product | None) -> dict[str, Any]:
    def tcb(raw: int) -> dict[str, Any]:
        out: dict[str, Any] = {"raw": f"0x{raw:016x}"}
        if product is not None:
            out.update(Tcb.decode(raw, product).parts())
        return out

    claims: dict[str, Any] = {
        "version": report.version,
        "product": product.name if product else None,
        "signer": report.signer,
        "measurement": report.measurement.hex(),
        "report_data": report.report_data.hex(),
        "host_data": report.host_data.hex(),
        "debug": report.policy.debug,
        "policy": report.policy.to_claim(),
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "author_key_en": report.author_key_en,
        "mask_chip_key": report.mask_chip_key,
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "chip_id": report.chip_id.hex(),
        "platform_info": {"raw": f"0x{report.platform_info:x}",
                          **{k: bool(report.platform_info >> b & 1) for k, b in _PLATFORM_INFO_BITS.items()}},
        "current_tcb": tcb(report.current_tcb),
        "reported_tcb": tcb(report.reported_tcb),
        "committed_tcb": tcb(report.committed_tcb),
        "launch_tcb": tcb(report.launch_tcb),
        "current_firmware": "{}.{}.{}".format(*report.current_version),
        "committed_firmware": "{}.{}.{}".format(*report.committed_version),
    }
    if report.cpuid is not None:
        claims["cpuid"] = {"family": f"0x{report.cpuid[0]:02x}", "model": f"0x{report.cpuid[1]:02x}",
                           "stepping": report.cpuid[2]}
    if report.launch_mit_vector is not None:
        claims["launch_mit_vector"] = f"0x{report.launch_mit_vector:016x}"
        claims["current_mit_vector"] = f"0x{report.current_mit_vector:016x}"
    return claims


def verify(evidence: Evidence, *, at: datetime, policy: SnpPolicy, verdict: Verdict) -> Bound:
    report = parse(evidence.blob)
    certs = load_certs(evidence.certs)
    kind = report.signer
    product: Product | None = None
    csp_id: bytes | None = None
    if kind is None:
        verdict.fail("report signer", "the report's SIGNING_KEY says it is not signed")
    else:
        verdict.ok("report", f"SEV-SNP attestation report v{report.version} ({REPORT_SIZE} bytes), signed by the {kind}")
        leaf = _find_leaf(report, certs, verdict)
        if leaf is not None:
            product = _check_chain(kind, leaf, certs, at, verdict)
            _check_signature(report, kind, leaf, verdict)
            if product is not None:
                _check_product(report, kind, leaf, product, verdict)
                _check_tcb_extensions(report, kind, leaf, product, verdict)
                if kind == "VCEK":
                    _check_hwid(report, leaf, product, verdict)
            csp_id = _ext(leaf, _OID_CSP_ID) if kind == "VLEK" else None
        verdict.skip("revocation", "AMD KDS CRLs are not consulted (offline verification)")
    if product is None and report.cpuid is not None and any(report.cpuid):
        product = product_from_cpuid(report.cpuid[0], report.cpuid[1])
    verdict.claims.update(_claims(report, product))
    if csp_id is not None:
        verdict.claims["vlek_csp_id"] = csp_id.decode("ascii", "replace")
    validate(report, policy, verdict, product=product)
    return Bound(report_data=report.report_data)


# ------------------------------------------------------------------------------------- validate


def validate(report: SnpReport, policy: SnpPolicy, verdict: Verdict, *, product: Product | None = None) -> None:
    """`product` (from the VCEK/VLEK issuer or the CPUID) is needed to decode TCB versions for min_tcb."""
    pol = report.policy
    if pol.debug:
        verdict.check("debug", policy.allow_debug,
                      f"guest policy {pol.to_claim()['raw']} allows debug; accepted because allow_debug is set",
                      f"guest policy {pol.to_claim()['raw']} allows debug (bit 19): the host can read and change "
                      "guest memory, and the policy forbids debug")
    else:
        verdict.ok("debug", f"guest policy {pol.to_claim()['raw']} forbids debug")
    allowlist.check(verdict, "measurement", report.measurement.hex(), policy.measurements)
    if policy.min_tcb is not None:
        _check_min_tcb(report, product, policy.min_tcb, verdict)
    if policy.max_vmpl is not None:
        verdict.check("VMPL", report.vmpl <= policy.max_vmpl, f"report from VMPL {report.vmpl}",
                      f"report from VMPL {report.vmpl}, the policy allows at most VMPL {policy.max_vmpl}")
    if policy.host_data is not None:
        allowlist.check(verdict, "host data", report.host_data.hex(), policy.host_data)
    if policy.id_key_digests is not None:
        allowlist.check(verdict, "ID key digest", report.id_key_digest.hex(), policy.id_key_digests)


def _check_min_tcb(report: SnpReport, product: Product | None, floors: dict[str | None, dict[str, int]],
                   verdict: Verdict) -> None:
    if product is None:
        verdict.fail("minimum TCB", "the product line is unknown, so the TCB fields cannot be decoded")
        return
    floor = floors.get(product.name, floors.get(None))
    if floor is None:
        verdict.fail("minimum TCB", f"the policy sets min_tcb for {', '.join(str(p) for p in floors)} but not "
                     f"for {product.name}")
        return
    problems = []
    for label, raw in (("reported_tcb", report.reported_tcb), ("committed_tcb", report.committed_tcb),
                       ("current_tcb", report.current_tcb)):
        parts = Tcb.decode(raw, product).parts()
        for comp, minimum in floor.items():
            if comp in parts and parts[comp] < minimum:
                problems.append(f"{label} {comp}={parts[comp]} is below the policy minimum {comp}={minimum}")
    wanted = " ".join(f"{k}>={v}" for k, v in floor.items() if k != "fmc" or product.fmc_tcb)
    verdict.check("minimum TCB", not problems, f"reported, committed and current TCB meet {wanted}",
                  "; ".join(problems))
