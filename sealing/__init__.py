"""Assets at rest and keys in transit: canonical digests (`digest`), the sealed stream (`stream`),
HPKE key wrapping to an attested enclave (`keywrap`) and party identity keys (`identity`)."""

from sealing.errors import SealError

__all__ = ["SealError"]
