"""Reading inputs the way people have them: evidence raw, hex or base64; certificates PEM or DER;
public keys base64, hex or PEM; and JSON, strictly, for every JSON input the verifier reads."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from verifier.errors import ParseError, UnusableInput

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


ASSET_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def asset_digest(text: str, what: str) -> str:
    """`text` if it is an asset digest as `aaudit digest` and `aaudit seal` print it ("sha256:" and 64
    lowercase hex digits). Anything else is refused; a bare or upper-case hex digest gets the fixed
    value in the message, for the person to check and pass."""
    if ASSET_DIGEST.fullmatch(text):
        return text
    bare = text.strip().lower().removeprefix("sha256:")
    fixed = f"sha256:{bare}" if re.fullmatch(r"[0-9a-f]{64}", bare) else None
    hint = f"; did you mean {fixed}?" if fixed else ""
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise UnusableInput(f"{what} must be sha256:<64 lowercase hex digits> as `aaudit digest` prints it, "
                        f"got {shown!r}{hint}")


def host_port(text: str, flag: str, example: str, *, listen: bool = False) -> str:
    """`text` if it is HOST:PORT (an IPv6 host in brackets, e.g. [::1]:50051), else `UnusableInput`
    naming the flag and an example. The port must be given: gRPC would otherwise quietly dial
    443. Port 0 (pick a free port) is only for an address to listen on."""
    host, sep, port = text.rpartition(":")
    bracketed = len(host) > 2 and host[0] == "[" and host[-1] == "]"
    name, forbidden = (host[1:-1], "[] \t") if bracketed else (host, "[]: \t/")
    lowest = 0 if listen else 1
    if not sep or not name or any(c in name for c in forbidden) \
            or not (port.isascii() and port.isdigit() and lowest <= int(port) <= 65535):
        raise UnusableInput(f"{flag} needs HOST:PORT (e.g. {example}) with a port from {lowest} to 65535, "
                            f"got {text!r}")
    return text


MAX_JSON_DEPTH = 64  # far deeper than any format of this project; bounds every later recursive walk
_MAX_INT_DIGITS = 309  # 10**308 is about the largest float; a longer integer cannot be a metric


def _refuse(message: str) -> NoReturn:
    raise ValueError(message)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            _refuse(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        _refuse(f"integer of {len(text)} digits is beyond the range of a float")
    value = int(text)
    try:
        float(value)
    except OverflowError:
        _refuse(f"integer of {len(text)} digits is beyond the range of a float")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse(f"number {text[:40]} is beyond the range of a float")
    return value


def _constant(name: str) -> NoReturn:
    _refuse(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of a loaded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(data: bytes | str, what: str) -> Any:
    """JSON as RFC 8259 means it, and no more: duplicate keys, NaN and Infinity, numbers beyond the
    range of a float, and nesting deeper than MAX_JSON_DEPTH are refused (`ParseError`), so no two
    readers can see different values and no later step meets a value it cannot compare or walk."""
    try:
        value = json.loads(data, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float,
                           parse_constant=_constant)
    except RecursionError:
        raise ParseError(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ParseError(f"{what}: not strict JSON ({' '.join(str(exc).split())[:200]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ParseError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


KEY_TYPES = {"ed25519": Ed25519PublicKey, "x25519": X25519PublicKey}
_HEX_KEY = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


def parse_public_key(text: str | bytes, what: str, kind: str = "ed25519") -> bytes:
    """A raw 32-byte public key of `kind` as a person has it, the one reader for every key a user passes.

    Accepted: base64 of the raw key (the form this project prints everywhere: keygen, manifests,
    errors), 64 hex digits (optionally 0x-prefixed; what keygen printed before), or a PEM
    SubjectPublicKeyInfo (the `.pub` files). Anything else is refused with what to give instead.
    """
    hint = (f"{what}: not an {kind} public key; give the base64 form that "
            "`aaudit keygen` prints (44 characters), 64 hex digits, or the key's .pub file")
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError(hint) from None
    value = text.strip()
    if value.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(value.encode("ascii"))
        except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
            raise ParseError(hint) from None
        if not isinstance(key, KEY_TYPES[kind]):
            raise ParseError(f"{hint} (this PEM holds a {type(key).__name__.removesuffix('PublicKey')} key)")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if _HEX_KEY.fullmatch(value):
        return bytes.fromhex(value.removeprefix("0x"))
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(hint) from None
    if len(raw) != 32:
        raise ParseError(hint)
    return raw
