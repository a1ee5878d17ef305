"""One key encoding (issue 11): people read keys in base64 everywhere; wherever a key is passed in,
base64, hex and PEM all work, through one reader (`verifier.inputs.parse_public_key`), and anything
else is refused with a message that says what to give."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aaudit.cli import main as aaudit_main
from benchmarks.demo_assets import demo_spec_toml
from benchmarks.spec import SpecError, parse_spec
from sealing.errors import SealError
from sealing.identity import load_public_raw
from verifier.errors import ParseError
from verifier.inputs import parse_public_key

RAW = bytes([0xFF] * 31 + [0x01])  # its base64 is full of "/", which a path would fold ("//" -> "/")
B64 = base64.b64encode(RAW).decode()


def _forms(public_key) -> dict[str, str]:  # noqa: ANN001
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"base64": base64.b64encode(raw).decode(), "hex": raw.hex(), "HEX": raw.hex().upper(),
            "0x-hex": "0x" + raw.hex(), "padded": f"  {base64.b64encode(raw).decode()}\n",
            "pem": public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()}


@pytest.mark.parametrize("form", ["base64", "hex", "HEX", "0x-hex", "padded", "pem"])
def test_every_input_form_gives_the_same_key(form: str) -> None:
    ed = Ed25519PrivateKey.generate().public_key()
    x = X25519PrivateKey.generate().public_key()
    assert parse_public_key(_forms(ed)[form], "k") == ed.public_bytes_raw()
    assert parse_public_key(_forms(ed)[form].encode(), "k") == ed.public_bytes_raw()
    assert parse_public_key(_forms(x)[form], "k", "x25519") == x.public_bytes_raw()


@pytest.mark.parametrize("garbage", [
    "", "hello", B64[:-4], B64 + "AAAA", base64.b64encode(bytes(31)).decode(), "ab" * 31, "ab" * 33, "0x" + "zz" * 32,
    B64.replace("=", ""), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", b"\xff\xfe",
    "\u00e9" * 44,
])
def test_garbage_is_refused_with_what_to_give(garbage: str | bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_public_key(garbage, "--expect-auditor")
    message = str(info.value)
    assert message.startswith("--expect-auditor: not an ed25519 public key") and "base64" in message
    assert "hex" in message and ".pub" in message


def test_a_pem_of_the_wrong_kind_says_which_kind_it_holds() -> None:
    x_pem = _forms(X25519PrivateKey.generate().public_key())["pem"]
    with pytest.raises(ParseError, match="this PEM holds a X25519 key"):
        parse_public_key(x_pem, "k")
    ed_pem = _forms(Ed25519PrivateKey.generate().public_key())["pem"]
    with pytest.raises(ParseError, match="not an x25519 public key"):
        parse_public_key(ed_pem, "k", "x25519")


def test_keygen_prints_base64_and_every_form_of_it_loads_back(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert aaudit_main(["keygen", "--role", "provider", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed.startswith("provider public key (ed25519, base64): ")
    b64 = printed.rsplit(" ", 1)[1]
    raw = load_public_raw(tmp_path / "provider.pub")
    assert base64.b64decode(b64, validate=True) == raw
    for i, text in enumerate((b64, raw.hex(), (tmp_path / "provider.pub").read_text())):
        (tmp_path / f"copy{i}.pub").write_text(text + "\n")
        assert load_public_raw(tmp_path / f"copy{i}.pub") == raw      # a file holding any form
    assert load_public_raw(b64) == load_public_raw(raw.hex()) == raw  # or the key itself, inline


def test_an_inline_key_with_slashes_is_not_taken_for_a_path() -> None:
    assert "//" in B64 and load_public_raw(B64) == RAW


def test_neither_file_nor_key_says_so(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="no such file, and not a key either; give the party's .pub file"):
        load_public_raw(str(tmp_path / "auditor.pub"))
    (tmp_path / "notes.pub").write_text("my key is on the other laptop")
    with pytest.raises(ParseError, match=r"notes.pub: not an ed25519 public key"):
        load_public_raw(tmp_path / "notes.pub")
    (tmp_path / "big.pub").write_bytes(b"A" * 20000)
    with pytest.raises(SealError, match="larger than any public key file"):
        load_public_raw(tmp_path / "big.pub")


def test_the_cli_takes_a_key_inline_and_refuses_garbage_before_connecting(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    aaudit_main(["keygen", "--role", "auditor", "--out", str(tmp_path)])
    policy = tmp_path / "policy.toml"
    policy.write_text('allow_simulated = true\n[sim]\nmeasurements = ["' + "ab" * 32 + '"]\n')
    capsys.readouterr()

    def create(provider: str) -> tuple[int, str]:
        rc = aaudit_main(["auditor", "create-session", "--enclave", "127.0.0.1:1", "--policy", str(policy),
                          "--identity", str(tmp_path / "auditor.key"), "--provider", provider])
        return rc, capsys.readouterr().err

    rc, err = create("not-a-key")
    assert rc == 2 and "not-a-key: no such file, and not a key either" in err, err
    for form in ("base64", "hex"):
        rc, err = create(_forms(Ed25519PrivateKey.generate().public_key())[form])
        assert rc != 0 and "127.0.0.1:1" in err and "not a key" not in err, err  # the key passed; no enclave there


@pytest.mark.parametrize("write", [lambda raw: base64.b64encode(raw).decode(), lambda raw: raw.hex(),
                                   lambda raw: "0x" + raw.hex().upper()])
def test_samples_recipient_in_base64_or_hex_is_one_key(write) -> None:  # noqa: ANN001
    raw = X25519PrivateKey.generate().public_key().public_bytes_raw()
    spec = parse_spec(demo_spec_toml(samples_recipient=write(raw)).encode())
    assert spec.samples_recipient == base64.b64encode(raw).decode()  # the manifest shows one form


def test_samples_recipient_garbage_says_what_to_give() -> None:
    with pytest.raises(SpecError, match=r"samples_recipient: not an x25519 public key; give the base64 form"):
        parse_spec(demo_spec_toml(samples_recipient="ab" * 31).encode())
