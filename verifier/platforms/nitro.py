"""AWS Nitro Enclaves attestation documents: COSE_Sign1 (RFC 9052) signed ES384 by a short-lived leaf
certificate that chains, through the document's `cabundle`, to the pinned AWS Nitro Enclaves root.

    COSE_Sign1 = [protected: bstr({1: -35}), unprotected: {}, payload: bstr, signature: bstr(r||s, 96)]
                 (CBOR tag 18 or untagged)
    payload    = {module_id: text, digest: "SHA384", timestamp: uint (ms), pcrs: {0..31 => bstr 48},
                  certificate: bstr (DER leaf), cabundle: [bstr] (root first),
                  ? public_key: bstr, ? user_data: bstr, ? nonce: bstr}

Sizes follow AWS's "Verifying the root of trust" (CDDL: certificates 1..1024 bytes, user data and
nonce 0..1024, public key 1..1024). Decoded with cbor2 directly (pycose breaks on cbor2 6), with
indefinite lengths, duplicate keys and trailing bytes refused.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import cbor2
from cryptography import x509

from verifier import x509chain
from verifier.errors import ParseError, PolicyError
from verifier.models import Evidence, Verdict
from verifier.platforms import Bound, allowlist

NAME = "nitro"
ROOT_NAME = "aws.nitro-enclaves"
ROOT_FILE = "aws/nitro_root_g1.pem"
ES384 = -35
COSE_SIGN1_TAG = 18
PCR_LEN = 48  # SHA-384, the only digest Nitro uses
MAX_BLOB = 1024  # certificates, public_key, user_data, nonce
POLICY_PCRS = (0, 1, 2, 3, 4, 8)
_IDENTITY = ("pcrs",)
_REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
# The latest millisecond a datetime holds (the end of year 9999).
_MAX_TIMESTAMP_MS = (datetime.max.replace(tzinfo=timezone.utc) - datetime.fromtimestamp(0, timezone.utc)) \
    // timedelta(milliseconds=1)


@dataclass(frozen=True)
class NitroDocument:
    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]  # root first, as in the document
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=timezone.utc)

    @property
    def debug(self) -> bool:
        """Enclaves started in debug mode report PCR0 (and PCR1, PCR2) as all zeros."""
        return not any(self.pcrs[0])


@dataclass(frozen=True)
class NitroPolicy:
    pcrs: dict[int, allowlist.AllowList]  # PCR index -> allow-list
    allow_debug: bool


def _cbor(data: bytes, what: str) -> Any:
    """One CBOR item, exactly: no trailing bytes, no indefinite lengths, no duplicate map keys."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp, allow_indefinite=False, allow_duplicate_keys=False, max_depth=16).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ParseError(f"nitro document: {what} is not valid CBOR ({exc})") from None
    if fp.tell() != len(data):
        raise ParseError(f"nitro document: {len(data) - fp.tell()} trailing bytes after the {what}")
    return item


