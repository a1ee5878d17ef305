"""Sealed assets: a folder's files in one chunked, authenticated AES-256-GCM stream.

Why this shape: an asset (a 16 GB model, a dataset, a spec) is encrypted once under a random
256-bit data key; only that key is HPKE-wrapped per audit (`sealing.keywrap`). The enclave
decrypts, digests and stores the plaintext in one pass, in memory bounded by a few chunks.

Construction: STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online authenticated-encryption and
its nonce-reuse misuse-resistance", CRYPTO 2015) over AES-256-GCM from `cryptography`. Tink's
AES-GCM-HKDF streaming AEAD is the same construction and is fast enough, but its Python API only
decrypts from a file object, while the enclave is fed chunk by chunk over gRPC and must say which
chunk failed; it would also add a protobuf-pinned dependency and turn the 32-byte data key into a
keyset.

This module is the public reader and writer: `seal` (folder -> sealed file, key file, metadata),
`SealedAsset` (the metadata), `SealedReader` (a sealed file as chunks), `Unsealer` (the enclave's
check-decrypt-digest-store) and its sinks. The format's bytes (header, key and nonce derivation,
plaintext records) live in the private low-level layer `sealing._stream_format`, which documents
them; the names re-exported here from it stay importable from `sealing.stream`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, NoReturn, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealing._stream_format import (
    DATA_KEY_LEN,
    FIELDS_LEN,
    HEADER_LEN,
    KINDS,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_LEN,
    TAG_LEN,
    VERSION,
    FileSink,
    RecordParser,
    StreamHeader,
    check_data_key,
    chunk_nonce,
    derive_keys,
    end_record,
    file_record,
    header_fields,
    kind_code,
    parse_header,
)
from sealing.digest import ListingBuilder, asset_files, path_problem, read_blocks
from sealing.errors import SealError
from verifier.inputs import load_json
from sealing.secretfile import read_secret_file, write_secret_file
from verifier.errors import ParseError

__all__ = [
    "DATA_KEY_LEN", "DEFAULT_CHUNK_SIZE", "HEADER_LEN", "KINDS", "MAGIC", "MAX_CHUNKS", "MAX_CHUNK_SIZE",
    "META_FORMAT", "MIN_CHUNK_SIZE", "NONCE_PREFIX_LEN", "TAG_LEN", "VERSION", "DigestOnlySink", "DirectorySink",
    "Kind", "MemorySink", "SealedAsset", "SealedReader", "Sink", "StreamHeader", "StreamWriter", "Unsealer",
    "end_record", "file_record", "parse_header", "read_key_file", "seal",
]

Kind = Literal["model", "dataset", "spec", "judges"]
DEFAULT_CHUNK_SIZE = 1 << 20
META_FORMAT = "attestable-audits/sealed-asset/v1"


class StreamWriter:
    """Encrypts a plaintext stream into header + chunks written to `out`.

    A full chunk is held back until more data arrives, so the writer knows which chunk is last.
    """

    def __init__(self, data_key: bytes, kind: str, out: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        check_data_key(data_key)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise SealError(f"chunk size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        fields = header_fields(kind, chunk_size, os.urandom(NONCE_PREFIX_LEN))
        aead_key, commitment = derive_keys(bytes(data_key), fields)
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
            chunk_nonce(self._prefix, self.chunk_count, last), memoryview(self._pending)[: self._fill], self.header, out
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
            data = meta_path.read_bytes()
        except OSError as exc:
            raise ParseError(f"{meta_path}: {exc.strerror}") from None
        obj = load_json(data, str(meta_path))  # strict: nesting, duplicate keys and non-finite numbers refused
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
    kind_code(kind)
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
            builder = ListingBuilder()
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


class Sink(FileSink, Protocol):
    """Where unsealed files go. Content must not be usable before `commit`; `wipe` destroys it.

    `write` gets views of a reused buffer: copy what you keep before returning.
    """

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
        aead_key, commitment = derive_keys(bytes(data_key), parsed.raw[:FIELDS_LEN])
        if not hmac.compare_digest(commitment, parsed.raw[FIELDS_LEN:]):
            self._fail(
                f"{asset_name}: header does not match the data key (wrong key, or a header altered or taken from another asset)"
            )
        self.kind: str = parsed.kind
        self.chunk_size: int = parsed.chunk_size
        self._header = parsed.raw
        self._prefix = parsed.nonce_prefix
        self._aead = AESGCM(aead_key)
        self._buffer = bytearray(self.chunk_size)
        self._builder = ListingBuilder()
        self._parser = RecordParser(self._builder, sink)

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
                self._aead.decrypt_into(chunk_nonce(self._prefix, index, last), chunk, self._header, out)
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

