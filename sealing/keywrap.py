"""Wrapping a 32-byte data key to an attested enclave key with HPKE (RFC 9180, base mode).

The enclave makes a fresh `HpkeKeyPair` at boot and puts its public bytes in the attestation's
report data; a party that has checked the attestation wraps its asset's data key to that public key.
`info` binds the wrapped key to its context (`verifier.binding.wrap_info`: asset kind, asset digest,
the enclave's signing key), so a wrapped key cannot be replayed for another asset or another enclave.

Suites (by name):
  "x25519-sha256-aes256gcm"          DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (default)
  "mlkem768x25519-sha256-aes256gcm"  ML-KEM-768 + X25519 hybrid KEM / HKDF-SHA256 / AES-256-GCM,
                                     public key = ML-KEM-768 encapsulation key (1184 bytes) ||
                                     X25519 public key (32), the order of draft-ietf-hpke-pq
The wrapped key is HPKE's single-shot output: encapsulated key || AEAD ciphertext of the data key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from sealing.errors import SealError

DEFAULT_SUITE = "x25519-sha256-aes256gcm"
HYBRID_SUITE = "mlkem768x25519-sha256-aes256gcm"
SUITES = (DEFAULT_SUITE, HYBRID_SUITE)
DATA_KEY_LEN = 32
_AEAD_TAG_LEN = 16
_X25519_LEN = 32
_MLKEM768_PUBLIC_LEN = 1184


def _suite(name: str) -> hpke.Suite:
    if name == DEFAULT_SUITE:
        return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    if name == HYBRID_SUITE:
        return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    raise SealError(f"unknown HPKE suite {name!r} (known: {', '.join(SUITES)})")


def _kem(name: str) -> hpke.KEM:
    return hpke.KEM.X25519 if name == DEFAULT_SUITE else hpke.KEM.MLKEM768_X25519


def _public_key(suite: str, public: bytes) -> Any:
    expected = _X25519_LEN if suite == DEFAULT_SUITE else _MLKEM768_PUBLIC_LEN + _X25519_LEN
    if len(public) != expected:
        raise SealError(f"recipient public key is {len(public)} bytes; suite {suite} uses {expected}")
    try:
        if suite == DEFAULT_SUITE:
            return x25519.X25519PublicKey.from_public_bytes(public)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(public[:_MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(public[_MLKEM768_PUBLIC_LEN:]),
        )
    except ValueError as exc:
        raise SealError(f"recipient public key is not a valid {suite} key ({exc})") from None


def seal_to(plaintext: bytes, recipient_public: bytes, suite: str, info: bytes) -> bytes:
    """HPKE single-shot encryption of `plaintext` to a public key, bound to `info`."""
    cipher, public = _suite(suite), _public_key(suite, recipient_public)
    try:
        return cipher.encrypt(plaintext, public, info=info)
    except ValueError as exc:  # for example an X25519 point of small order: no shared secret
        raise SealError(f"recipient public key is not a valid {suite} key ({exc})") from None


def wrap(data_key: bytes, recipient_public: bytes, suite: str, info: bytes) -> bytes:
    """HPKE-encrypt a 32-byte data key to an enclave's public key, bound to `info`."""
    if len(data_key) != DATA_KEY_LEN:
        raise SealError(f"a data key is {DATA_KEY_LEN} bytes, got {len(data_key)}")
    return seal_to(data_key, recipient_public, suite, info)


@dataclass(frozen=True)
class HpkeKeyPair:
    """An HPKE key pair. An enclave's is made at boot and kept in memory only; an auditor's samples
    key (`aaudit keygen --role auditor`) lives in a 0600 file."""

    suite: str
    _private: Any = field(repr=False)
    _public: bytes = field(repr=False)

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> "HpkeKeyPair":
        _suite(suite)
        if suite == DEFAULT_SUITE:
            private = x25519.X25519PrivateKey.generate()
            return cls(suite, private, private.public_key().public_bytes_raw())
        pq, classical = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        public = pq.public_key().public_bytes_raw() + classical.public_key().public_bytes_raw()
        return cls(suite, hpke.MLKEM768X25519PrivateKey(pq, classical), public)

    def public_bytes(self) -> bytes:
        return self._public

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes:
        """Recover a data key wrapped to this key with the same `info`."""
        expected = _kem(self.suite).enc_length() + DATA_KEY_LEN + _AEAD_TAG_LEN
        if len(wrapped) != expected:
            raise SealError(f"wrapped key is {len(wrapped)} bytes; suite {self.suite} wraps a data key in {expected}")
        try:
            return self.open(wrapped, info)
        except SealError:
            raise SealError(
                "cannot unwrap the data key: it was wrapped to another enclave key, for another asset or "
                "context (info differs), or altered"
            ) from None

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        """Decrypt what `seal_to` encrypted to this key with the same `info`."""
        try:
            return _suite(self.suite).decrypt(ciphertext, self._private, info=info)
        except (InvalidTag, ValueError):
            raise SealError("cannot decrypt: encrypted to another key, for another context, or altered") from None

    def private_bytes(self) -> bytes:
        """The raw X25519 private key, for a party's own long-lived key file (never an enclave's)."""
        if self.suite != DEFAULT_SUITE:
            raise SealError(f"only {DEFAULT_SUITE} keys are stored in files")
        return self._private.private_bytes_raw()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "HpkeKeyPair":
        try:
            private = x25519.X25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            raise SealError("not a raw 32-byte X25519 private key") from None
        return cls(DEFAULT_SUITE, private, private.public_key().public_bytes_raw())
