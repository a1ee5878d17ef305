"""What attestation report data commits to. This layout is the protocol; enclave and verifier share it.

    key binding       = SHA-512( "attestable-audits/v1/keys\\0"
                                  || lp(signing public key) || lp(hpke suite) || lp(hpke public key)
                                  || lp(client nonce, 32 bytes) )
    statement binding = SHA-512( "attestable-audits/v1/statement\\0"
                                  || lp(signing public key) || lp(SHA-256 of the DSSE payload) )
    gpu nonce         = SHA-256( "attestable-audits/v1/gpu\\0" || cpu report data )
    wrap info         = "attestable-audits/v1/wrap\\0" || lp(kind) || lp(digest) || lp(signing public key)
    samples info      = "attestable-audits/v1/samples\\0" || lp(samples Merkle root, hex) || lp(signing public key)

`lp(x)` is x's length as 4 big-endian bytes, then x. Report data is 64 bytes (SEV-SNP, TDX, and
Nitro `user_data`); the GPU nonce is the 32-byte SPDM nonce, so GPU evidence is bound to the same
session as the CPU evidence and can never stand alone.
"""

from __future__ import annotations

import hashlib

NONCE_LEN = 32
_KEYS = b"attestable-audits/v1/keys\x00"
_STATEMENT = b"attestable-audits/v1/statement\x00"
_GPU = b"attestable-audits/v1/gpu\x00"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def key_binding(signing_public: bytes, hpke_suite: str, hpke_public: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"client nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    return hashlib.sha512(
        _KEYS + _lp(signing_public) + _lp(hpke_suite.encode()) + _lp(hpke_public) + _lp(nonce)
    ).digest()


def statement_binding(signing_public: bytes, payload: bytes) -> bytes:
    return hashlib.sha512(_STATEMENT + _lp(signing_public) + _lp(hashlib.sha256(payload).digest())).digest()


def gpu_nonce(cpu_report_data: bytes) -> bytes:
    return hashlib.sha256(_GPU + cpu_report_data).digest()


_WRAP = b"attestable-audits/v1/wrap\x00"


def wrap_info(kind: str, digest: str, enclave_signing_public: bytes) -> bytes:
    """HPKE `info` for a wrapped data key: the key opens only for this asset kind and digest, in
    the enclave whose attested signing key is given, so a wrapped key cannot be replayed elsewhere."""
    return _WRAP + _lp(kind.encode()) + _lp(digest.encode()) + _lp(enclave_signing_public)


_SAMPLES = b"attestable-audits/v1/samples\x00"


def samples_info(samples_root_hex: str, enclave_signing_public: bytes) -> bytes:
    """HPKE `info` for the per-sample records sent to the auditor: bound to their Merkle root and
    to the enclave that produced them."""
    return _SAMPLES + _lp(samples_root_hex.encode()) + _lp(enclave_signing_public)