def _bytes(value: Any, field: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, bytes):
        raise ParseError(f"nitro document: {field} must be a byte string, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise ParseError(f"nitro document: {field} is {len(value)} bytes, allowed {lo}..{hi}")
    return value


def _optional(payload: dict[str, Any], field: str, lo: int) -> bytes | None:
    value = payload.get(field)
    return None if value is None else _bytes(value, field, lo, MAX_BLOB)


def parse(blob: bytes) -> NitroDocument:
    """Decode and syntactically validate a Nitro attestation document; `ParseError` if malformed."""
    outer = _cbor(blob, "COSE_Sign1")
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != COSE_SIGN1_TAG:
            raise ParseError(f"nitro document: CBOR tag {outer.tag} is not COSE_Sign1 (18)")
        outer = outer.value  # cbor2 decodes a tagged array as a tuple
    if not isinstance(outer, (list, tuple)) or len(outer) != 4:
        raise ParseError("nitro document: COSE_Sign1 must be an array of 4 items")
    protected_raw, unprotected, payload_raw, signature = outer
    protected_raw = _bytes(protected_raw, "protected header", 1, 64)
    protected = _cbor(protected_raw, "protected header")
    if not isinstance(protected, dict) or protected.get(1) != ES384:
        raise ParseError(f"nitro document: protected header algorithm is {protected!r}, expected {{1: -35}} (ES384)")
    if not isinstance(unprotected, Mapping):  # a frozendict when the array is tagged
        raise ParseError("nitro document: unprotected header must be a map")
    payload_raw = _bytes(payload_raw, "payload", 1, 1 << 16)
    signature = _bytes(signature, "signature", 96, 96)

    payload = _cbor(payload_raw, "payload")
    if not isinstance(payload, dict):
        raise ParseError("nitro document: payload must be a map")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ParseError(f"nitro document: payload lacks {', '.join(missing)}")
    unknown = set(payload) - {*_REQUIRED, *_OPTIONAL}
    if unknown:
        raise ParseError(f"nitro document: payload has unknown field(s) {', '.join(sorted(map(repr, unknown)))}")

    module_id = payload["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise ParseError("nitro document: module_id must be a non-empty text string")
    if payload["digest"] != "SHA384":
        raise ParseError(f"nitro document: digest is {payload['digest']!r}, expected 'SHA384'")
    ts = payload["timestamp"]
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts < 1 << 64:
        raise ParseError("nitro document: timestamp must be a positive 64-bit integer (ms since the epoch)")
    if ts > _MAX_TIMESTAMP_MS:
        raise ParseError(f"nitro document: timestamp {ts} ms is after the year 9999")

    raw_pcrs = payload["pcrs"]
    if not isinstance(raw_pcrs, dict) or not 1 <= len(raw_pcrs) <= 32:
        raise ParseError("nitro document: pcrs must be a map of 1..32 entries")
    pcrs: dict[int, bytes] = {}
    for index, value in raw_pcrs.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 32:
            raise ParseError(f"nitro document: PCR index {index!r} is not an integer 0..31")
        pcrs[index] = _bytes(value, f"PCR{index}", PCR_LEN, PCR_LEN)
    if 0 not in pcrs:
        raise ParseError("nitro document: PCR0 is missing")

    certificate = x509chain.load_der(_bytes(payload["certificate"], "certificate", 1, MAX_BLOB), "nitro certificate")
    bundle = payload["cabundle"]
    if not isinstance(bundle, list) or not bundle:
        raise ParseError("nitro document: cabundle must be a non-empty array")
    cabundle = tuple(x509chain.load_der(_bytes(c, f"cabundle[{i}]", 1, MAX_BLOB), f"nitro cabundle[{i}]")
                     for i, c in enumerate(bundle))
    return NitroDocument(
        protected_raw, payload_raw, signature, module_id, "SHA384", ts, dict(sorted(pcrs.items())),
        certificate, cabundle, _optional(payload, "public_key", 1), _optional(payload, "user_data", 0),
        _optional(payload, "nonce", 0),
    )


def parse_policy(table: dict[str, Any]) -> NitroPolicy:
    keys = {f"pcr{i}": i for i in POLICY_PCRS}
    unknown = set(table) - {*keys, "allow_debug"}
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))}")
    lists = {index: allowlist.parse(table, key, allowlist.hex_bytes(PCR_LEN)) for key, index in keys.items()}
    pcrs = {index: allowed for index, allowed in lists.items() if allowed is not None}
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError("allow_debug must be true or false")
    return NitroPolicy(pcrs, allow_debug)


def baseline_policy(allow_debug: bool) -> NitroPolicy:
    return NitroPolicy({}, allow_debug)


def is_pinned(policy: NitroPolicy) -> bool:
    """PCR0 measures the whole enclave image file; PCR1 (kernel and boot ramfs) with PCR2 (the
    application) pin the same code."""
    return 0 in policy.pcrs or {1, 2} <= set(policy.pcrs)


