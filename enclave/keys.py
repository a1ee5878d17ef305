"""The enclave's boot keys: made fresh at every start, never written anywhere, never reused."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sealing.keywrap import DEFAULT_SUITE, HpkeKeyPair


@dataclass(frozen=True)
class BootKeys:
    signing: Ed25519PrivateKey = field(repr=False)
    hpke: HpkeKeyPair = field(repr=False)

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> "BootKeys":
        return cls(Ed25519PrivateKey.generate(), HpkeKeyPair.generate(suite))

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
