"""Canonical digests of assets (model folders, datasets, specs): one definition for every party.

    listing  = [{"path": relative POSIX path, "sha256": hex of the file's bytes, "size": bytes}, ...]
               one entry per regular file, sorted by path (Unicode code point order = UTF-8 byte order)
    digest   = "sha256:" + hex(SHA-256(canonical_json(listing)))

The provider computes it with `aaudit digest` on plaintext; the enclave computes it with
`ListingBuilder` on the bytes it decrypts, in the same pass; the two must match bit for bit.

What counts as a file: every regular file under the folder, hidden files included (`.gitattributes`
or a stray `.DS_Store` change the digest: what is sealed is exactly what was digested). Empty
folders carry no bytes and are not listed. A symlink is followed only when it points to a regular
file inside the folder (it is listed under the link's path); symlinks leaving the folder (such as a
Hugging Face cache snapshot pointing into `blobs/`), symlinks to folders, dangling links, FIFOs,
sockets and devices are refused, so the digest never depends on something outside the asset. A
single file is an asset of one entry named by its file name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sealing.errors import SealError
from verifier.errors import UnusableInput
from verifier.models import digest_of_listing

MAX_PATH_BYTES = 4096
READ_BLOCK = 1 << 20


def path_problem(path: str) -> str | None:
    """Why `path` is not a safe relative POSIX path for an asset file, or None if it is.

    Shared by the folder walk and the unsealer, so nothing is digested that could not be unsealed
    and nothing unsealed can escape its folder.
    """
    if not path:
        return "empty path"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "contains a control character"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' component"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return None


class ListingBuilder:
    """Builds the listing file by file from a stream of bytes, without holding any file.

    `begin_file(path, size)`, `update(bytes)` any number of times, `end_file()`; then `finish()`
    returns the digest. Each file must carry exactly its declared size, and paths must be safe and
    unique. Messages number files from 1 and never repeat a path, because on the enclave side the
    path itself is the other party's plaintext.
    """

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._paths: set[str] = set()
        self._current: tuple[str, int] | None = None
        self._hash = hashlib.sha256()
        self._seen = 0

    @property
    def file_count(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The listing so far, sorted by path."""
        return sorted(self._entries, key=lambda e: e["path"])

    def begin_file(self, path: str, size: int) -> None:
        number = len(self._entries) + 1
        if self._current is not None:
            raise SealError(f"file {number} starts before file {number - 1} ended")
        problem = path_problem(path)
        if problem:
            raise SealError(f"file {number} has an unsafe path ({problem})")
        if path in self._paths:
            raise SealError(f"file {number} repeats the path of an earlier file")
        if size < 0:
            raise SealError(f"file {number} has a negative size")
        self._paths.add(path)
        self._current = (path, size)
        self._hash = hashlib.sha256()
        self._seen = 0

    def update(self, data: bytes | memoryview) -> None:
        if self._current is None:
            raise SealError("file data outside a file")
        self._seen += len(data)
        if self._seen > self._current[1]:
            raise SealError(f"file {len(self._entries) + 1} carries more than its declared {self._current[1]} bytes")
        self._hash.update(data)

    def end_file(self) -> None:
        if self._current is None:
            raise SealError("file ended that never began")
        path, size = self._current
        if self._seen != size:
            raise SealError(f"file {len(self._entries) + 1} declared {size} bytes but carried {self._seen}")
        self._entries.append({"path": path, "sha256": self._hash.hexdigest(), "size": size})
        self._current = None

    def finish(self) -> str:
        if self._current is not None:
            raise SealError(f"file {len(self._entries) + 1} never ended")
        if not self._entries:
            raise SealError("the asset holds no files")
        return digest_of_listing(self._entries)


@dataclass(frozen=True)
class AssetFile:
    """One regular file of an asset: its listing path, where to read it, and its size when listed."""

    relpath: str
    source: Path
    size: int