def identity_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: claims.get(k) for k in _IDENTITY}


@lru_cache(maxsize=1)
def _root() -> x509.Certificate:
    return x509chain.pinned_root(ROOT_NAME, ROOT_FILE)


def _signature_ok(doc: NitroDocument) -> str | None:
    """None if the COSE ES384 signature verifies with the leaf's key, else why not."""
    to_sign = cbor2.dumps(["Signature1", doc.protected, b"", doc.payload])
    r, s = int.from_bytes(doc.signature[:48], "big"), int.from_bytes(doc.signature[48:], "big")
    problem = x509chain.verify_p384(doc.certificate, r, s, to_sign)
    return None if problem is None else f"ES384 signature {problem}"


def _claims(doc: NitroDocument) -> dict[str, Any]:
    def hx(v: bytes | None) -> str | None:
        return None if v is None else v.hex()

    return {
        "module_id": doc.module_id,
        "timestamp": doc.timestamp.isoformat(),
        "digest": doc.digest,
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
        "user_data": hx(doc.user_data),
        "nonce": hx(doc.nonce),
        "public_key": hx(doc.public_key),
        "debug": doc.debug,
    }


def verify(evidence: Evidence, *, at: datetime, policy: NitroPolicy, verdict: Verdict) -> Bound:
    doc = parse(evidence.blob)
    verdict.claims.update(_claims(doc))

    why = _signature_ok(doc)
    verdict.check("document signature", why is None,
                  f"COSE_Sign1 ES384 signature by {x509chain.name_of(doc.certificate)!r} verifies", why or "")

    root = _root()
    got = x509chain.fingerprint(doc.cabundle[0])
    if verdict.check("cabundle root", got == x509chain.PINNED_ROOTS[ROOT_NAME],
                     f"cabundle starts with the pinned {ROOT_NAME} root (sha256 {got[:16]}…)",
                     f"cabundle starts with {x509chain.name_of(doc.cabundle[0])!r} (sha256 {got[:16]}…), "
                     f"not the pinned {ROOT_NAME} root (sha256 {x509chain.PINNED_ROOTS[ROOT_NAME][:16]}…)"):
        try:
            x509chain.verify_chain([doc.certificate, *reversed(doc.cabundle[1:])], root, at)
            verdict.ok("certificate chain", f"{x509chain.name_of(doc.certificate)!r} chains through the cabundle "
                       f"to the pinned root, valid at {at.isoformat()}")
        except x509chain.ChainError as exc:
            verdict.fail("certificate chain", str(exc))

    ts, leaf = doc.timestamp, doc.certificate
    if ts > at:
        verdict.fail("timestamp", f"document made {ts.isoformat()}, after the verification time {at.isoformat()}")
    else:
        verdict.check("timestamp", leaf.not_valid_before_utc <= ts <= leaf.not_valid_after_utc,
                      f"document made {ts.isoformat()}, within its signing certificate's validity",
                      f"document made {ts.isoformat()}, outside its signing certificate's validity "
                      f"{leaf.not_valid_before_utc.isoformat()} .. {leaf.not_valid_after_utc.isoformat()}")

    validate(doc, policy, verdict)
    report_data = doc.user_data
    if report_data is not None and len(report_data) < 64:
        report_data = report_data.ljust(64, b"\x00")  # compared like SEV-SNP/TDX report data
    return Bound(report_data=report_data, nonce=doc.nonce)


def validate(report: NitroDocument, policy: NitroPolicy, verdict: Verdict) -> None:
    verdict.check("debug", policy.allow_debug or not report.debug,
                  "PCR0 is all zeros: a debug-mode enclave, allowed by policy" if report.debug
                  else "PCR0 is set: not a debug-mode enclave",
                  "PCR0 is all zeros: the enclave runs in debug mode and the policy forbids debug")
    for index in POLICY_PCRS:
        value = report.pcrs.get(index)
        allowlist.check(verdict, f"pcr{index}", None if value is None else value.hex(), policy.pcrs.get(index))
