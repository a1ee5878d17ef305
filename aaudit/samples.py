"""Opening the per-sample records an audit sent to the auditor (`output = "aggregate+samples"`).

The records are checked against the signed statement before they are trusted: the ciphertext's
hash, the decryption context (Merkle root and enclave key), and the RFC 9162 root recomputed over
the records. `open-samples` writes each record as its RFC 8785 bytes, so every line of samples.jsonl
is a leaf; a single record can then be disclosed with its inclusion proof (`disclose_sample`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sealing.keywrap import HpkeKeyPair
from verifier import dsse
from verifier.binding import samples_info
from verifier.bundle import AuditBundle
from verifier.errors import ParseError, UnusableInput, VerificationError
from verifier.inputs import load_json
from verifier.merkle import inclusion_path, leaf_hash, root_from_leaf_hashes, root_hash
from verifier.models import b64e, canonical_json
from verifier.sample import SampleDisclosure
from verifier.receipt import payload_digest
from verifier.statement import SamplesInfo, parse_statement

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _signed(bundle: Any) -> tuple[dsse.Envelope, bytes]:
    """(the DSSE envelope, the enclave signing key) of a bundle whose statement signature verifies."""
    parsed = AuditBundle.from_json(bundle)
    envelope, signing_pub = parsed.envelope, parsed.enclave.signing_key.public
    if not dsse.verify(envelope, signing_pub):
        raise VerificationError("the bundle's statement signature does not verify; run aaudit-verify bundle first")
    return envelope, signing_pub


def _samples(envelope: dsse.Envelope) -> SamplesInfo:
    samples = parse_statement(envelope.payload).predicate.samples
    if not _HEX64.fullmatch(samples.merkle_root):
        raise ParseError("statement: predicate.samples.merkleRoot is not 64 hex digits")
    return samples


def open_samples(ciphertext: bytes, bundle: dict[str, Any], key: HpkeKeyPair) -> list[dict[str, Any]]:
    """Decrypt and check the records against `bundle`'s signed statement; returns them in order."""
    envelope, signing_pub = _signed(bundle)
    samples = _samples(envelope)
    delivery = samples.delivery
    if delivery is None:
        raise VerificationError("the statement says no per-sample records were delivered (output = aggregate)")
    if hashlib.sha256(ciphertext).hexdigest() != delivery.ciphertext_sha256:
        raise VerificationError("these encrypted records are not the ones the statement names (sha256 differs)")
    if b64e(key.public_bytes()) != delivery.recipient:
        raise VerificationError("the records were encrypted to another samples key than this one")
    plaintext = key.open(ciphertext, samples_info(samples.merkle_root, signing_pub))
    try:
        records = [load_json(line, f"decrypted record {i}") for i, line in enumerate(plaintext.splitlines())]
    except UnusableInput as exc:
        raise VerificationError(f"decrypted records are not JSON lines: {exc}") from None
    root = root_hash([canonical_json(r) for r in records]).hex()
    if root != samples.merkle_root or len(records) != samples.count:
        raise VerificationError(f"records hash to {root} ({len(records)} records), the statement says "
                                f"{samples.merkle_root} ({samples.count})")
    return records


def leaves_of(jsonl: bytes) -> list[bytes]:
    """The leaves of a samples.jsonl written by open-samples: each line without its newline."""
    lines = jsonl.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def disclose_sample(leaves: list[bytes], bundle: dict[str, Any], index: int) -> SampleDisclosure:
    """Record `index` with its RFC 9162 inclusion proof, after checking that `leaves` are exactly the
    records whose root `bundle`'s signed statement carries."""
    envelope, _ = _signed(bundle)
    samples = _samples(envelope)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    root = root_from_leaf_hashes(hashes).hex()
    if root != samples.merkle_root or len(leaves) != samples.count:
        raise VerificationError(f"these {len(leaves)} lines hash to {root}, the statement signs {samples.merkle_root} "
                                f"({samples.count} records): give the samples.jsonl that `aaudit auditor "
                                "open-samples` wrote for this bundle, unchanged")
    if not 0 <= index < len(leaves):
        raise UnusableInput(f"INDEX {index} is out of range: the audit has {len(leaves)} records, 0 to {len(leaves) - 1}")
    return SampleDisclosure(index=index, tree_size=len(leaves), record=load_json(leaves[index], f"line {index + 1}"),
                            inclusion_proof=tuple(inclusion_path(hashes, index)), samples_root=root,
                            statement_digest=payload_digest(envelope))
