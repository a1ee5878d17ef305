"""Reading evidence and certificates the way people have them: raw, hex or base64; PEM or DER."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from pathlib import Path

from verifier.errors import UnusableInput

_HEX = re.compile(rb"^[0-9a-fA-F\s]+$")
_B64 = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UnusableInput(f"cannot read {what} {path}: {exc.strerror}") from None


def decode_blob(data: bytes) -> bytes:
    """Raw bytes, hex text (optionally 0x-prefixed) or base64 text: text that is valid hex is hex, else base64."""
    stripped = data.strip()
    if not stripped:
        raise UnusableInput("evidence file is empty")
    if stripped[:2] in (b"0x", b"0X") and _HEX.match(stripped[2:]):
        stripped = stripped[2:]  # hex as Ethereum tools and dcap-qvl's samples write it
    if _HEX.match(stripped) and len(b"".join(stripped.split())) % 2 == 0:
        return bytes.fromhex(b"".join(stripped.split()).decode())
    if _B64.match(stripped):
        compact = b"".join(stripped.split())
        try:
            if b"-" in compact or b"_" in compact:
                return base64.urlsafe_b64decode(compact + b"=" * (-len(compact) % 4))
            return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
    return data


def read_certs(data: bytes, what: str) -> list[bytes]:
    """All certificates in a PEM file (any number), or one DER certificate."""
    if b"-----BEGIN" in data:
        bodies = [body for kind, body in _PEM.findall(data) if kind == b"CERTIFICATE"]
        if not bodies:
            raise UnusableInput(f"{what}: PEM file holds no CERTIFICATE block")
        certs = []
        for i, body in enumerate(bodies):
            try:
                certs.append(base64.b64decode(b"".join(body.split()), validate=True))
            except (binascii.Error, ValueError) as exc:
                raise UnusableInput(f"{what}: CERTIFICATE block {i + 1} is not valid base64 ({exc})") from None
        return certs
    if data[:1] == b"\x30":
        return [data]
    raise UnusableInput(f"{what}: neither PEM nor DER certificate data")


def parse_time(value: str | None) -> datetime:
    """ISO 8601 verification time (a trailing Z is accepted); naive times are UTC; default now."""
    if value is None:
        return datetime.now(timezone.utc)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise UnusableInput(f"--at {value!r} is not an ISO 8601 time (e.g. 2025-01-01T00:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_hex(value: str | None, what: str, max_len: int) -> bytes | None:
    if value is None:
        return None
    try:
        out = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise UnusableInput(f"{what} {value!r} is not hex") from None
    if len(out) > max_len:
        raise UnusableInput(f"{what} is {len(out)} bytes, at most {max_len}")
    return out
