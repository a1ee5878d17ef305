"""DSSE signing and the report-data layout: each input changes the binding, each byte matters."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
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


# --- keyid: what a stock DSSE library computes (docs/FORMATS.md, "DSSE keyid") ---------------


def test_a_stock_dsse_library_verifies_our_bundle_and_computes_our_keyid() -> None:
    """securesystemslib's Envelope.verify matches signatures to keys by keyid; told only the enclave's
    public key (SSlibKey.from_crypto, the default keyid), it verifies a bundle's envelope as is."""
    import base64
    import json

    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    from tests.bundle_factory import make_bundle

    bundle = make_bundle().bundle
    raw = base64.b64decode(bundle["enclave"]["signingKey"]["public"])

    def envelope(**change: str) -> Envelope:  # from_dict rewrites the dict it is given: a fresh copy each time
        return Envelope.from_dict(json.loads(json.dumps({**bundle["envelope"], **change})))

    key = SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(raw))
    assert key.keyid == dsse.keyid(raw) == bundle["envelope"]["signatures"][0]["keyid"]
    assert set(envelope().verify([key], 1)) == {key.keyid}
    with pytest.raises(VerificationError):
        envelope(payload=base64.b64encode(b'{"forged":1}').decode()).verify([key], 1)
    other = SSlibKey.from_crypto(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VerificationError):
        envelope().verify([other], 1)


def test_keyid_is_the_documented_hash() -> None:
    """An implementation without securesystemslib reproduces it from the FORMATS.md sentence."""
    import hashlib

    raw = bytes(range(32))
    text = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % raw.hex()
    assert dsse.keyid(raw) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("keyid, ok", [
    ("", True), ("legacy", True), ("stock", True), ("other", False), ("STOCK", False),
])
def test_the_verifier_accepts_our_keyids_old_and_new_and_no_other(keyid: str, ok: bool) -> None:
    """Bundles signed before the stock keyid carry SHA-256 hex of the raw key; they keep verifying."""
    import hashlib

    key = Ed25519PrivateKey.generate()
    raw = _raw(key)
    kid = {"": "", "legacy": hashlib.sha256(raw).hexdigest(), "stock": dsse.keyid(raw),
           "other": dsse.keyid(os.urandom(32)), "STOCK": dsse.keyid(raw).upper()}[keyid]
    env = dsse.sign(key, dsse.IN_TOTO_PAYLOAD_TYPE, b"{}")
    relabelled = dsse.Envelope(env.payload_type, env.payload, ((kid, env.signatures[0][1]),))
    assert dsse.verify(relabelled, raw) is ok
