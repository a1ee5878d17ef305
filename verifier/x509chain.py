"""Certificate chains up to pinned roots, checked at a given time. Shared by every platform.

Roots ship in `verifier/roots/` and are pinned by SHA-256 fingerprint here, so a file swapped on
disk is refused rather than trusted.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier.errors import ParseError, VerificationError

ROOTS_DIR = Path(__file__).resolve().parent / "roots"

# SHA-256 fingerprints of the pinned root certificates (sources: roots/PROVENANCE.md).
PINNED_ROOTS = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    "Intel SGX Root CA": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "aws.nitro-enclaves": "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b",
    "NVIDIA Device Identity CA": "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
    "NVIDIA CoRIM signing Root CA": "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
}


class ChainError(VerificationError):
    """A chain did not verify; the message says which certificate and why (a failed check: exit 1)."""


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# What `cryptography` raises for a certificate it cannot decode; only ValueError is documented, the
# others are not ValueErrors and come from versions, duplicate extensions, names and key types.
# TypeError: cryptography's name parsing raises it for some corrupt attribute values (found by
# tests/test_nitro.py's byte-flip fuzzing of a real Nitro document).
_DECODE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension,
                  x509.UnsupportedGeneralNameType, UnsupportedAlgorithm)


def _decoded(cert: x509.Certificate, what: str) -> x509.Certificate:
    """`cert` once every part a check reads has been decoded.

    `cryptography` parses names, validity, extensions, the key and the signature algorithm only
    when first used, so a corrupt certificate that loads would otherwise fail in the middle of a
    chain check. Decoding them here makes the rule simple: a certificate that cannot be read whole
    is unusable input (ParseError); one that reads but does not chain, verify or match is a failed
    step."""
    part = "certificate"
    try:
        for part, read in (
            ("subject", lambda: cert.subject.rfc4514_string()),
            ("issuer", lambda: cert.issuer.rfc4514_string()),
            ("validity", lambda: (cert.not_valid_before_utc, cert.not_valid_after_utc)),
            ("extensions", lambda: cert.extensions),
            ("public key", cert.public_key),
            ("signature algorithm", lambda: (cert.signature_hash_algorithm, cert.signature_algorithm_parameters)),
        ):
            read()
    except _DECODE_ERRORS as exc:
        raise ParseError(f"{what}: the certificate's {part} cannot be read ({' '.join(str(exc).split())})") from None
    return cert


def load_der(data: bytes, what: str) -> x509.Certificate:
    """A DER certificate, decoded whole; ParseError if any part of it cannot be read."""
    try:
        cert = x509.load_der_x509_certificate(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"{what}: not a DER X.509 certificate ({exc})") from None
    return _decoded(cert, what)


def load_pem(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """All certificates of PEM text, each decoded whole; ParseError if any cannot be read."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"{what}: not valid PEM X.509 certificates ({exc})") from None
    return tuple(_decoded(c, f"{what}, certificate {i + 1}") for i, c in enumerate(certs))


@lru_cache(maxsize=None)
def load_pem_file(relpath: str) -> tuple[x509.Certificate, ...]:
    """All certificates of a PEM file under verifier/roots/ (e.g. "amd/ask_ark_milan.pem")."""
    return load_pem((ROOTS_DIR / relpath).read_bytes(), f"verifier/roots/{relpath}")


def pinned_root(name: str, relpath: str) -> x509.Certificate:
    """The root named `name` from a roots file, refused unless its fingerprint is the pinned one."""
    for cert in load_pem_file(relpath):
        if fingerprint(cert) == PINNED_ROOTS[name]:
            return cert
    raise ChainError(f"pinned root {name} (sha256 {PINNED_ROOTS[name][:16]}…) not found in {relpath}")


def name_of(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def check_validity(cert: x509.Certificate, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise ChainError(
            f"certificate {name_of(cert)!r} is valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return True  # AMD's ARK/ASK carry no BasicConstraints; signature and pinning decide


def verify_chain(chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime) -> None:
    """`chain` is leaf first, then intermediates, not including `root`. Raises ChainError."""
    path = [*chain, root]
    for cert in path:
        check_validity(cert, at)
    for child, issuer in zip(path, path[1:]):
        if not _is_ca(issuer):
            raise ChainError(f"{name_of(issuer)!r} signs {name_of(child)!r} but is not a CA")
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError) as exc:
            raise ChainError(f"{name_of(child)!r} is not issued by {name_of(issuer)!r}: {exc}") from None
        except InvalidSignature:
            raise ChainError(f"signature of {name_of(child)!r} by {name_of(issuer)!r} does not verify") from None
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise ChainError(f"pinned root {name_of(root)!r} is not self-signed") from None


def verify_p384(cert: x509.Certificate, r: int, s: int, message: bytes) -> str | None:
    """ECDSA P-384/SHA-384 signature (r, s) over `message` by `cert`'s key (read when the certificate
    was loaded): None if it verifies, else the reason (not a P-384 key, or the signature does not verify)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return f"{name_of(cert)!r} does not hold an ECDSA P-384 key ({type(key).__name__})"
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return f"does not verify with the key of {name_of(cert)!r}"
    return None


def order_chain(leaf: x509.Certificate, pool: Sequence[x509.Certificate], root: x509.Certificate) -> list[x509.Certificate]:
    """Leaf first, then issuers found in `pool` by subject name (any order), stopping below `root`."""
    chain = [leaf]
    remaining = [c for c in pool if c != leaf and fingerprint(c) != fingerprint(root)]
    while chain[-1].issuer != root.subject:
        nxt = next((c for c in remaining if c.subject == chain[-1].issuer), None)
        if nxt is None:
            raise ChainError(f"no certificate for issuer {chain[-1].issuer.rfc4514_string()!r} of {name_of(chain[-1])!r}")
        chain.append(nxt)
        remaining.remove(nxt)
    return chain
