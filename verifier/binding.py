"""What attestation report data commits to. This layout is the protocol; enclave and verifier share it.

    key binding       = SHA-512( "attestable-audits/v2/keys\\0"
                                  || lp(signing public key) || lp(hpke suite) || lp(hpke public key)
                                  || lp(TLS public key, DER SubjectPublicKeyInfo; empty without TLS)
                                  || lp(client nonce, 32 bytes) )
    statement binding = SHA-512( "attestable-audits/v1/statement\\0"
                                  || lp(signing public key) || lp(SHA-256 of the DSSE payload) )
    gpu nonce         = SHA-256( "attestable-audits/v1/gpu\\0" || cpu report data )
    wrap info         = "attestable-audits/v2/wrap\\0" || lp(kind) || lp(digest) || lp(signing public key)
                        || lp(uploading party's public key) || lp(session id) || lp(attestation nonce)
    samples info      = "attestable-audits/v1/samples\\0" || lp(samples Merkle root, hex) || lp(signing public key)

    party message     = "attestable-audits/v1/" || action || "\\0" || lp(signing public key) || lp(field)...
        session-create  fields: attestation nonce, provider key, auditor key (raw Ed25519)
        session-join    fields: session id, session nonce, role
        upload          fields: session id, kind, digest, stream header, wrapped key, attestation nonce
        run             fields: session id, manifest digest, run nonce
        cancel, close   fields: session id, manifest digest
        prepare         fields: session id, session nonce, job number (decimal), model digest, method,
                                recipient HPKE suite, recipient public key, client nonce
        prepare-attach  fields: session id, session nonce, model digest, prepare statement digest
    prepared wrap info = "attestable-audits/v1/prepared-wrap\\0" || lp(prepared model digest)
                        || lp(signing public key) || lp(provider's public key) || lp(session id)
                        || lp(job number, decimal) || lp(client nonce)

A party message is what a party signs with its Ed25519 identity key; text fields are UTF-8.

`lp(x)` is x's length as 4 big-endian bytes, then x. Report data is 64 bytes (SEV-SNP, TDX, and
Nitro `user_data`); the GPU nonce is the 32-byte SPDM nonce, so GPU evidence is bound to the same
session as the CPU evidence and can never stand alone.
"""

from __future__ import annotations

import hashlib

NONCE_LEN = 32
_KEYS = b"attestable-audits/v2/keys\x00"
_STATEMENT = b"attestable-audits/v1/statement\x00"
_GPU = b"attestable-audits/v1/gpu\x00"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def key_binding(signing_public: bytes, hpke_suite: str, hpke_public: bytes, tls_public: bytes, nonce: bytes,
                *, label: bytes = _KEYS) -> bytes:
    """What an attestation for a client's `nonce` commits to: every key of this enclave boot,
    including the TLS key a client pins for the channel (empty only in plaintext development)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"client nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    return hashlib.sha512(
        label + _lp(signing_public) + _lp(hpke_suite.encode()) + _lp(hpke_public) + _lp(tls_public) + _lp(nonce)
    ).digest()


_SERVING_KEYS = b"attestable-audits/v1/serving-keys\x00"


def serving_binding(signing_public: bytes, hpke_suite: str, hpke_public: bytes, tls_public: bytes,
                    nonce: bytes) -> bytes:
    """`key_binding` for a receipt gateway, under its own label: an audit enclave's evidence can never
    stand in as a gateway's, nor the reverse."""
    return key_binding(signing_public, hpke_suite, hpke_public, tls_public, nonce, label=_SERVING_KEYS)


def statement_binding(signing_public: bytes, payload: bytes) -> bytes:
    return hashlib.sha512(_STATEMENT + _lp(signing_public) + _lp(hashlib.sha256(payload).digest())).digest()


def gpu_nonce(cpu_report_data: bytes) -> bytes:
    return hashlib.sha256(_GPU + cpu_report_data).digest()


_WRAP = b"attestable-audits/v2/wrap\x00"


def wrap_info(kind: str, digest: str, enclave_signing_public: bytes, party_public: bytes, session_id: str,
              attest_nonce: bytes) -> bytes:
    """HPKE `info` for a wrapped data key: the key opens only for this asset kind and digest, in the
    enclave whose attested signing key is given, for this uploading party, in this session, after
    the attestation with this nonce: a captured upload cannot be re-targeted to another key or session."""
    return (_WRAP + _lp(kind.encode()) + _lp(digest.encode()) + _lp(enclave_signing_public) + _lp(party_public)
            + _lp(session_id.encode()) + _lp(attest_nonce))


