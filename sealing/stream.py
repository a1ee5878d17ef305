"""The sealed asset format: a folder's files in one chunked, authenticated AES-256-GCM stream.

Why this shape: an asset (a 16 GB model, a dataset, a spec) is encrypted once under a random
256-bit data key; only that key is HPKE-wrapped per audit (`sealing.keywrap`). The enclave
decrypts, digests and stores the plaintext in one pass, in memory bounded by a few chunks.

Construction: STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online authenticated-encryption and
its nonce-reuse misuse-resistance", CRYPTO 2015) over AES-256-GCM from `cryptography`. Tink's
AES-GCM-HKDF streaming AEAD is the same construction and is fast enough, but its Python API only
decrypts from a file object, while the enclave is fed chunk by chunk over gRPC and must say which
chunk failed; it would also add a protobuf-pinned dependency and turn the 32-byte data key into a
keyset. This file is the whole format:

    sealed file = header || chunk_0 || chunk_1 || ... || chunk_(n-1)

    header (53 bytes)  = fields || commitment
      fields (21)      = magic "AAUDSEAL" || version u8 (1) || kind u8 (1 model, 2 dataset, 3 spec)
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

import hashlib
import hmac
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, NoReturn, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealing.digest import (
    MAX_PATH_BYTES,
    ManifestBuilder,
    asset_files,
    path_problem,
    read_blocks,
)
from sealing.errors import SealError
from sealing.secretfile import read_secret_file, write_secret_file
from verifier.errors import ParseError

Kind = Literal["model", "dataset", "spec"]
KINDS: dict[str, int] = {"model": 1, "dataset": 2, "spec": 3}
MAGIC = b"AAUDSEAL"
VERSION = 1
DATA_KEY_LEN = 32
TAG_LEN = 16
NONCE_PREFIX_LEN = 7
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 64 << 20  # bounds the enclave's buffer whatever a header claims
MAX_CHUNKS = 1 << 32  # the nonce's chunk counter is 32 bits
META_FORMAT = "attestable-audits/sealed-asset/v1"

_FIELDS = struct.Struct(">8sBBI7s")
_COMMITMENT_LEN = 32
HEADER_LEN = _FIELDS.size + _COMMITMENT_LEN
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


def _derive(data_key: bytes, fields: bytes) -> tuple[bytes, bytes]:
    """(AEAD key, key commitment) for one stream: both depend on the whole header's fields."""
    okm = HKDF(algorithm=hashes.SHA256(), length=32 + _COMMITMENT_LEN, salt=None, info=_KDF_LABEL + fields).derive(data_key)
    return okm[:32], okm[32:]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != DATA_KEY_LEN:
        raise SealError(f"a data key is {DATA_KEY_LEN} bytes")


