"""The one error this package raises on purpose.

A `SealError` means an asset, a key or a wrapped key could not be used: the caller (CLI, enclave
service) reports it as unusable input. Messages name the asset and where the problem is (header,
chunk index, file record), and never carry plaintext or key bytes.
"""

from __future__ import annotations

from verifier.errors import UnusableInput


class SealError(UnusableInput):
    """A sealed asset, key file or wrapped key is malformed, altered, or does not match its key."""
