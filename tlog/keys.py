"""The log's Ed25519 signing key: made on first start, kept beside the database, mode 0600.

The key file uses the signer-key format of Go's golang.org/x/mod/sumdb/note, which C2SP tools
share: `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>`. The key's name is the
log's origin, so the origin travels with the key and cannot drift from it.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from verifier.checkpoint import ED25519, check_key_name, format_verifier_key, key_id, signature_line
from verifier.errors import ParseError, UnusableInput

_PREFIX = "PRIVATE+KEY+"


@dataclass(frozen=True)
class LogSigner:
    """Signs checkpoint notes. `verifier_key` is what verifiers put in their policy."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def verifier_key(self) -> str:
        return format_verifier_key(self.name, self.public_key)

    def sign_note(self, text: str) -> str:
        """The signed note: text, blank line, one signature line (signed-note §Format)."""
        if not text.endswith("\n"):
            raise ValueError("note text must end in a newline")
        return text + "\n" + signature_line(self.name, self.key_id, self.private_key.sign(text.encode("utf-8")))

    def __repr__(self) -> str:  # never print the private key
        return f"LogSigner({self.verifier_key})"


def generate(name: str) -> LogSigner:
    return LogSigner(check_key_name(name, "log origin"), Ed25519PrivateKey.generate())


def format_signer_key(signer: LogSigner) -> str:
    seed = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    b64 = base64.b64encode(bytes([ED25519]) + seed).decode("ascii")
    return f"{_PREFIX}{signer.name}+{signer.key_id.hex()}+{b64}"


def parse_signer_key(text: str) -> LogSigner:
    if not text.startswith(_PREFIX):
        raise ParseError("log key file: expected PRIVATE+KEY+name+keyid+base64")
    parts = text[len(_PREFIX):].strip().split("+", 2)
    if len(parts) != 3:
        raise ParseError("log key file: expected PRIVATE+KEY+name+keyid+base64")
    name, hex_id, b64 = parts
    check_key_name(name, "log key file: name")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("log key file: key material is not valid base64") from None
    if len(raw) != 33 or raw[0] != ED25519:
        raise ParseError("log key file: expected an Ed25519 seed (type 0x01, 32 bytes)")
    signer = LogSigner(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
    if signer.key_id.hex() != hex_id:
        raise ParseError("log key file: the key ID does not match the key; the file is corrupted")
    return signer


def key_path(db_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(db_path)}.key")


def default_origin() -> str:
    return f"{socket.gethostname()}/aaudit-log"


def load_or_create(db_path: str | os.PathLike[str], origin: str | None = None) -> LogSigner:
    """The log key beside `db_path` (`<db>.key`), made on first use with `origin` as its name.

    Refuses a key file that others can read, and an `origin` that differs from the stored one
    (changing the origin would be a different log).
    """
    path = key_path(db_path)
    if path.exists():
        return _load(path, origin)
    signer = generate(origin or default_origin())
    # Written under a temporary name and linked into place: a crash never leaves a half-written
    # key, and of two processes starting at once exactly one key wins (link fails if it exists).
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    except OSError as exc:
        raise UnusableInput(f"cannot create log key {path}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(format_signer_key(signer) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return _load(path, origin)
    except OSError as exc:
        raise UnusableInput(f"cannot create log key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return signer


def _load(path: Path, origin: str | None) -> LogSigner:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnusableInput(f"cannot read log key {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UnusableInput(f"log key {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
                            f"run `chmod 600 {path}`")
    signer = parse_signer_key(text)
    if origin is not None and origin != signer.name:
        raise UnusableInput(f"--origin {origin!r} differs from the origin {signer.name!r} of the existing log key "
                            f"{path}; a log keeps its origin for life")
    return signer
