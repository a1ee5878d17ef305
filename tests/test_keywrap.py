"""HPKE key wrapping (both suites) and party identity keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from aaudit.cli import main as aaudit_main
from sealing.errors import SealError
from sealing.identity import (
    generate_identity,
    load_identity,
    load_public_raw,
)
from sealing.keywrap import DEFAULT_SUITE, HYBRID_SUITE, SUITES, HpkeKeyPair, wrap
from verifier.binding import wrap_info
from verifier.manifest import approval_message, verify_approval

ENCLAVE_SIGNING_KEY = bytes(range(32))
PARTY, SESSION, NONCE = b"P" * 32, "0123abcd" * 4, b"N" * 32
INFO = wrap_info("model", "sha256:" + "ab" * 32, ENCLAVE_SIGNING_KEY, PARTY, SESSION, NONCE)


@pytest.fixture(params=SUITES)
def pair(request) -> HpkeKeyPair:
    return HpkeKeyPair.generate(request.param)


def test_round_trip(pair: HpkeKeyPair) -> None:
    data_key = os.urandom(32)
    wrapped = wrap(data_key, pair.public_bytes(), pair.suite, INFO)
    assert pair.unwrap(wrapped, INFO) == data_key
    assert wrap(data_key, pair.public_bytes(), pair.suite, INFO) != wrapped  # fresh ephemeral key each time
    assert data_key not in wrapped


def test_public_key_sizes() -> None:
    assert len(HpkeKeyPair.generate().public_bytes()) == 32
    assert HpkeKeyPair.generate().suite == DEFAULT_SUITE
    assert len(HpkeKeyPair.generate(HYBRID_SUITE).public_bytes()) == 1184 + 32


def test_hybrid_public_bytes_are_mlkem_then_x25519() -> None:
    """The serialised hybrid key is the two component keys in draft-ietf-hpke-pq order: a sender that
    builds the key from its parts by that rule reaches the same recipient."""
    pair = HpkeKeyPair.generate(HYBRID_SUITE)
    public = pair.public_bytes()
    rebuilt = hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public[:1184]), x25519.X25519PublicKey.from_public_bytes(public[1184:])
    )
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert pair.unwrap(suite.encrypt(b"k" * 32, rebuilt, info=INFO), INFO) == b"k" * 32


@pytest.mark.parametrize(
    "other_info",
    [
        wrap_info("dataset", "sha256:" + "ab" * 32, ENCLAVE_SIGNING_KEY, PARTY, SESSION, NONCE),
        wrap_info("model", "sha256:" + "cd" * 32, ENCLAVE_SIGNING_KEY, PARTY, SESSION, NONCE),
        wrap_info("model", "sha256:" + "ab" * 32, bytes(32), PARTY, SESSION, NONCE),
        wrap_info("model", "sha256:" + "ab" * 32, ENCLAVE_SIGNING_KEY, b"Q" * 32, SESSION, NONCE),
        wrap_info("model", "sha256:" + "ab" * 32, ENCLAVE_SIGNING_KEY, PARTY, "f" * 32, NONCE),
        wrap_info("model", "sha256:" + "ab" * 32, ENCLAVE_SIGNING_KEY, PARTY, SESSION, b"M" * 32),
        b"",
    ],
)
def test_wrong_info_refused(pair: HpkeKeyPair, other_info: bytes) -> None:
    wrapped = wrap(os.urandom(32), pair.public_bytes(), pair.suite, INFO)
    with pytest.raises(SealError, match="cannot unwrap the data key"):
        pair.unwrap(wrapped, other_info)


def test_wrong_recipient_and_tampering_refused(pair: HpkeKeyPair) -> None:
    data_key = os.urandom(32)
    wrapped = wrap(data_key, pair.public_bytes(), pair.suite, INFO)
    with pytest.raises(SealError, match="cannot unwrap") as err:
        HpkeKeyPair.generate(pair.suite).unwrap(wrapped, INFO)
    assert data_key.hex() not in str(err.value)
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(SealError, match="cannot unwrap"):
        pair.unwrap(tampered, INFO)
    with pytest.raises(SealError, match="wrapped key is"):
        pair.unwrap(wrapped[:-1], INFO)


def test_bad_inputs_refused() -> None:
    pair = HpkeKeyPair.generate()
    with pytest.raises(SealError, match="data key is 32 bytes"):
        wrap(b"short", pair.public_bytes(), DEFAULT_SUITE, INFO)
    with pytest.raises(SealError, match="suite mlkem768x25519-sha256-aes256gcm uses 1216"):
        wrap(os.urandom(32), pair.public_bytes(), HYBRID_SUITE, INFO)
    with pytest.raises(SealError, match="unknown HPKE suite"):
        HpkeKeyPair.generate("rsa")
    with pytest.raises(SealError, match="not a valid"):
        wrap(os.urandom(32), b"\x00" * 1216, HYBRID_SUITE, INFO)


def test_key_pair_repr_hides_private_key() -> None:
    pair = HpkeKeyPair.generate()
    assert pair.public_bytes().hex() not in repr(pair) and "_private" not in repr(pair)


# --- identities ------------------------------------------------------------------------------


def test_identity_keygen_load_sign(tmp_path: Path) -> None:
    identity, key_path, pub_path = generate_identity(tmp_path, "provider")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_identity(key_path)
    assert loaded.public_raw() == identity.public_raw() == load_public_raw(pub_path)
    signature = loaded.sign(approval_message("sha256:" + "1" * 64))
    assert verify_approval(identity.public_raw(), "sha256:" + "1" * 64, signature)
    assert not verify_approval(identity.public_raw(), "sha256:" + "2" * 64, signature)
    assert not verify_approval(b"\x00" * 31, "sha256:" + "1" * 64, signature)
    with pytest.raises(SealError, match="already exists"):
        generate_identity(tmp_path, "provider")
    os.chmod(key_path, 0o640)
    with pytest.raises(SealError, match="accessible by other users"):
        load_identity(key_path)


def test_identity_refuses_other_keys(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="unknown role"):
        generate_identity(tmp_path, "regulator")
    bogus = tmp_path / "x.key"
    bogus.write_bytes(b"not a key")
    os.chmod(bogus, 0o600)
    with pytest.raises(SealError, match="not an unencrypted PEM private key"):
        load_identity(bogus)


def test_cli_keygen(tmp_path: Path, capsys) -> None:
    assert aaudit_main(["keygen", "--role", "auditor", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert base64.b64encode(load_public_raw(tmp_path / "auditor.pub")).decode() in printed
    assert aaudit_main(["keygen", "--role", "auditor", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
