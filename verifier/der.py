"""Just enough DER to read the vendor extensions `cryptography` leaves opaque.

AMD puts TCB levels in VCEK/VLEK extensions as DER INTEGERs; NVIDIA puts the firmware ID in a
TCG DICE extension. Every length is checked; anything malformed raises `DerError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from verifier.errors import ParseError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30


class DerError(ParseError):
    """Bytes are not the DER structure the caller expected (unusable input unless a caller makes it a
    failed step, as the certificate-extension checks do)."""


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """One TLV at `offset` (single-byte tags only); returns it and the offset after it."""
    if offset + 2 > len(data):
        raise DerError("truncated DER header")
    tag, first = data[offset], data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("non-minimal DER length")
        pos += n
    if pos + length > len(data):
        raise DerError(f"DER value of {length} bytes runs past the end ({len(data) - pos} left)")
    return Tlv(tag, data[pos:pos + length]), pos + length


def read_one(data: bytes, tag: int) -> bytes:
    """The value of exactly one TLV with `tag` filling all of `data`."""
    tlv, end = read_tlv(data)
    if tlv.tag != tag:
        raise DerError(f"expected DER tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    if end != len(data):
        raise DerError(f"{len(data) - end} trailing byte(s) after DER value")
    return tlv.value


def children(value: bytes) -> list[Tlv]:
    """The TLVs inside a constructed value, in order."""
    out = []
    pos = 0
    while pos < len(value):
        tlv, pos = read_tlv(value, pos)
        out.append(tlv)
    return out


def unsigned_integer(data: bytes) -> int:
    """A whole DER INTEGER that must be non-negative (AMD SPL values, 0..255 in practice)."""
    value = read_one(data, TAG_INTEGER)
    if not value:
        raise DerError("empty DER INTEGER")
    if value[0] & 0x80:
        raise DerError("negative DER INTEGER")
    if len(value) > 1 and value[0] == 0 and not value[1] & 0x80:
        raise DerError("non-minimal DER INTEGER")
    return int.from_bytes(value, "big")
