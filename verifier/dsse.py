"""DSSE envelopes (secure-systems-lab/dsse, protocol v1) signed with Ed25519.

The signature covers PAE(payloadType, payload) = "DSSEv1" SP len(type) SP type SP len(body) SP body,
so the payload type cannot be swapped. keyid is what a stock DSSE library computes by default for the
key (`keyid` below), so securesystemslib's `Envelope.verify` matches our signatures without being told.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier.errors import ParseError
from verifier.models import b64d, b64e, canonical_json

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_raw: bytes) -> str:
    """securesystemslib's default keyid of an Ed25519 key (the TUF and in-toto convention): SHA-256 hex of
    the canonical JSON `{"keytype": "ed25519", "keyval": {"public": hex(raw key)}, "scheme": "ed25519"}`."""
    key = {"keytype": "ed25519", "keyval": {"public": public_raw.hex()}, "scheme": "ed25519"}
    return hashlib.sha256(canonical_json(key)).hexdigest()


def _keyids(public_raw: bytes) -> tuple[str, ...]:
    """The keyids a signature by this key may carry: none (DSSE makes keyid optional), the default
    above, or SHA-256 hex of the raw key, which bundles made before that default carry."""
    return "", keyid(public_raw), hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)

    def to_json(self) -> dict[str, Any]:
        return {"payloadType": self.payload_type, "payload": b64e(self.payload),
                "signatures": [{"keyid": k, "sig": b64e(s)} for k, s in self.signatures]}

    @classmethod
    def from_json(cls, obj: Any, what: str = "envelope") -> "Envelope":
        if not isinstance(obj, dict):
            raise ParseError(f"{what}: expected an object")
        ptype = obj.get("payloadType")
        if not isinstance(ptype, str) or not ptype.isprintable() or not ptype.isascii():
            raise ParseError("envelope: payloadType missing or not printable ASCII")
        sigs = obj.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise ParseError("envelope: signatures must be a non-empty list")
        parsed = []
        for i, s in enumerate(sigs):
            if not isinstance(s, dict) or not isinstance(s.get("keyid", ""), str):
                raise ParseError(f"envelope: signatures[{i}] malformed")
            parsed.append((s.get("keyid", ""), b64d(s.get("sig"), f"envelope signatures[{i}].sig")))
        return cls(ptype, b64d(obj.get("payload"), "envelope payload"), tuple(parsed))


def sign(key: Ed25519PrivateKey, payload_type: str, payload: bytes) -> Envelope:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Envelope(payload_type, payload, ((keyid(raw), key.sign(pae(payload_type, payload))),))


def verify(envelope: Envelope, public_raw: bytes) -> bool:
    """True when some signature with this key's keyid verifies over the PAE (False for a key that is
    not a 32-byte Ed25519 public key)."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_raw)
    except ValueError:
        return False
    kids = _keyids(public_raw)
    for k, sig in envelope.signatures:
        if k not in kids:
            continue
        try:
            pub.verify(sig, pae(envelope.payload_type, envelope.payload))
            return True
        except InvalidSignature:
            continue
    return False
