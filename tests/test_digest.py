"""Canonical digests: the format is pinned against an independent computation, and everything the
walk refuses is refused with the offending path named."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from sealing.digest import (
    AssetFile,
    ListingBuilder,
    folder_digest,
    file_listing,
    path_problem,
    read_blocks,
)
from sealing.errors import SealError
from verifier.errors import UnusableInput


def _independent_digest(files: dict[str, bytes]) -> str:
    """The documented scheme, written out without the module's helpers."""
    entries = [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in sorted(files.items())]
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _make(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


FILES = {
    "config.json": b'{"hidden_size": 64}',
    "tokenizer/vocab.txt": b"a\nb\n",
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "a-b": b"dash",  # '-' < '.' < '/': order is by the whole path string
    "a.txt": b"dot",
    "a/b": b"slash",
    "empty.bin": b"",
    "caf\u00e9.txt": "non-ASCII name".encode(),
}


def test_digest_matches_documented_scheme(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", FILES)
    (root / "empty-folder").mkdir()
    assert folder_digest(root) == _independent_digest(FILES)
    assert [e["path"] for e in file_listing(root)] == sorted(FILES)
    assert [e["path"] for e in file_listing(root)][:4] == [".gitattributes", "a-b", "a.txt", "a/b"]


def test_hidden_files_count(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", FILES)
    before = folder_digest(root)
    (root / ".gitattributes").write_bytes(b"changed")
    assert folder_digest(root) != before


def test_single_file_is_an_asset_of_one_entry(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b"tasks = ['mmlu']\n")
    assert folder_digest(spec) == _independent_digest({"spec.toml": spec.read_bytes()})


def test_symlink_inside_folder_is_followed(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", {"real.bin": b"weights"})
    os.symlink("real.bin", root / "alias.bin")
    assert folder_digest(root) == _independent_digest({"real.bin": b"weights", "alias.bin": b"weights"})


@pytest.mark.parametrize(
    "make_link, expected",
    [
        (lambda root, out: os.symlink(out, root / "escape.bin"), "outside"),
        (lambda root, out: os.symlink(root / "missing", root / "dangling"), "dangling"),
        (lambda root, out: os.symlink("sub", root / "dirlink"), "symlink to a folder"),
        (lambda root, out: os.mkfifo(root / "pipe"), "special file"),
    ],
)
def test_refused_entries_name_the_path(tmp_path: Path, make_link, expected: str) -> None:
    root = _make(tmp_path / "m", {"sub/x": b"x"})
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the asset")
    make_link(root, outside)
    with pytest.raises(UnusableInput, match=expected) as err:
        folder_digest(root)
    assert str(root) in str(err.value)


def test_non_utf8_name_refused(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", {"ok": b"1"})
    with open(os.path.join(os.fsencode(root), b"bad\xff.bin"), "wb") as handle:
        handle.write(b"x")
    with pytest.raises(UnusableInput, match="UTF-8"):
        folder_digest(root)


def test_empty_or_missing_asset_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UnusableInput, match="no regular files"):
        folder_digest(tmp_path / "empty")
    with pytest.raises(UnusableInput, match="no such file"):
        folder_digest(tmp_path / "nope")


def test_file_changing_size_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grows.bin"
    path.write_bytes(b"12345")
    with pytest.raises(UnusableInput, match="changed size"):
        list(read_blocks(AssetFile("grows.bin", path, 3)))
    with pytest.raises(UnusableInput, match="changed size"):
        list(read_blocks(AssetFile("grows.bin", path, 9)))


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/.", "a\\b", "a\x00b", "a\nb", "x" * 5000, "bad\udcff"],
)
def test_unsafe_paths(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", ["a", ".hidden", "a/b/c.safetensors", "caf\u00e9", "..a", "a..b"])
def test_safe_paths(path: str) -> None:
    assert path_problem(path) is None


def test_builder_equals_folder_digest_and_checks_sizes(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", FILES)
    builder = ListingBuilder()
    for rel in reversed(sorted(FILES)):  # order of arrival does not matter; the listing is sorted
        builder.begin_file(rel, len(FILES[rel]))
        data = FILES[rel]
        builder.update(data[:2])
        builder.update(data[2:])
        builder.end_file()
    assert builder.finish() == folder_digest(root)

    short = ListingBuilder()
    short.begin_file("a", 3)
    short.update(b"ab")
    with pytest.raises(SealError, match="declared 3 bytes but carried 2"):
        short.end_file()
    over = ListingBuilder()
    over.begin_file("a", 1)
    with pytest.raises(SealError, match="more than its declared 1 bytes"):
        over.update(b"ab")
    dup = ListingBuilder()
    dup.begin_file("a", 0)
    dup.end_file()
    with pytest.raises(SealError, match="repeats"):
        dup.begin_file("a", 0)
    with pytest.raises(SealError, match="unsafe path"):
        ListingBuilder().begin_file("../a", 0)
    with pytest.raises(SealError, match="no files"):
        ListingBuilder().finish()
