"""C2SP signed notes (c2sp.org/signed-note) and transparency-log checkpoints (c2sp.org/tlog-checkpoint).

A checkpoint is the log's signed statement "my tree of `size` leaves has root `root`". The text
is only believed once a signature by a key the verifier already trusts has been checked, so the
parser is strict (the layout below, nothing else) and verification names what did not match.

    example.com/log\\n          <- origin (= the log key's name)
    42\\n                       <- tree size, decimal, no leading zeros
    <base64 root>\\n            <- RFC 9162 root hash
    \\n                         <- blank line
    — example.com/log <base64(key ID || Ed25519 signature)>\\n

Only Ed25519 (signature type 0x01) is supported; signatures by other keys are ignored, as the
spec requires (witness cosignatures ride along untouched).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verifier.errors import ParseError, VerificationError

ED25519 = 0x01
KEY_ID_SIZE = 4
ROOT_SIZE = 32
SIG_PREFIX = "\u2014 "              # em dash, space
MAX_NOTE_BYTES = 64 * 1024          # a checkpoint with 100 cosignatures is well under 16 KiB
MAX_SIGNATURES = 100                # the spec asks verifiers to bound this; Go's note package uses 100
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")
_SPACE = re.compile(r"\s")


def check_key_name(name: str, what: str = "key name") -> str:
    """Key names are non-empty, with no Unicode spaces and no '+' (signed-note §Format)."""
    if not name or _SPACE.search(name) or "+" in name or any(ord(c) < 0x20 for c in name):
        raise ParseError(f"{what} {name!r} is not a valid note key name (non-empty, no spaces, no '+')")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], the Ed25519 key ID of signed-note."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519]) + public_key).digest()[:KEY_ID_SIZE]


def format_verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key string `name+hex(key ID)+base64(0x01 || public key)` that policies carry."""
    check_key_name(name)
    b64 = base64.b64encode(bytes([ED25519]) + public_key).decode("ascii")
    return f"{name}+{key_id(name, public_key).hex()}+{b64}"


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key, parsed from its verifier key string."""

    name: str
    key_id: bytes
    public_key: bytes

    def __str__(self) -> str:
        return format_verifier_key(self.name, self.public_key)


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse `name+hex8+base64(0x01||key)`; the key ID must match the key, so typos are caught."""
    if not isinstance(text, str):
        raise ParseError("log key: expected a verifier key string name+keyid+base64")
    parts = text.strip().split("+", 2)  # the base64 part may itself contain '+'
    if len(parts) != 3:
        raise ParseError(f"log key {text!r}: expected name+keyid+base64(0x01||public key)")
    name, hex_id, b64 = parts
    check_key_name(name, "log key name")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise ParseError(f"log key {name}: key ID {hex_id!r} is not 8 lowercase hex digits")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"log key {name}: key material is not valid base64") from None
    if len(raw) != 33 or raw[0] != ED25519:
        raise ParseError(f"log key {name}: expected an Ed25519 key (type 0x01 and 32 bytes), got "
                         f"{len(raw)} bytes of type 0x{raw[0] if raw else 0:02x}")
    public = raw[1:]
    if key_id(name, public).hex() != hex_id:
        raise ParseError(f"log key {name}: key ID {hex_id} does not match the key (expected "
                         f"{key_id(name, public).hex()}); the key string is corrupted")
    return NoteVerifier(name, bytes.fromhex(hex_id), public)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A note split into its text (ending in newline) and its signature lines, not yet verified."""

    text: str
    signatures: tuple[NoteSignature, ...]


def signature_line(name: str, kid: bytes, signature: bytes) -> str:
    return f"{SIG_PREFIX}{name} {base64.b64encode(kid + signature).decode('ascii')}\n"


def parse_note(note: str) -> SignedNote:
    """Split a signed note strictly (signed-note §Format); raises ParseError naming the defect."""
    if not isinstance(note, str):
        raise ParseError("checkpoint: expected the signed note as text")
    if len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise ParseError(f"checkpoint: note is larger than {MAX_NOTE_BYTES} bytes")
    bad = next((c for c in note if ord(c) < 0x20 and c != "\n"), None)
    if bad is not None:
        raise ParseError(f"checkpoint: note contains control character U+{ord(bad):04X}")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError("checkpoint: note is not valid UTF-8") from None
    split = note.rfind("\n\n")
    if split < 0:
        raise ParseError("checkpoint: no blank line between the note text and its signatures")
    text, block = note[: split + 1], note[split + 2:]
    if not block or not block.endswith("\n"):
        raise ParseError("checkpoint: the signature block must hold signature lines, each ending in newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ParseError(f"checkpoint: more than {MAX_SIGNATURES} signatures")
    sigs = []
    for i, line in enumerate(lines, 1):
        if not line.startswith(SIG_PREFIX):
            raise ParseError(f"checkpoint: signature line {i} does not start with an em dash and a space")
        name, sep, b64 = line[len(SIG_PREFIX):].partition(" ")
        if not sep or not b64:
            raise ParseError(f"checkpoint: signature line {i} is not '— <name> <base64>'")
        check_key_name(name, f"checkpoint: signature line {i}: key name")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ParseError(f"checkpoint: signature line {i} ({name}) is not valid base64") from None
        if len(raw) <= KEY_ID_SIZE:
            raise ParseError(f"checkpoint: signature line {i} ({name}) is too short to hold a key ID and a signature")
        sigs.append(NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:]))
    return SignedNote(text, tuple(sigs))


def verify_note(note: str, verifier: NoteVerifier) -> str:
    """The note's text once a signature by `verifier` checks out; VerificationError otherwise.

    Signatures by other keys are ignored (signed-note: "verifiers MUST ignore signatures from
    unknown keys"); a signature that claims to be by `verifier` and fails rejects the note.
    """
    parsed = parse_note(note)
    mine = [s for s in parsed.signatures if s.name == verifier.name and s.key_id == verifier.key_id]
    if not mine:
        names = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in parsed.signatures)
        raise VerificationError(f"checkpoint is not signed by the trusted log key {verifier.name} "
                                f"({verifier.key_id.hex()}); it is signed by: {names}")
    public = Ed25519PublicKey.from_public_bytes(verifier.public_key)
    for s in mine:
        try:
            public.verify(s.signature, parsed.text.encode("utf-8"))
        except InvalidSignature:
            raise VerificationError(f"checkpoint signature by {verifier.name} ({verifier.key_id.hex()}) "
                                    "does not verify: the checkpoint text was altered or forged") from None
    return parsed.text


@dataclass(frozen=True)
class Checkpoint:
    """The body of a checkpoint: which log, how many leaves, which root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    check_key_name(origin, "origin")
    if size < 0 or len(root) != ROOT_SIZE:
        raise ValueError("checkpoint needs a non-negative size and a 32-byte root")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (tlog-checkpoint §Note text); raises ParseError."""
    if not text.endswith("\n"):
        raise ParseError("checkpoint: note text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ParseError(f"checkpoint: expected origin, size and root lines, got {len(lines)} line(s)")
    origin, size_s, root_s, *ext = lines
    if not origin:
        raise ParseError("checkpoint: empty origin line")
    if not _SIZE.match(size_s) or int(size_s) >= 1 << 63:
        raise ParseError(f"checkpoint: tree size {size_s!r} is not a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("checkpoint: root hash line is not valid base64") from None
    if len(root) != ROOT_SIZE:
        raise ParseError(f"checkpoint: root hash is {len(root)} bytes, expected {ROOT_SIZE} (SHA-256)")
    if any(not e for e in ext):
        raise ParseError("checkpoint: empty extension line")
    return Checkpoint(origin, int(size_s), root, tuple(ext))


def verify_checkpoint(note: str, log_key: str | NoteVerifier) -> Checkpoint:
    """Verify a signed checkpoint against a trusted log key; its origin must be the key's name."""
    verifier = parse_verifier_key(log_key) if isinstance(log_key, str) else log_key
    cp = parse_checkpoint(verify_note(note, verifier))
    if cp.origin != verifier.name:
        raise VerificationError(f"checkpoint origin {cp.origin!r} is not the log key's name {verifier.name!r}: "
                                "the key vouches for a different log")
    return cp
