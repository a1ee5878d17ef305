"""Publishing a bundle: append it, check what the log answered, write the "logEntry".

The publisher checks the log's answer before anyone relies on it: the checkpoint parses (and is
signed by `log_key` when given), it covers the entry, and the inclusion proof leads from this
bundle's leaf hash to the checkpoint's root. A log that answers otherwise is reported, not recorded.
`publish_entry` / `prove_entry` do the same for any entry bytes (a gateway's receipt batches:
`verifier.receipt.batch_log_entry_bytes`).
"""

from __future__ import annotations

from typing import Any

from tlog.backend import LogBackend, LogError
from verifier.checkpoint import Checkpoint, parse_checkpoint, parse_note, parse_verifier_key, verify_checkpoint
from verifier.errors import ParseError, UnusableInput, VerificationError
from verifier.logentry import ConsistencyProof, InclusionProof, LogEntry
from verifier.merkle import leaf_hash, verify_inclusion
from verifier.models import LOG_ENTRY_KEY, log_entry_bytes


def publish_bundle(backend: LogBackend, bundle: dict[str, Any], *, log_key: str | None = None,
                   from_size: int | None = None) -> dict[str, Any]:
    """Append `bundle` and return a copy with its "logEntry".

    `log_key` (the log's verifier key) makes the publisher check the checkpoint's signature and
    records the key in the entry; `from_size` adds a consistency proof from that older tree size
    (the size a verifier's witness last saw) to the entry's checkpoint.
    """
    if LOG_ENTRY_KEY in bundle:
        old = bundle[LOG_ENTRY_KEY]
        where = f" (entry {old.get('index')} of {old.get('origin')})" if isinstance(old, dict) else ""
        raise UnusableInput(f"the bundle is already published{where}; refresh its proof with "
                            "`aaudit log prove --bundle` instead of appending it again")
    return {**bundle, LOG_ENTRY_KEY: publish_entry(backend, log_entry_bytes(bundle), log_key=log_key,
                                                   from_size=from_size).to_json()}


def publish_entry(backend: LogBackend, data: bytes, *, log_key: str | None = None,
                  from_size: int | None = None) -> LogEntry:
    """Append `data` and return its checked log entry (options as in `publish_bundle`)."""
    res = backend.append(data)
    entry = _checked_entry(backend, data, res.proof, res.checkpoint, log_key, from_size)
    if entry.index != res.index:
        raise LogError(f"the log acknowledged index {res.index} but proved index {entry.index}")
    return entry


def prove_entry(backend: LogBackend, data: bytes, index: int, *, tree_size: int | None = None,
                log_key: str | None = None, from_size: int | None = None) -> LogEntry:
    """The checked log entry of `data`, already at `index`, under the checkpoint of `tree_size`
    (default: the latest); options as in `refresh_bundle`."""
    proof, note = backend.inclusion_proof(index, tree_size)
    if note is None:
        raise LogError(f"the log never signed a checkpoint of size {proof.tree_size}; omit the tree size to "
                       "use the latest checkpoint")
    return _checked_entry(backend, data, proof, note, log_key, from_size)


def refresh_bundle(backend: LogBackend, bundle: dict[str, Any], *, index: int | None = None,
                   tree_size: int | None = None, log_key: str | None = None,
                   from_size: int | None = None) -> dict[str, Any]:
    """Re-prove an already published bundle against a newer checkpoint (default: the latest).

    This is how an entry catches up with a witness that has seen a newer checkpoint than the
    one it was published under: pass the witness's size as `from_size`.
    """
    if index is None:
        old = bundle.get(LOG_ENTRY_KEY)
        if not isinstance(old, dict) or not isinstance(old.get("index"), int):
            raise UnusableInput("the bundle has no logEntry with an index; give the index explicitly")
        index = old["index"]
    entry = prove_entry(backend, log_entry_bytes(bundle), index, tree_size=tree_size, log_key=log_key,
                        from_size=from_size)
    return {**bundle, LOG_ENTRY_KEY: entry.to_json()}


def checkpoint_of(note: str, log_key: str | None) -> Checkpoint:
    """Parse a checkpoint note; verified against `log_key` when one is given."""
    verifier = None if log_key is None else parse_verifier_key(log_key)  # a bad key is the caller's error
    try:
        if verifier is not None:
            return verify_checkpoint(note, verifier)
        return parse_checkpoint(parse_note(note).text)
    except (ParseError, VerificationError) as exc:
        raise LogError(f"the log's checkpoint is not acceptable: {exc}") from None


def _checked_entry(backend: LogBackend, data: bytes, proof: InclusionProof, note: str,
                   log_key: str | None, from_size: int | None) -> LogEntry:
    cp = checkpoint_of(note, log_key)
    leaf = leaf_hash(data)
    if cp.size != proof.tree_size or not verify_inclusion(leaf, proof.index, proof.tree_size, proof.hashes, cp.root):
        raise LogError(f"the log's inclusion proof for index {proof.index} does not lead from this entry to its "
                       f"checkpoint (size {cp.size}); the log is faulty or this is not the entry at that index")
    consistency: ConsistencyProof | None = None
    if from_size is not None:
        consistency = backend.consistency_proof(from_size, cp.size)
    return LogEntry(cp.origin, proof.index, cp.size, proof.hashes, note, log_key, consistency)
