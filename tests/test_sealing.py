"""The sealed stream: round trips, and every way of damaging a stream fails loudly, names the asset
and the chunk, leaks no plaintext or key, and leaves nothing usable behind."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from pathlib import Path
from typing import Callable

import pytest
from helpers import flip as _flip
from hypothesis import given, settings
from hypothesis import strategies as st

from aaudit.cli import main as aaudit_main
from sealing import stream as stream_mod
from sealing.digest import digest_of_listing, folder_digest, path_problem
from sealing.errors import SealError
from sealing.stream import (
    HEADER_LEN,
    TAG_LEN,
    DigestOnlySink,
    DirectorySink,
    MemorySink,
    SealedAsset,
    SealedReader,
    StreamWriter,
    Unsealer,
    end_record,
    file_record,
    read_key_file,
    seal,
)

CHUNK = 64
MARKER = b"SECRET-PLAINTEXT-MARKER"
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": MARKER + bytes(range(256)) * 3,
    "tokenizer/tokenizer.json": MARKER * 5,
    ".hidden": b"",
}


@pytest.fixture
def asset_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def sealed(asset_dir: Path, tmp_path: Path) -> SealedAsset:
    return seal(asset_dir, tmp_path / "out", "model", chunk_size=CHUNK)


def _chunks(asset: SealedAsset) -> tuple[bytes, list[bytes]]:
    reader = SealedReader(asset.sealed_path)
    return reader.header, list(reader)


def _unseal(header: bytes, key: bytes, chunks: list[bytes], sink, **kw) -> str:
    unsealer = Unsealer(header, key, "model", sink, **kw)
    for chunk in chunks:
        unsealer.feed(chunk)
    return unsealer.finish()


def _assert_clean_error(message: str, key: bytes, *fragments: str) -> None:
    assert message.startswith("model: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert MARKER.decode() not in message and key.hex() not in message and repr(key) not in message


def test_round_trip_memory_and_digest(sealed: SealedAsset, asset_dir: Path) -> None:
    header, chunks = _chunks(sealed)
    key = read_key_file(sealed.key_path)
    sink = MemorySink()
    digest = _unseal(header, key, chunks, sink, expected_kind="model")
    assert digest == sealed.digest == folder_digest(asset_dir)
    assert sink.files == FILES
    assert sealed.chunk_count == len(chunks) > 3
    assert all(len(c) == CHUNK + TAG_LEN for c in chunks[:-1])
    assert sealed.sealed_size == sealed.sealed_path.stat().st_size == HEADER_LEN + sum(map(len, chunks))
    assert SealedAsset.load(sealed.meta_path) == sealed
    assert MARKER not in sealed.sealed_path.read_bytes()


def test_round_trip_directory_sink(sealed: SealedAsset, asset_dir: Path, tmp_path: Path) -> None:
    header, chunks = _chunks(sealed)
    root = tmp_path / "tmpfs" / "model"
    root.parent.mkdir()
    digest = _unseal(header, read_key_file(sealed.key_path), chunks, DirectorySink(root))
    assert digest == folder_digest(root) == folder_digest(asset_dir)
    assert {p.name for p in root.parent.iterdir()} == {"model"}  # no staging folder left
    assert stat.S_IMODE((root / "model.safetensors").stat().st_mode) == 0o600


def test_digest_only_sink(sealed: SealedAsset) -> None:
    header, chunks = _chunks(sealed)
    sink = DigestOnlySink()
    assert _unseal(header, read_key_file(sealed.key_path), chunks, sink) == sealed.digest
    assert (sink.files, sink.bytes) == (len(FILES), sum(map(len, FILES.values())))


def test_final_chunk_exactly_full(tmp_path: Path) -> None:
    # One file "f": record head 3 + 1 + 8 bytes, end record 9: 21 + size = 3 full chunks.
    (tmp_path / "f").write_bytes(MARKER * 6 + b"x" * (3 * CHUNK - 21 - len(MARKER) * 6))
    asset = seal(tmp_path / "f", tmp_path / "out", "spec", chunk_size=CHUNK)
    header, chunks = _chunks(asset)
    assert [len(c) for c in chunks] == [CHUNK + TAG_LEN] * 3
    assert _unseal(header, read_key_file(asset.key_path), chunks, MemorySink()) == folder_digest(tmp_path / "f")
    # Dropping that full final chunk leaves a stream whose chunk 1 is not marked last.
    with pytest.raises(SealError, match="truncated after chunk 1: final chunk missing"):
        _unseal(header, read_key_file(asset.key_path), chunks[:2], MemorySink())


def test_key_file_is_private_from_creation(sealed: SealedAsset) -> None:
    assert stat.S_IMODE(sealed.key_path.stat().st_mode) == 0o600
    assert len(read_key_file(sealed.key_path)) == 32
    meta = sealed.meta_path.read_text()
    assert read_key_file(sealed.key_path).hex() not in meta
    os.chmod(sealed.key_path, 0o644)
    with pytest.raises(SealError, match="accessible by other users"):
        read_key_file(sealed.key_path)


def test_seal_never_overwrites(sealed: SealedAsset, asset_dir: Path) -> None:
    key_before = sealed.key_path.read_bytes()
    with pytest.raises(SealError, match="already exists"):
        seal(asset_dir, sealed.sealed_path.parent, "model", chunk_size=CHUNK)
    assert sealed.key_path.read_bytes() == key_before


def test_seal_failure_removes_what_it_created(asset_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(file, block):  # a read error halfway through the asset
        raise SealError("disk gone")
        yield  # pragma: no cover

    monkeypatch.setattr(stream_mod, "read_blocks", broken)
    out = tmp_path / "out"
    with pytest.raises(SealError, match="disk gone"):
        seal(asset_dir, out, "model", chunk_size=CHUNK)
    assert list(out.iterdir()) == []


# --- damaged streams -------------------------------------------------------------------------


def _other_asset(tmp_path_factory) -> tuple[bytes, list[bytes]]:
    src = tmp_path_factory.mktemp("other")
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    other = seal(src, src / "out", "model", chunk_size=CHUNK)
    return _chunks(other)


CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "dropped final chunk": (lambda h, c, k, o: (h, c[:-1], k), ("truncated after chunk", "final chunk missing")),
    "truncated mid-chunk": (lambda h, c, k, o: (h, c[:-1] + [c[-1][:-3]], k), ("failed authentication",)),
    "cut after chunk 2": (lambda h, c, k, o: (h, c[:3], k), ("truncated after chunk 2: final chunk missing",)),
    "reordered": (lambda h, c, k, o: (h, [c[0], c[2], c[1]] + c[3:], k), ("chunk 1 failed authentication",)),
    "spliced from another asset": (
        lambda h, c, k, o: (h, c[:2] + [o[1][2]] + c[3:], k), ("chunk 2 failed authentication",)),
    "flipped byte": (lambda h, c, k, o: (h, c[:3] + [_flip(c[3], 5)] + c[4:], k), ("chunk 3 failed authentication",)),
    "flipped tag byte": (lambda h, c, k, o: (h, [_flip(c[0], CHUNK + 3)] + c[1:], k), ("chunk 0 failed authentication",)),
    "last chunk repeated": (lambda h, c, k, o: (h, c + [c[-1]], k), ("arrived after the final chunk",)),
    "empty stream": (lambda h, c, k, o: (h, [], k), ("no chunks received",)),
    "wrong data key": (lambda h, c, k, o: (h, c, os.urandom(32)), ("header does not match the data key",)),
    "header of another asset": (lambda h, c, k, o: (o[0], c, k), ("header does not match the data key",)),
    "altered header chunk size": (
        lambda h, c, k, o: (h[:10] + struct.pack(">I", 128) + h[14:], c, k), ("header does not match the data key",)),
    "oversized chunk": (lambda h, c, k, o: (h, [c[0] + b"x"] + c[1:], k), ("chunk 0 is 81 bytes",)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("sink_kind", ["memory", "directory"])
def test_damaged_stream_fails_and_wipes(name: str, sink_kind: str, sealed: SealedAsset, tmp_path: Path,
                                        tmp_path_factory) -> None:
    damage, fragments = CASES[name]
    header, chunks = _chunks(sealed)
    key = read_key_file(sealed.key_path)
    header, chunks, key = damage(header, chunks, key, _other_asset(tmp_path_factory))
    area = tmp_path / "tmpfs"
    area.mkdir()
    sink = MemorySink() if sink_kind == "memory" else DirectorySink(area / "model")
    with pytest.raises(SealError) as err:
        _unseal(header, key, chunks, sink)
    _assert_clean_error(str(err.value), key, *fragments)
    if sink_kind == "memory":
        with pytest.raises(SealError, match="not available"):
            sink.files
    assert list(area.iterdir()) == []


def test_no_use_after_failure_and_expected_values(sealed: SealedAsset) -> None:
    header, chunks = _chunks(sealed)
    key = read_key_file(sealed.key_path)
    unsealer = Unsealer(header, key, "model", MemorySink())
    with pytest.raises(SealError, match="chunk 0 failed"):
        unsealer.feed(chunks[1])
    with pytest.raises(SealError, match="already failed"):
        unsealer.feed(chunks[0])
    with pytest.raises(SealError, match="sealed as a model, expected a dataset"):
        Unsealer(header, key, "model", MemorySink(), expected_kind="dataset")
    sink = MemorySink()
    with pytest.raises(SealError, match="does not match the expected sha256:00"):
        unsealer = Unsealer(header, key, "model", sink)
        for chunk in chunks:
            unsealer.feed(chunk)
        unsealer.finish(expected_digest="sha256:" + "00" * 32)
    with pytest.raises(SealError, match="not available"):
        sink.files


@pytest.mark.parametrize(
    "header",
    [b"", b"AAUDSEAL", b"NOTSEALD" + bytes(HEADER_LEN - 8)],
)
def test_malformed_header(header: bytes) -> None:
    with pytest.raises(SealError, match="model: "):
        Unsealer(header, bytes(32), "model", MemorySink())


def test_sealed_reader_refuses_cut_tag(sealed: SealedAsset, tmp_path: Path) -> None:
    data = sealed.sealed_path.read_bytes()
    header, chunks = _chunks(sealed)
    cut = tmp_path / "cut.sealed"
    cut.write_bytes(data[: len(data) - len(chunks[-1]) + 5])
    with pytest.raises(SealError, match="shorter than its 16-byte tag"):
        SealedReader(cut)


# --- crafted streams: a valid key holder cannot make the enclave write outside its folder ----


def _crafted(plaintext: bytes, key: bytes) -> tuple[bytes, list[bytes]]:
    out = io.BytesIO()
    writer = StreamWriter(key, "dataset", out, CHUNK)
    writer.write(plaintext)
    writer.close()
    data = out.getvalue()
    body = data[HEADER_LEN:]
    return data[:HEADER_LEN], [body[i : i + CHUNK + TAG_LEN] for i in range(0, len(body), CHUNK + TAG_LEN)]


def _raw_file(path: bytes, data: bytes) -> bytes:
    return b"F" + struct.pack(">H", len(path)) + path + struct.pack(">Q", len(data)) + data


CRAFTED = {
    "traversal": (_raw_file(b"../evil", MARKER) + end_record(1), "unsafe path"),
    "absolute": (_raw_file(b"/tmp/evil", MARKER) + end_record(1), "unsafe path"),
    "nested traversal": (_raw_file(b"a/../../evil", MARKER) + end_record(1), "unsafe path"),
    "duplicate": (_raw_file(b"a", b"1") + _raw_file(b"a", MARKER) + end_record(2), "repeats"),
    "file under a file": (_raw_file(b"a", b"1") + _raw_file(b"a/b", MARKER) + end_record(2), "collides"),
    "wrong end count": (_raw_file(b"a", MARKER) + end_record(2), "end record counts 2 files"),
    "data after end": (_raw_file(b"a", MARKER) + end_record(1) + b"F", "data follows the end record"),
    "no end record": (_raw_file(b"a", MARKER), "without its end record"),
    "ends inside a file": (_raw_file(b"a", MARKER)[:-3], "inside a record"),
    "unknown record": (b"X" + MARKER, "unknown record type"),
    "non-UTF-8 path": (_raw_file(b"\xff", MARKER) + end_record(1), "not UTF-8"),
    "zero-length path": (_raw_file(b"", MARKER) + end_record(1), "path length of 0"),
    "no files": (end_record(0), "holds no files"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_stream_refused(name: str, tmp_path: Path) -> None:
    plaintext, fragment = CRAFTED[name]
    key = os.urandom(32)
    header, chunks = _crafted(plaintext, key)
    area = tmp_path / "area"
    area.mkdir()
    sink = DirectorySink(area / "dataset")
    unsealer = Unsealer(header, key, "dataset", sink)
    with pytest.raises(SealError) as err:
        for chunk in chunks:
            unsealer.feed(chunk)
        unsealer.finish()
    message = str(err.value)
    assert message.startswith("dataset: ") and fragment in message, message
    assert MARKER.decode() not in message and "evil" not in message
    assert list(area.iterdir()) == [] and not (tmp_path / "evil").exists()


def test_file_record_refuses_unsafe_path() -> None:
    with pytest.raises(SealError, match="unsafe path"):
        file_record("../x", 1)


def test_directory_sink_needs_a_new_folder(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="already exists"):
        DirectorySink(tmp_path)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_digest_and_seal(asset_dir: Path, tmp_path: Path, capsys) -> None:
    assert aaudit_main(["digest", str(asset_dir)]) == 0
    assert capsys.readouterr().out.strip() == folder_digest(asset_dir)
    out = tmp_path / "cli-out"
    assert aaudit_main(["seal", "model", str(asset_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model digest: {folder_digest(asset_dir)}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.key", "model.sealed"]
    assert aaudit_main(["digest", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


# --- any split of records across chunks round-trips -----------------------------------------

_names = st.text(alphabet="abc/._-\u00e9", min_size=1, max_size=20).filter(lambda p: path_problem(p) is None)


@settings(max_examples=60, deadline=None)
@given(files=st.dictionaries(_names, st.binary(max_size=300), min_size=1, max_size=6),
       chunk_size=st.integers(min_value=64, max_value=200))
def test_records_split_anywhere_round_trip(files: dict[str, bytes], chunk_size: int) -> None:
    key = os.urandom(32)
    out = io.BytesIO()
    writer = StreamWriter(key, "dataset", out, chunk_size)
    for path in sorted(files):
        writer.write(file_record(path, len(files[path])))
        writer.write(files[path])
    writer.write(end_record(len(files)))
    writer.close()
    body = out.getvalue()[HEADER_LEN:]
    sink = MemorySink()
    unsealer = Unsealer(out.getvalue()[:HEADER_LEN], key, "dataset", sink)
    for i in range(0, len(body), chunk_size + TAG_LEN):
        unsealer.feed(body[i : i + chunk_size + TAG_LEN])
    expected = digest_of_listing(
        [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files.items()])
    assert unsealer.finish() == expected
    assert sink.files == files
