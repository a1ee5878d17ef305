"""The enclave session's rules, without gRPC: nonces serve once, one auditor key, size limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.demo_assets import demo_spec_toml, write_demo_data
from enclave.keys import BootKeys
from enclave.session import Session, SessionError
from sealing import keywrap
from sealing.stream import SealedReader, read_key_file, seal
from verifier.binding import wrap_info


@pytest.fixture()
def setup(tmp_path: Path):
    write_demo_data(tmp_path / "data")
    (tmp_path / "audit.toml").write_text(demo_spec_toml())
    sealed = {"dataset": seal(tmp_path / "data", tmp_path / "sealed", "dataset"),
              "spec": seal(tmp_path / "audit.toml", tmp_path / "sealed", "spec")}
    keys = BootKeys.generate()
    work = tmp_path / "work"
    work.mkdir()
    return Session(keys, "sim", "00" * 32, work), keys, sealed


def _begin(session: Session, keys: BootKeys, asset, party: bytes, nonce: bytes):  # noqa: ANN001, ANN202
    wrapped = keywrap.wrap(read_key_file(asset.key_path), keys.hpke.public_bytes(), keys.hpke.suite,
                           wrap_info(asset.kind, asset.digest, keys.signing_public))
    reader = SealedReader(asset.sealed_path)
    up = session.begin_upload(asset.kind, asset.digest, wrapped, reader.header, party, nonce)
    return up, list(reader)


def _upload(session: Session, keys: BootKeys, asset, party: bytes, nonce: bytes) -> None:  # noqa: ANN001
    up, chunks = _begin(session, keys, asset, party, nonce)
    for c in chunks:
        up.feed(c)
    session.finish_upload(up)


def test_nonce_must_be_issued_and_serves_each_kind_once(setup) -> None:  # noqa: ANN001
    session, keys, sealed = setup
    party, nonce = os.urandom(32), os.urandom(32)
    with pytest.raises(SessionError, match="not issued by this enclave"):
        _upload(session, keys, sealed["dataset"], party, nonce)
    session.note_attestation(nonce)
    _upload(session, keys, sealed["dataset"], party, nonce)
    _upload(session, keys, sealed["spec"], party, nonce)  # one attestation serves both of the auditor's kinds
    with pytest.raises(SessionError, match="already used for a dataset upload"):
        _upload(session, keys, sealed["dataset"], party, nonce)


def test_concurrent_uploads_by_two_auditor_keys_cannot_both_land(setup) -> None:  # noqa: ANN001
    session, keys, sealed = setup
    nonce = os.urandom(32)
    session.note_attestation(nonce)
    up_a, chunks_a = _begin(session, keys, sealed["dataset"], b"A" * 32, nonce)
    up_b, chunks_b = _begin(session, keys, sealed["spec"], b"B" * 32, nonce)  # both pass the first check
    for c in chunks_a:
        up_a.feed(c)
    for c in chunks_b:
        up_b.feed(c)
    session.finish_upload(up_a)
    with pytest.raises(SessionError, match="one auditor key"):
        session.finish_upload(up_b)
    manifest, _, _, _ = session.manifest()
    assert set(manifest["assets"]) == {"dataset"}


def test_upload_size_limit(setup, tmp_path: Path) -> None:  # noqa: ANN001
    session, keys, sealed = setup
    session.max_bytes["dataset"] = 100
    nonce = os.urandom(32)
    session.note_attestation(nonce)
    with pytest.raises(SessionError, match="exceeds this enclave's limit of 100 bytes"):
        _upload(session, keys, sealed["dataset"], os.urandom(32), nonce)
    assert session.manifest()[0]["assets"] == {}


def test_an_approval_must_name_every_asset_digest() -> None:
    from aaudit.client import ExpectedRun
    from verifier.errors import UnusableInput

    with pytest.raises(UnusableInput, match="missing spec"):
        ExpectedRun({"model": "sha256:" + "0" * 64, "dataset": "sha256:" + "1" * 64}, {})
