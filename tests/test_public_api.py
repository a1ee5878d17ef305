"""The public surfaces (issue 13): `verifier` and `sealing` export a small `__all__` that is enough
to do the job through it alone; the sealed stream's byte-level primitives are private."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import vectors

import sealing
import verifier


@pytest.mark.parametrize("module", ["verifier", "sealing", "sealing.stream"])
def test_every_exported_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing


def test_stream_primitives_stay_off_the_public_surface() -> None:
    for name in ("derive_keys", "chunk_nonce", "header_fields", "RecordParser", "FileSink"):
        assert not hasattr(sealing, name) and name not in sealing.stream.__all__
    for mod in (verifier, sealing, sealing.stream):
        assert not [n for n in mod.__all__ if n.startswith("_")]


def test_evidence_verifies_through_the_public_names_alone() -> None:
    vector = vectors.GENUINE["sev-snp/milan-vcek"]
    verdict, _ = verifier.verify_evidence(vector.load(), at=vector.when,
                                          policy=verifier.policy.baseline("sev-snp", True))
    assert isinstance(verdict, verifier.Verdict) and verdict.verified
    strict, _ = verifier.verify_evidence(vector.load(), at=vector.when, policy=verifier.policy.baseline("sev-snp", False))
    assert not strict.verified  # the vector's guest policy allows debug


def test_seal_and_unseal_through_the_public_names_alone(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.jsonl").write_bytes(b'{"q": 1}\n' * 100)
    asset = sealing.seal(tmp_path / "in", tmp_path / "out", "dataset", chunk_size=64)
    reader = sealing.SealedReader(asset.sealed_path)
    sink = sealing.MemorySink()
    unsealer = sealing.Unsealer(reader.header, sealing.read_key_file(asset.key_path), "dataset", sink)
    for chunk in reader:
        unsealer.feed(chunk)
    assert unsealer.finish(asset.digest) == asset.digest == sealing.folder_digest(tmp_path / "in")
    assert sink.files == {"data.jsonl": b'{"q": 1}\n' * 100}
    tampered = bytearray(next(iter(reader)))
    tampered[0] ^= 1
    again = sealing.Unsealer(reader.header, sealing.read_key_file(asset.key_path), "dataset", sealing.MemorySink())
    with pytest.raises(sealing.SealError, match="chunk 0 failed authentication"):
        again.feed(bytes(tampered))