def _check_kind(kind: str) -> int:
    if kind not in KINDS:
        raise SealError(f"unknown asset kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind]


def parse_header(header: bytes, asset: str) -> StreamHeader:
    """Parse and bounds-check a stream header (authenticity is checked by `Unsealer`)."""
    if len(header) != HEADER_LEN:
        raise SealError(f"{asset}: header is {len(header)} bytes; a version {VERSION} header is {HEADER_LEN}")
    magic, version, kind_code, chunk_size, prefix = _FIELDS.unpack_from(header)
    if magic != MAGIC:
        raise SealError(f"{asset}: not a sealed asset (bad magic); seal it with `aaudit seal`")
    if version != VERSION:
        raise SealError(f"{asset}: sealed format version {version} is not supported (this build reads {VERSION})")
    kinds = {code: name for name, code in KINDS.items()}
    if kind_code not in kinds:
        raise SealError(f"{asset}: header names unknown asset kind {kind_code}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(f"{asset}: header chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    return StreamHeader(kinds[kind_code], chunk_size, prefix, bytes(header))


def file_record(path: str, size: int) -> bytes:
    """The record that starts a file in the plaintext stream (its bytes follow)."""
    problem = path_problem(path)
    if problem:
        raise SealError(f"cannot seal a file with an unsafe path ({problem})")
    encoded = path.encode("utf-8")
    return _FILE_HEAD.pack(_FILE_TAG, len(encoded)) + encoded + _FILE_SIZE.pack(size)


def end_record(file_count: int) -> bytes:
    return _END.pack(_END_TAG, file_count)


class StreamWriter:
    """Encrypts a plaintext stream into header + chunks written to `out`.

    A full chunk is held back until more data arrives, so the writer knows which chunk is last.
    """

    def __init__(self, data_key: bytes, kind: str, out: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_data_key(data_key)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise SealError(f"chunk size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        fields = _FIELDS.pack(MAGIC, VERSION, _check_kind(kind), chunk_size, os.urandom(NONCE_PREFIX_LEN))
        aead_key, commitment = _derive(bytes(data_key), fields)
        self.header = fields + commitment
        self._aead = AESGCM(aead_key)
        self._prefix = fields[-NONCE_PREFIX_LEN:]
        self._chunk_size = chunk_size
        self._pending = bytearray(chunk_size)
        self._fill = 0
        self._out_buf = memoryview(bytearray(chunk_size + TAG_LEN))
        self._out = out
        self._sha256 = hashlib.sha256(self.header)
        self.chunk_count = 0
        self.sealed_size = HEADER_LEN
        self._closed = False
        out.write(self.header)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._fill == self._chunk_size:
                self._emit(last=False)
            take = min(self._chunk_size - self._fill, len(view))
            self._pending[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]

    def close(self) -> None:
        """Emit the last chunk (possibly empty). The stream is invalid without it."""
        if not self._closed:
            self._emit(last=True)
            self._closed = True
            self._pending[:] = bytes(self._chunk_size)

    @property
    def sealed_sha256(self) -> str:
        return self._sha256.hexdigest()

    def _emit(self, last: bool) -> None:
        if self.chunk_count >= MAX_CHUNKS - 1 and not last:
            raise SealError(f"asset needs more than {MAX_CHUNKS} chunks; use a larger chunk size")
        out = self._out_buf[: self._fill + TAG_LEN]
        self._aead.encrypt_into(
            _nonce(self._prefix, self.chunk_count, last), memoryview(self._pending)[: self._fill], self.header, out
        )
        self._out.write(out)
        self._sha256.update(out)
        self.sealed_size += len(out)
        self.chunk_count += 1
        self._fill = 0


@dataclass(frozen=True)
class SealedAsset:
    """What `seal` produced: the public facts (written to `<kind>.json`) and where the files are."""

    kind: str
    digest: str
    plaintext_size: int
    file_count: int
    chunk_count: int
    chunk_size: int
    sealed_size: int
    sealed_sha256: str
    sealed_path: Path
    key_path: Path
    meta_path: Path

    def to_json(self) -> dict[str, Any]:
        """The metadata file's content: no key, no plaintext."""
        return {
            "format": META_FORMAT,
            "kind": self.kind,
            "digest": self.digest,
            "plaintextSize": self.plaintext_size,
            "fileCount": self.file_count,
            "chunkCount": self.chunk_count,
            "chunkSize": self.chunk_size,
            "sealed": {"file": self.sealed_path.name, "size": self.sealed_size, "sha256": self.sealed_sha256},
            "keyFile": self.key_path.name,
        }

    @classmethod
    def load(cls, meta_path: Path) -> "SealedAsset":
        """Read a `<kind>.json` written by `seal`; the sealed and key files are beside it."""
        meta_path = Path(meta_path)
        try:
            obj = json.loads(meta_path.read_bytes())
        except OSError as exc:
            raise ParseError(f"{meta_path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"{meta_path}: not JSON ({exc})") from None
        try:
            if not isinstance(obj, dict) or obj.get("format") != META_FORMAT:
                raise ParseError(f"{meta_path}: not a sealed-asset description ({META_FORMAT})")
            sealed = obj["sealed"]
            ints = [obj["plaintextSize"], obj["fileCount"], obj["chunkCount"], obj["chunkSize"], sealed["size"]]
            strs = [obj["kind"], obj["digest"], sealed["file"], sealed["sha256"], obj["keyFile"]]
        except (KeyError, TypeError):
            raise ParseError(f"{meta_path}: missing or malformed field") from None
        if not all(isinstance(v, int) and v >= 0 for v in ints) or not all(isinstance(v, str) for v in strs):
            raise ParseError(f"{meta_path}: malformed field types")
        if obj["kind"] not in KINDS:
            raise ParseError(f"{meta_path}: unknown asset kind {obj['kind']!r}")
        for name in (sealed["file"], obj["keyFile"]):
            if "/" in name or name in ("", ".", ".."):
                raise ParseError(f"{meta_path}: file name {name!r} must be a plain name beside the description")
        folder = meta_path.parent
        return cls(
            kind=obj["kind"], digest=obj["digest"], plaintext_size=ints[0], file_count=ints[1],
            chunk_count=ints[2], chunk_size=ints[3], sealed_size=ints[4], sealed_sha256=sealed["sha256"],
            sealed_path=folder / sealed["file"], key_path=folder / obj["keyFile"], meta_path=meta_path,
        )


def seal(
    src: Path,
    out_dir: Path,
    kind: Kind,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> SealedAsset:
    """Seal a folder or file as `out_dir/<kind>.sealed`, with its data key in `<kind>.key` (0600)
    and public facts in `<kind>.json`. The digest is computed on the very bytes that are encrypted.

    `progress(n)` is called with each number of plaintext bytes processed. Refuses to overwrite any
    of the three files; on failure, removes what it created.
    """
    _check_kind(kind)
    files = asset_files(Path(src))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SealError(f"cannot create {out_dir}: {exc.strerror}") from None
    sealed_path, key_path, meta_path = (out_dir / f"{kind}{ext}" for ext in (".sealed", ".key", ".json"))
    for existing in (sealed_path, key_path, meta_path):
        if existing.exists() or existing.is_symlink():
            raise SealError(f"{existing} already exists; remove it or choose another --out folder")
    data_key = os.urandom(DATA_KEY_LEN)
    write_secret_file(key_path, data_key)
    created = [key_path]
    try:
        partial = out_dir / f".{kind}.sealed.partial"
        with open(partial, "xb") as out:
            created.append(partial)
            writer = StreamWriter(data_key, kind, out, chunk_size)
            builder = ManifestBuilder()
            for file in files:
                builder.begin_file(file.relpath, file.size)
                writer.write(file_record(file.relpath, file.size))
                for block in read_blocks(file, chunk_size):
                    builder.update(block)
                    writer.write(block)
                    if progress:
                        progress(len(block))
                builder.end_file()
            writer.write(end_record(len(files)))
            writer.close()
        digest = builder.finish()
        created.append(sealed_path)
        os.replace(partial, sealed_path)
        asset = SealedAsset(
            kind=kind, digest=digest, plaintext_size=sum(f.size for f in files), file_count=len(files),
            chunk_count=writer.chunk_count, chunk_size=chunk_size, sealed_size=writer.sealed_size,
            sealed_sha256=writer.sealed_sha256, sealed_path=sealed_path, key_path=key_path, meta_path=meta_path,
        )
        created.append(meta_path)
        with open(meta_path, "x", encoding="utf-8") as handle:
            json.dump(asset.to_json(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return asset
    except OSError as exc:
        _remove(created)
        raise SealError(f"sealing into {out_dir} failed: {exc.filename or ''}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(created)
        raise


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def read_key_file(path: Path) -> bytes:
    """Load a `<kind>.key` file written by `seal` (exactly 32 bytes, owner-only)."""
    key = read_secret_file(Path(path), DATA_KEY_LEN)
    if len(key) != DATA_KEY_LEN:
        raise SealError(f"{path}: a data key file holds exactly {DATA_KEY_LEN} bytes, this one {len(key)}")
    return key


class SealedReader:
    """A sealed file as the uploader sends it: `.header`, then ciphertext chunks one at a time.

    Chunk boundaries follow from the header's chunk size and the file size, so a file cut short
    inside a tag is reported here; everything cryptographic is checked by the enclave's `Unsealer`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                self.size = os.fstat(handle.fileno()).st_size
                header = handle.read(HEADER_LEN)
        except OSError as exc:
            raise SealError(f"{self.path}: {exc.strerror}") from None
        parsed = parse_header(header, str(self.path))
        self.header: bytes = parsed.raw
        self.kind: str = parsed.kind
        self.chunk_size: int = parsed.chunk_size
        body = self.size - HEADER_LEN
        full = self.chunk_size + TAG_LEN
        self.chunk_count: int = -(-body // full)
        if body < TAG_LEN or body - (self.chunk_count - 1) * full < TAG_LEN:
            raise SealError(f"{self.path}: truncated: the last chunk is shorter than its {TAG_LEN}-byte tag")
        if self.chunk_count > MAX_CHUNKS:
            raise SealError(f"{self.path}: more than {MAX_CHUNKS} chunks")

    def __iter__(self) -> Iterator[bytes]:
        full = self.chunk_size + TAG_LEN
        remaining = self.size - HEADER_LEN
        try:
            with open(self.path, "rb") as handle:
                handle.seek(HEADER_LEN)
                for index in range(self.chunk_count):
                    want = min(full, remaining)
                    chunk = handle.read(want)
                    if len(chunk) != want:
                        raise SealError(f"{self.path}: file shrank while reading chunk {index}")
                    remaining -= want
                    yield chunk
        except OSError as exc:
            raise SealError(f"{self.path}: {exc.strerror}") from None


class Sink(Protocol):
    """Where unsealed files go. Content must not be usable before `commit`; `wipe` destroys it.

    `write` gets views of a reused buffer: copy what you keep before returning.
    """

    def begin_file(self, path: str, size: int) -> None: ...
    def write(self, data: memoryview) -> None: ...
    def end_file(self) -> None: ...
    def commit(self) -> None: ...
    def wipe(self) -> None: ...


class MemorySink:
    """Unsealed files as a dict path -> bytes (datasets, specs); readable only after commit."""

    def __init__(self) -> None:
        self._parts: dict[str, bytearray] = {}
        self._current: bytearray | None = None
        self._files: dict[str, bytes] | None = None

    def begin_file(self, path: str, size: int) -> None:
        if path in self._parts:
            raise SealError("a path repeats an earlier file")
        self._current = self._parts[path] = bytearray()

    def write(self, data: memoryview) -> None:
        assert self._current is not None
        self._current += data

    def end_file(self) -> None:
        self._current = None

    def commit(self) -> None:
        self._files = {path: bytes(part) for path, part in self._parts.items()}
        self._wipe_buffers()

    def wipe(self) -> None:
        self._wipe_buffers()
        self._files = None

    def _wipe_buffers(self) -> None:
        for part in self._parts.values():
            part[:] = bytes(len(part))
        self._parts.clear()
        self._current = None

    @property
    def files(self) -> dict[str, bytes]:
        if self._files is None:
            raise SealError("unsealed files are not available: unsealing has not finished successfully")
        return self._files


class DirectorySink:
    """Writes unsealed files under `root` (for the enclave: a folder on a tmpfs inside the TEE).

    Files are written into a private staging folder beside `root` and the folder is renamed to
    `root` only on commit, so `root` never holds a partly decrypted asset; `wipe` deletes the
    staging folder. `root` must not exist yet; its parent must.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.exists() or self.root.is_symlink():
            raise SealError(f"{self.root} already exists; unseal into a new folder")
        if not self.root.parent.is_dir():
            raise SealError(f"{self.root.parent} is not a folder")
        self._staging: Path | None = None
        self._paths: set[str] = set()
        self._fd: int | None = None
        self.committed = False

    def begin_file(self, path: str, size: int) -> None:
        problem = path_problem(path)
        if problem:
            raise SealError(f"refusing to write a file with an unsafe path ({problem})")
        if path in self._paths:
            raise SealError("a path repeats an earlier file")
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.partial-", dir=self.root.parent))
        self._paths.add(path)
        target = self._staging.joinpath(*path.split("/"))
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except (FileExistsError, NotADirectoryError):
            raise SealError("a file's path collides with an earlier file or folder") from None

    def write(self, data: memoryview) -> None:
        assert self._fd is not None
        view = data
        while view:
            view = view[os.write(self._fd, view) :]

    def end_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def commit(self) -> None:
        self.end_file()
        if self._staging is None:
            raise SealError("no files were unsealed")
        os.rename(self._staging, self.root)
        self._staging = None
        self.committed = True

    def wipe(self) -> None:
        self.end_file()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


class DigestOnlySink:
    """Keeps nothing: for checking a sealed asset's digest (and for the throughput benchmark)."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def begin_file(self, path: str, size: int) -> None:
        self.files += 1

    def write(self, data: memoryview) -> None:
        self.bytes += len(data)

    def end_file(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def wipe(self) -> None:
        self.files = self.bytes = 0


class _RecordParser:
    """Splits the decrypted byte stream into file records, feeding the manifest and the sink."""

    def __init__(self, builder: ManifestBuilder, sink: Sink) -> None:
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


class Unsealer:
    """The enclave side: checks, decrypts, digests and stores one sealed asset as chunks arrive.

    Construct with the stream header and the (unwrapped) data key, `feed` each ciphertext chunk in
    order, then `finish` to get the digest. The sink is committed only after the final chunk, the
    end record and (if given) the expected digest all check out; on any error it is wiped, so
    nothing partly decrypted is ever usable. Memory: one chunk buffer plus the chunk being fed.
    """

    def __init__(
        self, header: bytes, data_key: bytes, asset_name: str, sink: Sink, *, expected_kind: str | None = None
    ) -> None:
        self.asset_name = asset_name
        self._sink = sink
        self._failed = False
        self._final = False
        self._finished = False
        self.chunks_received = 0
        try:
            parsed = parse_header(header, asset_name)
        except SealError:
            self.abort()
            raise
        if len(data_key) != DATA_KEY_LEN:
            self._fail(f"{asset_name}: a data key is {DATA_KEY_LEN} bytes, got {len(data_key)}")
        if expected_kind is not None and parsed.kind != expected_kind:
            self._fail(f"{asset_name}: sealed as a {parsed.kind}, expected a {expected_kind}")
        fields = parsed.raw[: _FIELDS.size]
        aead_key, commitment = _derive(bytes(data_key), fields)
        if not hmac.compare_digest(commitment, parsed.raw[_FIELDS.size :]):
            self._fail(
                f"{asset_name}: header does not match the data key (wrong key, or a header altered or taken from another asset)"
            )
        self.kind: str = parsed.kind
        self.chunk_size: int = parsed.chunk_size
        self._header = parsed.raw
        self._prefix = parsed.nonce_prefix
        self._aead = AESGCM(aead_key)
        self._buffer = bytearray(self.chunk_size)
        self._builder = ManifestBuilder()
        self._parser = _RecordParser(self._builder, sink)

    def feed(self, chunk: bytes | memoryview) -> None:
        """Authenticate, decrypt and consume the next ciphertext chunk."""
        if self._failed:
            raise SealError(f"{self.asset_name}: unsealing already failed; start again")
        index = self.chunks_received
        if self._final:
            self._fail(f"{self.asset_name}: chunk {index} arrived after the final chunk")
        size = len(chunk)
        if not TAG_LEN <= size <= self.chunk_size + TAG_LEN:
            self._fail(f"{self.asset_name}: chunk {index} is {size} bytes; chunks are {TAG_LEN}..{self.chunk_size + TAG_LEN}")
        if index >= MAX_CHUNKS:
            self._fail(f"{self.asset_name}: more than {MAX_CHUNKS} chunks")
        out = memoryview(self._buffer)[: size - TAG_LEN]
        # Only a full-size chunk can be a non-final one; a full-size final chunk (the plaintext
        # ended on a chunk boundary) is recognised by its last-chunk nonce authenticating.
        candidates = (False, True) if size == self.chunk_size + TAG_LEN else (True,)
        for last in candidates:
            try:
                self._aead.decrypt_into(_nonce(self._prefix, index, last), chunk, self._header, out)
            except InvalidTag:
                continue
            break
        else:
            self._fail(f"{self.asset_name}: chunk {index} failed authentication (tampered, reordered, or wrong key)")
        self._final = last
        self.chunks_received += 1
        try:
            self._parser.feed(out)
        except SealError as exc:
            self._fail(f"{self.asset_name}: chunk {index}: {exc}")
        except OSError as exc:
            self._fail(f"{self.asset_name}: chunk {index}: cannot store unsealed data ({exc.strerror})")

    def finish(self, expected_digest: str | None = None) -> str:
        """Check that the stream ended properly, commit the sink and return the asset's digest."""
        if self._failed:
            raise SealError(f"{self.asset_name}: unsealing already failed; start again")
        if self._finished:
            raise SealError(f"{self.asset_name}: already finished")
        if not self._final:
            if not self.chunks_received:
                self._fail(f"{self.asset_name}: no chunks received")
            self._fail(f"{self.asset_name}: stream truncated after chunk {self.chunks_received - 1}: final chunk missing")
        if not self._parser.done:
            where = "without its end record" if self._parser.between_records else "inside a record"
            self._fail(f"{self.asset_name}: the final chunk ends the stream {where}")
        try:
            digest = self._builder.finish()
        except SealError as exc:
            self._fail(f"{self.asset_name}: {exc}")
        if expected_digest is not None and digest != expected_digest:
            self._fail(f"{self.asset_name}: digest {digest} does not match the expected {expected_digest}")
        try:
            self._sink.commit()
        except OSError as exc:
            self._fail(f"{self.asset_name}: cannot store unsealed data ({exc.strerror})")
        self._finished = True
        self._buffer[:] = bytes(self.chunk_size)
        return digest

    @property
    def manifest(self) -> list[dict[str, Any]]:
        """The manifest of what was unsealed (complete after `finish`)."""
        return self._builder.entries

    def abort(self) -> None:
        """Give up (for example the upload was cancelled): wipe the sink and refuse further chunks."""
        if not self._finished:
            self._failed = True
            self._sink.wipe()
            if hasattr(self, "_buffer"):
                self._buffer[:] = bytes(len(self._buffer))

    def _fail(self, message: str) -> NoReturn:
        self.abort()
        raise SealError(message)