def asset_files(path: Path) -> list[AssetFile]:
    """The regular files of a folder (or the one file), sorted by listing path; refuses what the
    module docstring says is refused, naming the offending path."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnusableInput(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise UnusableInput(f"{path}: {exc.strerror}") from None
    if stat.S_ISREG(info.st_mode):
        return [AssetFile(_checked_name(path.name, path), path.resolve(), info.st_size)]
    if not stat.S_ISDIR(info.st_mode):
        raise UnusableInput(f"{path} is neither a regular file nor a folder")
    root = path.resolve()
    files: list[AssetFile] = []
    _scan(root, root, "", files)
    if not files:
        raise UnusableInput(f"{path} contains no regular files")
    return sorted(files, key=lambda f: f.relpath)


def _checked_name(relpath: str, shown: Path) -> str:
    problem = path_problem(relpath)
    if problem:
        raise UnusableInput(f"{shown}: file name cannot be part of an asset ({problem}); rename it")
    return relpath


def _scan(root: Path, folder: Path, prefix: str, out: list[AssetFile]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise UnusableInput(f"{folder}: cannot list folder ({exc.strerror})") from None
    for entry in entries:
        rel = prefix + entry.name
        shown = Path(entry.path)
        try:
            if entry.is_symlink():
                out.append(_linked_file(root, shown, rel))
            elif entry.is_dir(follow_symlinks=False):
                _scan(root, shown, rel + "/", out)
            elif entry.is_file(follow_symlinks=False):
                out.append(AssetFile(_checked_name(rel, shown), shown, entry.stat(follow_symlinks=False).st_size))
            else:
                raise UnusableInput(f"{shown} is a special file (FIFO, socket or device); assets hold regular files only")
        except OSError as exc:
            raise UnusableInput(f"{shown}: {exc.strerror}") from None


def _linked_file(root: Path, link: Path, rel: str) -> AssetFile:
    try:
        target = link.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise UnusableInput(f"{link} is a dangling or looping symlink") from None
    if not target.is_relative_to(root):
        raise UnusableInput(
            f"{link} is a symlink to {target}, outside {root}; copy the real files into the folder "
            "(for example `cp -rL`) so the digest covers exactly what is sealed"
        )
    info = target.stat()
    if stat.S_ISDIR(info.st_mode):
        raise UnusableInput(f"{link} is a symlink to a folder; replace it with the folder's files")
    if not stat.S_ISREG(info.st_mode):
        raise UnusableInput(f"{link} points to a special file; assets hold regular files only")
    return AssetFile(_checked_name(rel, link), target, info.st_size)


def read_blocks(file: AssetFile, block: int = READ_BLOCK) -> Iterator[memoryview]:
    """Yield the file's bytes in blocks (views of one reused buffer: consume before the next one).

    Raises if the file's length differs from when it was listed, so a file that changes while it
    is digested or sealed never yields a listing that does not match its bytes.
    """
    buffer = bytearray(block)
    view = memoryview(buffer)
    remaining = file.size
    try:
        with open(file.source, "rb", buffering=0) as handle:
            while remaining:
                n = handle.readinto(view[: min(block, remaining)])
                if not n:
                    break
                remaining -= n
                yield view[:n]
            extra = handle.read(1)
    except OSError as exc:
        raise UnusableInput(f"{file.source}: {exc.strerror}") from None
    if remaining or extra:
        raise UnusableInput(f"{file.source} changed size while it was being read; try again when it is complete")


def listing_and_digest(path: Path) -> tuple[list[dict[str, Any]], str]:
    builder = ListingBuilder()
    for file in asset_files(path):
        builder.begin_file(file.relpath, file.size)
        for block in read_blocks(file):
            builder.update(block)
        builder.end_file()
    return builder.entries, builder.finish()


def file_listing(path: Path) -> list[dict[str, Any]]:
    """The canonical listing of a plaintext folder or file."""
    return listing_and_digest(path)[0]


def folder_digest(path: Path) -> str:
    """The canonical digest ("sha256:<hex>") of a plaintext folder or file."""
    return listing_and_digest(path)[1]
