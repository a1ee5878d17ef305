"""The one interface every transparency log sits behind, and the errors it speaks.

`SQLiteLog` (the embedded log), `LogClient` (the same log over gRPC) and any future adapter
(Sigstore Rekor v2, see docs/TRANSPARENCY_LOG.md) implement `LogBackend`; publishing, proving and
the CLI only ever talk to this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from verifier.errors import AAuditError, UnusableInput
from verifier.logentry import ConsistencyProof, InclusionProof

MAX_ENTRY_BYTES = 1024 * 1024  # bundles are a few hundred KB; anything larger is a mistake or abuse


class LogError(AAuditError):
    """The log could not do what was asked (storage failure, unreachable server)."""


class NotFound(LogError):
    """An index or tree size beyond what the log holds."""


class InvalidRequest(UnusableInput):
    """A request that can never succeed (empty or oversized entry, first > second)."""


@dataclass(frozen=True)
class AppendResult:
    """An acknowledged append: durable, covered by `checkpoint`, proven by `proof`."""

    index: int
    checkpoint: str            # signed note of tree size proof.tree_size
    proof: InclusionProof


def check_entry(entry: bytes) -> None:
    if not entry:
        raise InvalidRequest("refusing to append an empty entry")
    if len(entry) > MAX_ENTRY_BYTES:
        raise InvalidRequest(f"entry is {len(entry)} bytes; this log accepts at most {MAX_ENTRY_BYTES} bytes "
                             "per entry (bundles should be a few hundred KB)")


class LogBackend(Protocol):
    """Append-only Merkle log with signed checkpoints (RFC 9162 hashing, C2SP checkpoints)."""

    def append(self, entry: bytes) -> AppendResult:
        """Durably append `entry`; returns only once it is committed."""
        ...

    def entry(self, index: int) -> bytes:
        ...

    def checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        ...

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> tuple[InclusionProof, str | None]:
        """Proof for `index` in the tree of `tree_size` (default: latest), with that size's signed
        checkpoint if the log ever signed one."""
        ...

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        """Proof that tree `first` is a prefix of tree `second` (default: latest)."""
        ...

    def close(self) -> None:
        ...
