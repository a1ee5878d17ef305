"""Opening the per-sample records an audit sent to the auditor (`output = "aggregate+samples"`).

The records are checked against the signed statement before they are trusted: the ciphertext's
hash, the decryption context (Merkle root and enclave key), and the RFC 9162 root recomputed over
the records. A single record can then be disclosed with an inclusion proof against that root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from sealing.keywrap import HpkeKeyPair
from verifier import dsse
from verifier.binding import samples_info
from verifier.errors import ParseError, VerificationError
from verifier.merkle import root_hash
from verifier.models import b64d, canonical_json
from verifier.statement import parse_statement

_HEX64 = re.compile(r"[0-9a-f]{64}")


def open_samples(ciphertext: bytes, bundle: dict[str, Any], key: HpkeKeyPair) -> list[dict[str, Any]]:
    """Decrypt and check the records against `bundle`'s signed statement; returns them in order."""
    try:
        signing_pub = b64d(bundle["enclave"]["signingKey"]["public"], "enclave.signingKey.public")
        envelope = dsse.Envelope.from_json(bundle["envelope"])
    except (KeyError, TypeError):
        raise ParseError("bundle: enclave key or envelope missing") from None
    if len(signing_pub) != 32:
        raise ParseError(f"bundle: enclave.signingKey.public is {len(signing_pub)} bytes, not an Ed25519 key (32)")
    if not dsse.verify(envelope, signing_pub):
        raise VerificationError("the bundle's statement signature does not verify; run aaudit-verify bundle first")
    samples = parse_statement(envelope.payload).predicate.samples
    delivery = samples.delivery
    if delivery is None:
        raise VerificationError("the statement says no per-sample records were delivered (output = aggregate)")
    if hashlib.sha256(ciphertext).hexdigest() != delivery.ciphertext_sha256:
        raise VerificationError("these encrypted records are not the ones the statement names (sha256 differs)")
    if base64.b64encode(key.public_bytes()).decode() != delivery.recipient:
        raise VerificationError("the records were encrypted to another samples key than this one")
    if not _HEX64.fullmatch(samples.merkle_root):
        raise ParseError("statement: predicate.samples.merkleRoot is not 64 hex digits")
    plaintext = key.open(ciphertext, samples_info(samples.merkle_root, signing_pub))
    try:
        records = [json.loads(line) for line in plaintext.splitlines()]
    except (ValueError, RecursionError):
        raise VerificationError("decrypted records are not JSON lines") from None
    root = root_hash([canonical_json(r) for r in records]).hex()
    if root != samples.merkle_root or len(records) != samples.count:
        raise VerificationError(f"records hash to {root} ({len(records)} records), the statement says "
                                f"{samples.merkle_root} ({samples.count})")
    return records