# Signed party messages. The label (with the action) is the first thing signed, so a signature for
# one action can never stand for another; the enclave's boot key ties each to one enclave boot.
_PARTY = b"attestable-audits/v1/"


def _party_message(action: str, enclave_signing_public: bytes, *fields: bytes) -> bytes:
    """"attestable-audits/v1/" || action || "\\0" || lp(enclave signing key) || lp(field)..."""
    return _PARTY + action.encode() + b"\x00" + _lp(enclave_signing_public) + b"".join(_lp(f) for f in fields)


def create_message(enclave_signing_public: bytes, attest_nonce: bytes, provider: bytes, auditor: bytes) -> bytes:
    """Signed by the party that creates a session naming both parties' keys (single use: the nonce
    of an attestation that party just verified)."""
    return _party_message("session-create", enclave_signing_public, attest_nonce, provider, auditor)


def join_message(enclave_signing_public: bytes, session_id: str, session_nonce: bytes, role: str) -> bytes:
    """Signed by the other party to join the session it is named in."""
    return _party_message("session-join", enclave_signing_public, session_id.encode(), session_nonce, role.encode())


def upload_message(enclave_signing_public: bytes, session_id: str, kind: str, digest: str, stream_header: bytes,
                   wrapped_key: bytes, attest_nonce: bytes) -> bytes:
    """Signed by the uploading party over everything in its upload header."""
    return _party_message("upload", enclave_signing_public, session_id.encode(), kind.encode(), digest.encode(),
                          stream_header, wrapped_key, attest_nonce)


def run_message(enclave_signing_public: bytes, session_id: str, manifest_digest: str, run_nonce: bytes) -> bytes:
    """Signed by either party to start the approved job (the manifest digest names the job)."""
    return _party_message("run", enclave_signing_public, session_id.encode(), manifest_digest.encode(), run_nonce)


def job_message(action: str, enclave_signing_public: bytes, session_id: str, manifest_digest: str) -> bytes:
    """Signed by either party to `cancel` the session's job or `close` the session."""
    if action not in ("cancel", "close"):
        raise ValueError(f"unknown session action {action!r}")
    return _party_message(action, enclave_signing_public, session_id.encode(), manifest_digest.encode())


def prepare_message(enclave_signing_public: bytes, session_id: str, session_nonce: bytes, job: int,
                    model_digest: str, method: str, recipient_suite: str, recipient_public: bytes,
                    nonce: bytes) -> bytes:
    """Signed by the provider to ask for a prepare job (step B): this method on the model the
    session holds now, as this session's job number `job`, with Mq's data key wrapped to
    `recipient_public`. Another session, job or model cannot reuse it."""
    return _party_message("prepare", enclave_signing_public, session_id.encode(), session_nonce, str(job).encode(),
                          model_digest.encode(), method.encode(), recipient_suite.encode(), recipient_public, nonce)


def attach_message(enclave_signing_public: bytes, session_id: str, session_nonce: bytes, model_digest: str,
                   statement_digest: str) -> bytes:
    """Signed by the provider to attach a prepare bundle to the session's model: the run manifest
    then names that prepare statement, so both parties approve the chain M -> Mq."""
    return _party_message("prepare-attach", enclave_signing_public, session_id.encode(), session_nonce,
                          model_digest.encode(), statement_digest.encode())


_PREPARED_WRAP = b"attestable-audits/v1/prepared-wrap\x00"


def prepared_wrap_info(prepared_digest: str, enclave_signing_public: bytes, provider_public: bytes,
                       session_id: str, job: int, nonce: bytes) -> bytes:
    """HPKE `info` for the data key of a prepared model Mq, wrapped to the provider's recipient key:
    bound to Mq's digest, the enclave boot, the provider, the session, the job and its nonce."""
    return (_PREPARED_WRAP + _lp(prepared_digest.encode()) + _lp(enclave_signing_public) + _lp(provider_public)
            + _lp(session_id.encode()) + _lp(str(job).encode()) + _lp(nonce))


_SAMPLES = b"attestable-audits/v1/samples\x00"


def samples_info(samples_root_hex: str, enclave_signing_public: bytes) -> bytes:
    """HPKE `info` for the per-sample records sent to the auditor: bound to their Merkle root and
    to the enclave that produced them."""
    return _SAMPLES + _lp(samples_root_hex.encode()) + _lp(enclave_signing_public)
