"""Assets at rest and keys in transit: canonical digests (`digest`), the sealed stream (`stream`),
HPKE key wrapping to an attested enclave (`keywrap`) and party identity keys (`identity`).

The names below are the public API (what the `aaudit` CLI and third parties use); the sealed
stream's byte-level primitives are private (`sealing._stream_format`).
"""

from sealing.digest import folder_digest
from sealing.errors import SealError
from sealing.identity import Identity, generate_identity, load_identity, load_public_raw
from sealing.keywrap import DEFAULT_SUITE, HYBRID_SUITE, SUITES, HpkeKeyPair, seal_to, wrap
from sealing.stream import (
    DirectorySink,
    DigestOnlySink,
    Kind,
    MemorySink,
    SealedAsset,
    SealedReader,
    Sink,
    Unsealer,
    read_key_file,
    seal,
)

__all__ = [
    "DEFAULT_SUITE", "HYBRID_SUITE", "SUITES", "DigestOnlySink", "DirectorySink", "HpkeKeyPair", "Identity", "Kind",
    "MemorySink", "SealError",
    "SealedAsset", "SealedReader", "Sink", "Unsealer", "folder_digest", "generate_identity", "load_identity",
    "load_public_raw", "read_key_file", "seal", "seal_to", "wrap",
]
