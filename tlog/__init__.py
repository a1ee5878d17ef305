"""The transparency log of audit bundles (step D). See docs/TRANSPARENCY_LOG.md.

backend  the LogBackend protocol every log sits behind, its records and errors
proofs   RFC 9162 proof generation from stored complete subtrees; the compact range
store    SQLite storage (WAL, synchronous=FULL): entries, subtree hashes, checkpoints
keys     the log's Ed25519 note key, kept beside the database
log      SQLiteLog: the embedded LogBackend, with group commit
server   the gRPC service over any LogBackend; client: LogBackend over gRPC, publish()
publish  append a bundle / re-prove it, check the log's answer, write "logEntry"
audit    re-derive the stored tree and check every hash and checkpoint
cli      `aaudit log ...`

Verifiers need none of this: verifier/checkpoint.py and verifier/logentry.py check bundles offline.
"""
