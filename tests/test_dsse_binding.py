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
    base = key_binding(s, "suite", h, n)
    assert len(base) == 64
    assert base != key_binding(s, "suite", h, os.urandom(32))
    assert base != key_binding(os.urandom(32), "suite", h, n)
    assert base != key_binding(s, "other", h, n)
    assert base != key_binding(s, "suite", os.urandom(32), n)
    assert statement_binding(s, b"x") != statement_binding(s, b"y") and len(statement_binding(s, b"x")) == 64
    assert gpu_nonce(base) != gpu_nonce(key_binding(s, "suite", h, os.urandom(32)))
    assert wrap_info("model", "sha256:1", s) != wrap_info("dataset", "sha256:1", s)
    with pytest.raises(ValueError):
        key_binding(s, "suite", h, b"short")
