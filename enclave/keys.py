"""The enclave's boot keys: made fresh at every start, never written anywhere, never reused.

Three keys: Ed25519 signs reports, HPKE receives wrapped data keys, and an ECDSA P-256 key serves
TLS. All three public keys are bound into every attestation (`verifier.binding.key_binding`), so a
client that verified the evidence pins the TLS key for the channel: no certificate authority is
involved, and a machine in the middle cannot present the enclave's key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from sealing.keywrap import DEFAULT_SUITE, HpkeKeyPair

# The name in the enclave's self-signed certificate; clients pin the certificate and override the
# TLS target name to this, since the channel is authenticated by attestation, not by DNS.
TLS_NAME = "aaudit-enclave"


@dataclass(frozen=True)
class TlsIdentity:
    """A self-signed certificate for the boot's TLS key. The private key stays in memory (gRPC
    takes it as PEM bytes, never from a file)."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    public_der: bytes  # SubjectPublicKeyInfo DER: what the attestation binds

    @classmethod
    def generate(cls) -> "TlsIdentity":
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=366))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(
            key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(Encoding.PEM),
            key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        )


@dataclass(frozen=True)
class BootKeys:
    signing: Ed25519PrivateKey = field(repr=False)
    hpke: HpkeKeyPair = field(repr=False)
    tls: TlsIdentity = field(repr=False)

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> "BootKeys":
        return cls(Ed25519PrivateKey.generate(), HpkeKeyPair.generate(suite), TlsIdentity.generate())

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
