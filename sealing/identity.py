"""Party identity keys (provider, auditor): Ed25519 keys that sign approvals of a run manifest.

`aaudit keygen --role provider --out DIR` writes `provider.key` (PKCS#8 PEM, unencrypted, mode
0600 from creation) and `provider.pub` (SubjectPublicKeyInfo PEM). The raw 32-byte public key is
what goes into manifests and reports, and a person always reads it in base64 (keygen, manifests,
errors); wherever a key is passed in, base64, hex and PEM are all accepted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from sealing.errors import SealError
from sealing.secretfile import read_secret_file, write_secret_file
from verifier.errors import ParseError
from verifier.inputs import parse_public_key

if TYPE_CHECKING:
    from sealing.keywrap import HpkeKeyPair

ROLES = ("provider", "auditor")
_MAX_PEM = 16 * 1024


@dataclass(frozen=True)
class Identity:
    """A party's signing key."""

    _key: ed25519.Ed25519PrivateKey = field(repr=False)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_raw(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _key_folder(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SealError(f"cannot create {out_dir}: {exc.strerror}") from None
    return out_dir


def generate_identity(out_dir: Path, role: str) -> tuple[Identity, Path, Path]:
    """Make a new key for `role` in `out_dir`; returns (identity, private key path, public key path)."""
    if role not in ROLES:
        raise SealError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    out_dir = _key_folder(out_dir)
    key_path, pub_path = out_dir / f"{role}.key", out_dir / f"{role}.pub"
    if pub_path.exists():
        raise SealError(f"{pub_path} already exists; remove it or choose another --out folder")
    identity = Identity(ed25519.Ed25519PrivateKey.generate())
    pem = identity._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(key_path, pem)
    try:
        with open(pub_path, "xb") as handle:
            handle.write(identity.public_pem())
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise SealError(f"cannot write {pub_path}: {exc.strerror}") from None
    return identity, key_path, pub_path


def _load_private(path: Path, kind: type, what: str) -> Any:
    """A PKCS8 PEM private key of `kind` from a file only its owner can read."""
    try:
        data = read_secret_file(Path(path), _MAX_PEM)
    except IsADirectoryError:
        raise SealError(f"key file {path} is a folder; give the key file written by `aaudit keygen`") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SealError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, kind):
        raise SealError(f"{path}: expected {what}, found {type(key).__name__}")
    return key


def load_identity(path: Path) -> Identity:
    """Load a private key written by `generate_identity` (refused if others can read it)."""
    return Identity(_load_private(path, ed25519.Ed25519PrivateKey, "an Ed25519 key"))


def load_public_raw(source: str | Path) -> bytes:
    """A party's raw 32-byte public key from its `.pub` file (PEM, or base64 / hex text), or given
    inline as base64 or hex (what `aaudit keygen` prints): one reader, `verifier.inputs.parse_public_key`."""
    try:
        with open(source, "rb") as handle:
            data = handle.read(_MAX_PEM + 1)
    except (FileNotFoundError, NotADirectoryError):
        try:
            return parse_public_key(str(source), "key")
        except ParseError:
            raise SealError(f"{str(source)[:100]}: no such file, and not a key either; give the party's .pub file "
                            "or the base64 key `aaudit keygen` printed") from None
    except OSError as exc:
        raise SealError(f"{source}: {exc.strerror}") from None
    if len(data) > _MAX_PEM:
        raise SealError(f"{source}: larger than any public key file ({_MAX_PEM} bytes)")
    return parse_public_key(data, str(source))


def generate_samples_key(out_dir: Path, role: str = "auditor") -> tuple[str, Path, Path]:
    """An HPKE X25519 key that per-sample records are encrypted to (`output = "aggregate+samples"`).

    Writes `<role>.samples.key` (PKCS8 PEM, 0600) and `<role>.samples.pub` (base64 raw public key,
    the value of the spec's `samples_recipient`); returns (that base64 value, key path, pub path).
    """
    from sealing.keywrap import HpkeKeyPair

    out_dir = _key_folder(out_dir)
    key_path, pub_path = out_dir / f"{role}.samples.key", out_dir / f"{role}.samples.pub"
    if pub_path.exists():
        raise SealError(f"{pub_path} already exists; remove it or choose another --out folder")
    pair = HpkeKeyPair.generate()
    private = x25519.X25519PrivateKey.from_private_bytes(pair.private_bytes())
    write_secret_file(key_path, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public_b64 = base64.b64encode(pair.public_bytes()).decode()
    try:
        with open(pub_path, "x", encoding="ascii") as handle:
            handle.write(public_b64 + "\n")
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise SealError(f"cannot write {pub_path}: {exc.strerror}") from None
    return public_b64, key_path, pub_path


def load_samples_key(path: Path) -> "HpkeKeyPair":
    """Load a samples key written by `generate_samples_key` (refused if others can read it)."""
    from sealing.keywrap import HpkeKeyPair

    key = _load_private(path, x25519.X25519PrivateKey, "an X25519 samples key")
    return HpkeKeyPair.from_private_bytes(key.private_bytes_raw())
