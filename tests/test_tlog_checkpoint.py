"""C2SP signed notes and checkpoints (verifier/checkpoint.py) and the log key (tlog/keys.py).

The reference vector is golang.org/x/mod/sumdb/note's PeterNeumann key and note: Ed25519 is
deterministic, so signing that text with that key must reproduce the published note exactly.
"""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tlog import keys
from verifier.checkpoint import (
    format_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
    signature_line,
    verify_checkpoint,
    verify_note,
)
from verifier.errors import ParseError, UnusableInput, VerificationError
from verifier.merkle import EMPTY_ROOT

GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_go_reference_vector() -> None:
    signer = keys.parse_signer_key(GO_SIGNER)
    assert signer.verifier_key == GO_VERIFIER
    assert keys.format_signer_key(signer) == GO_SIGNER
    assert signer.sign_note(GO_TEXT) == GO_NOTE
    assert verify_note(GO_NOTE, parse_verifier_key(GO_VERIFIER)) == GO_TEXT
    with pytest.raises(VerificationError, match="does not verify"):
        verify_note(GO_NOTE.replace("cryptography", "cryptographY"), parse_verifier_key(GO_VERIFIER))


def test_verifier_key_strictness() -> None:
    v = parse_verifier_key(GO_VERIFIER)
    assert (v.name, v.key_id.hex(), str(v)) == ("PeterNeumann", "c74f20a3", GO_VERIFIER)
    bad = [
        GO_VERIFIER.replace("c74f20a3", "c74f20a4"),      # key ID does not match the key
        GO_VERIFIER.replace("c74f20a3", "C74F20A3"),      # not lowercase hex
        GO_VERIFIER[:-4],                                 # truncated key material
        GO_VERIFIER.replace("+ARpc", "+Alpc"),            # wrong signature type byte
        "PeterNeumann+c74f20a3",                          # missing key
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in the name
        "",
    ]
    for k in bad:
        with pytest.raises(ParseError):
            parse_verifier_key(k)


def _other_signer(name: str) -> keys.LogSigner:
    return keys.LogSigner(name, Ed25519PrivateKey.generate())


def test_unknown_signatures_are_ignored_but_a_known_bad_one_rejects() -> None:
    log = _other_signer("example.com/log")
    witness = _other_signer("witness.example/w1")
    text = format_checkpoint("example.com/log", 10, EMPTY_ROOT)
    cosigned = log.sign_note(text) + witness.sign_note(text).split("\n\n", 1)[1]
    assert len(parse_note(cosigned).signatures) == 2
    assert verify_checkpoint(cosigned, log.verifier_key).size == 10
    with pytest.raises(VerificationError, match="not the log key's name"):
        verify_checkpoint(cosigned, witness.verifier_key)   # a witness is not the log
    impostor = _other_signer("example.com/log")            # same name, different key: ignored, so no signature
    with pytest.raises(VerificationError, match="not signed by the trusted log key"):
        verify_checkpoint(log.sign_note(text), impostor.verifier_key)
    v = parse_verifier_key(log.verifier_key)
    forged = text + "\n" + signature_line(v.name, v.key_id, b"\x00" * 64)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_checkpoint(forged, log.verifier_key)


def test_checkpoint_round_trip_and_strict_body() -> None:
    root = bytes(range(32))
    text = format_checkpoint("example.com/log", 20852163, root)
    assert text == f"example.com/log\n20852163\n{base64.b64encode(root).decode()}\n"
    assert parse_checkpoint(text).size == 20852163
    assert parse_checkpoint(text + "ext line\n").extensions == ("ext line",)
    b64root = base64.b64encode(root).decode()
    for body in [
        f"example.com/log\n020\n{b64root}\n",          # leading zero
        f"example.com/log\n-1\n{b64root}\n",
        f"example.com/log\n20\n{b64root}",             # no final newline
        "example.com/log\n20\n",                      # no root
        f"\n20\n{b64root}\n",                          # empty origin
        f"example.com/log\n20\n{b64root[:-4]}\n",      # 29-byte root
        f"example.com/log\n20\n{b64root}!\n",          # not base64
        f"example.com/log\n20\n{b64root}\n\nx\n",      # empty extension line
    ]:
        with pytest.raises(ParseError):
            parse_checkpoint(body)


def test_malformed_notes_are_parse_errors() -> None:
    signed = _other_signer("example.com/log").sign_note(format_checkpoint("example.com/log", 1, EMPTY_ROOT))
    sig_line = signed.split("\n\n", 1)[1]
    for note in [
        signed.replace("\n\n", "\n"),                   # no blank line before the signatures
        signed[:-1],                                    # signature line without newline
        signed.replace("\u2014", "-"),                  # hyphen instead of em dash
        signed.replace("example.com/log\n1", "example.com/log\r\n1"),   # control character
        signed.replace("\u2014 ", "\u2014  "),          # empty key name
        "example.com/log\n1\nAAAA\n\n\u2014 example.com/log AAAA\n",    # signature shorter than key ID + 1
        format_checkpoint("example.com/log", 1, EMPTY_ROOT) + "\n" + sig_line * 101,
        "x" * 70000,
    ]:
        with pytest.raises(ParseError):
            parse_note(note)


def test_log_key_is_created_once_private_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "log.db"
    first = keys.load_or_create(db, "example.com/log")
    path = keys.key_path(db)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.name == "example.com/log"
    assert "PRIVATE" not in repr(first)
    again = keys.load_or_create(db)
    assert again.verifier_key == first.verifier_key
    with pytest.raises(UnusableInput, match="keeps its origin"):
        keys.load_or_create(db, "other.example/log")
    os.chmod(path, 0o644)
    with pytest.raises(UnusableInput, match="chmod 600"):
        keys.load_or_create(db)
    os.chmod(path, 0o600)
    path.write_text(path.read_text().replace("+", "-", 3))
    with pytest.raises(ParseError):
        keys.load_or_create(db)
    with pytest.raises(ParseError):
        keys.load_or_create(tmp_path / "bad.db", "has space/log")
