"""The sealed stream's low-level layer: header bytes, key and nonce derivation, plaintext records.

This is the hazmat layer of `sealing.stream` (as pyca's `cryptography.hazmat` is to its recipes):
each function here is correct only as `sealing.stream` combines them (one random data key per
asset, every chunk authenticated with the header as AAD, the commitment compared in constant time,
the final chunk required). Use `seal`, `SealedReader` and `Unsealer` from `sealing.stream` instead;
this module is private and may change with the format version.

The format, byte for byte:

    sealed file = header || chunk_0 || chunk_1 || ... || chunk_(n-1)

    header (53 bytes)  = fields || commitment
      fields (21)      = magic "AAUDSEAL" || version u8 (1) || kind u8 (1 model, 2 dataset, 3 spec,
                         4 judges)
                         || chunk size u32 BE (plaintext bytes per chunk) || nonce prefix (7 random bytes)
      aead key || commitment = HKDF-SHA256(data key, salt = none,
                                           info = "attestable-audits/v1/seal\\0" || fields, 64 bytes)
    chunk_i            = AES-256-GCM(aead key, nonce_i, plaintext_i, aad = header)
      nonce_i          = prefix (7) || i as u32 BE (4) || 0x01 if last chunk else 0x00 (1)
      every chunk but the last carries exactly `chunk size` plaintext bytes; the last carries
      0..chunk size (a stream always has a last chunk).

The index in the nonce stops reordering, the last-chunk flag stops truncation at a chunk boundary,
the header as AAD (and in the key derivation) binds every chunk to this asset's kind, chunk size and
prefix, and the random data key per asset stops splicing between assets. The commitment lets the
enclave tell "wrong key or altered header" apart from a tampered chunk before decrypting anything,
and makes the ciphertext commit to one key.

The plaintext inside the stream is a sequence of records, in manifest order:

    file record = "F" || path length u16 BE || UTF-8 relative POSIX path || size u64 BE || bytes
    end record  = "E" || number of files u64 BE     (nothing may follow it)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealing.digest import MAX_PATH_BYTES, ListingBuilder, path_problem
from sealing.errors import SealError

KINDS: dict[str, int] = {"model": 1, "dataset": 2, "spec": 3, "judges": 4}
MAGIC = b"AAUDSEAL"
VERSION = 1
DATA_KEY_LEN = 32
TAG_LEN = 16
NONCE_PREFIX_LEN = 7
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 64 << 20  # bounds the enclave's buffer whatever a header claims
MAX_CHUNKS = 1 << 32  # the nonce's chunk counter is 32 bits

_FIELDS = struct.Struct(">8sBBI7s")
FIELDS_LEN = _FIELDS.size
_COMMITMENT_LEN = 32
HEADER_LEN = FIELDS_LEN + _COMMITMENT_LEN
_KDF_LABEL = b"attestable-audits/v1/seal\x00"
_FILE_HEAD = struct.Struct(">cH")
_FILE_SIZE = struct.Struct(">Q")
_END = struct.Struct(">cQ")
_FILE_TAG, _END_TAG = b"F", b"E"


@dataclass(frozen=True)
class StreamHeader:
    kind: str
    chunk_size: int
    nonce_prefix: bytes
    raw: bytes


def check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != DATA_KEY_LEN:
        raise SealError(f"a data key is {DATA_KEY_LEN} bytes")


def kind_code(kind: str) -> int:
    """The header's code for an asset kind; SealError for a kind the format does not know."""
    if kind not in KINDS:
        raise SealError(f"unknown asset kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind]


def header_fields(kind: str, chunk_size: int, nonce_prefix: bytes) -> bytes:
    """The header's first FIELDS_LEN bytes (the commitment from `derive_keys` follows them)."""
    return _FIELDS.pack(MAGIC, VERSION, kind_code(kind), chunk_size, nonce_prefix)


def derive_keys(data_key: bytes, fields: bytes) -> tuple[bytes, bytes]:
    """(AEAD key, key commitment) for one stream: both depend on the whole header's fields."""
    okm = HKDF(algorithm=hashes.SHA256(), length=32 + _COMMITMENT_LEN, salt=None, info=_KDF_LABEL + fields).derive(data_key)
    return okm[:32], okm[32:]


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def parse_header(header: bytes, asset: str) -> StreamHeader:
    """Parse and bounds-check a stream header (authenticity is checked by `Unsealer`)."""
    if len(header) != HEADER_LEN:
        raise SealError(f"{asset}: header is {len(header)} bytes; a version {VERSION} header is {HEADER_LEN}")
    magic, version, code, chunk_size, prefix = _FIELDS.unpack_from(header)
    if magic != MAGIC:
        raise SealError(f"{asset}: not a sealed asset (bad magic); seal it with `aaudit seal`")
    if version != VERSION:
        raise SealError(f"{asset}: sealed format version {version} is not supported (this build reads {VERSION})")
    kinds = {c: name for name, c in KINDS.items()}
    if code not in kinds:
        raise SealError(f"{asset}: header names unknown asset kind {code}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(f"{asset}: header chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    return StreamHeader(kinds[code], chunk_size, prefix, bytes(header))


def file_record(path: str, size: int) -> bytes:
    """The record that starts a file in the plaintext stream (its bytes follow)."""
    problem = path_problem(path)
    if problem:
        raise SealError(f"cannot seal a file with an unsafe path ({problem})")
    encoded = path.encode("utf-8")
    return _FILE_HEAD.pack(_FILE_TAG, len(encoded)) + encoded + _FILE_SIZE.pack(size)


def end_record(file_count: int) -> bytes:
    return _END.pack(_END_TAG, file_count)


class FileSink(Protocol):
    """What the record parser feeds: one file at a time (`sealing.stream.Sink` adds commit and wipe)."""

    def begin_file(self, path: str, size: int) -> None: ...
    def write(self, data: memoryview) -> None: ...
    def end_file(self) -> None: ...


class RecordParser:
    """Splits the decrypted byte stream into file records, feeding the manifest and the sink."""

    def __init__(self, builder: ListingBuilder, sink: FileSink) -> None:
        self._builder = builder
        self._sink = sink
        self._pending = bytearray()  # an incomplete record head: at most 3 + MAX_PATH_BYTES + 8 bytes
        self._remaining = 0  # bytes left in the current file
        self.done = False

    @property
    def between_records(self) -> bool:
        return not self._pending and not self._remaining

    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.done:
                raise SealError("data follows the end record")
            if self._remaining:
                piece = data[pos : pos + min(self._remaining, end - pos)]
                self._builder.update(piece)
                self._sink.write(piece)
                self._remaining -= len(piece)
                pos += len(piece)
                if not self._remaining:
                    self._end_file()
                continue
            take = min(self._need() - len(self._pending), end - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need():
                self._complete()

    def _need(self) -> int:
        """Bytes the record head being read needs in total (grows once the path length is known)."""
        if not self._pending:
            return 1
        tag = self._pending[:1]
        if tag == _END_TAG:
            return _END.size
        if tag != _FILE_TAG:
            raise SealError(f"unknown record type {self._pending[0]}")
        if len(self._pending) < _FILE_HEAD.size:
            return _FILE_HEAD.size
        path_len = _FILE_HEAD.unpack_from(self._pending)[1]
        if not 1 <= path_len <= MAX_PATH_BYTES:
            raise SealError(f"file record {self._builder.file_count + 1} has a path length of {path_len} bytes")
        return _FILE_HEAD.size + path_len + _FILE_SIZE.size

    def _complete(self) -> None:
        head = bytes(self._pending)
        self._pending.clear()
        if head[:1] == _END_TAG:
            count = _END.unpack(head)[1]
            if count != self._builder.file_count:
                raise SealError(f"end record counts {count} files but the stream carried {self._builder.file_count}")
            self.done = True
            return
        number = self._builder.file_count + 1
        try:
            path = head[_FILE_HEAD.size : -_FILE_SIZE.size].decode("utf-8")
        except UnicodeDecodeError:
            raise SealError(f"file record {number} has a path that is not UTF-8") from None
        size = _FILE_SIZE.unpack_from(head, len(head) - _FILE_SIZE.size)[0]
        self._builder.begin_file(path, size)
        self._sink.begin_file(path, size)
        self._remaining = size
        if not size:
            self._end_file()

    def _end_file(self) -> None:
        self._builder.end_file()
        self._sink.end_file()
