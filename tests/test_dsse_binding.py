"""DSSE signing and the report-data layout: each input changes the binding, each byte matters."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier import dsse
from verifier.binding import gpu_nonce, key_binding, statement_binding, wrap_info


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_pae_matches_the_dsse_spec_example() -> None:
    # From secure-systems-lab/dsse protocol.md: PAE("http://example.com/HelloWorld", "hello world")
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_sign_verify_and_tamper() -> None:
    key = Ed25519PrivateKey.generate()
    env = dsse.sign(key, dsse.IN_TOTO_PAYLOAD_TYPE, b'{"a":1}')
    assert dsse.verify(dsse.Envelope.from_json(env.to_json()), _raw(key))
    assert not dsse.verify(dsse.Envelope(env.payload_type, b'{"a":2}', env.signatures), _raw(key))
    assert not dsse.verify(dsse.Envelope("text/plain", env.payload, env.signatures), _raw(key))
    assert not dsse.verify(env, _raw(Ed25519PrivateKey.generate()))


def test_bindings_depend_on_every_input() -> None:
    s, h, n = os.urandom(32), os.urandom(32), os.urandom(32)
    t = os.urandom(91)
    base = key_binding(s, "suite", h, t, n)
    assert len(base) == 64
    assert base != key_binding(s, "suite", h, t, os.urandom(32))
    assert base != key_binding(os.urandom(32), "suite", h, t, n)
    assert base != key_binding(s, "other", h, t, n)
    assert base != key_binding(s, "suite", os.urandom(32), t, n)
    assert base != key_binding(s, "suite", h, os.urandom(91), n), "the TLS key is bound"
    assert base != key_binding(s, "suite", h, b"", n)
    assert statement_binding(s, b"x") != statement_binding(s, b"y") and len(statement_binding(s, b"x")) == 64
    assert gpu_nonce(base) != gpu_nonce(key_binding(s, "suite", h, t, os.urandom(32)))
    p, sid = os.urandom(32), "ab" * 16
    assert wrap_info("model", "sha256:1", s, p, sid, n) != wrap_info("dataset", "sha256:1", s, p, sid, n)
    with pytest.raises(ValueError):
        key_binding(s, "suite", h, t, b"short")


def test_party_messages_are_domain_separated_and_length_prefixed() -> None:
    """A signature for one action never stands for another, and no field can bleed into the next."""
    from verifier.binding import create_message, job_message, join_message, run_message, upload_message

    e, sid, n = os.urandom(32), "ab" * 16, os.urandom(32)
    messages = [
        create_message(e, n, b"p" * 32, b"a" * 32),
        join_message(e, sid, n, "provider"),
        upload_message(e, sid, "spec", "sha256:1", b"hdr", b"wrapped", n),
        run_message(e, sid, "sha256:1", n),
        job_message("cancel", e, sid, "sha256:1"),
        job_message("close", e, sid, "sha256:1"),
    ]
    assert len(set(messages)) == len(messages)
    assert all(m.startswith(b"attestable-audits/v1/") for m in messages)
    assert join_message(e, sid, n, "provider") != join_message(os.urandom(32), sid, n, "provider")
    assert upload_message(e, sid, "spec", "sha256:1", b"hdr", b"wrapped", n) != \
        upload_message(e, sid, "spec", "sha256:1", b"hd", b"rwrapped", n)
    with pytest.raises(ValueError):
        job_message("approve", e, sid, "sha256:1")
