"""The SEV-SNP certificate table a host hands the guest with an extended report.

Both the configfs-tsm `auxblob` (provider `sev_guest`) and the `/dev/sev-guest` SNP_GET_EXT_REPORT
certificate buffer carry the table of the GHCB specification (AMD 56421, section 4.1.8.1,
MSG_REPORT_REQ): entries of a 16-byte GUID, a little-endian u32 offset and a u32 length, ended by
an all-zero entry; offsets are from the start of the table. The GUIDs are written in RFC 4122
byte order (as go-sev-guest, virtee/sev and AMD's sev-guest tools read them).

The host is not trusted: every offset and length is checked, each certificate must be exactly one
DER certificate structure (or one PEM block, as some hosts store them), and a GUID may appear only
once.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from dataclasses import dataclass

from verifier.errors import ParseError

ENTRY_LEN = 24
# GUIDs of the GHCB certificate table (virtee/sev `CertType`, go-sev-guest `abi`).
CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
}
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True)
class TableCert:
    name: str  # VCEK, VLEK, ASK, ARK
    der: bytes


def _der_length(data: bytes, at: int = 0) -> tuple[int, int] | None:
    """(header length, content length) of the DER SEQUENCE at `data[at:]`, or None if it is not one."""
    if len(data) < at + 2 or data[at] != 0x30:
        return None
    first = data[at + 1]
    if first < 0x80:
        return 2, first
    n = first & 0x7F
    if n == 0 or n > 3 or len(data) < at + 2 + n:
        return None
    return 2 + n, int.from_bytes(data[at + 2:at + 2 + n], "big")


def _pem_body(name: str, raw: bytes) -> bytes:
    """The DER inside `raw`, which starts with a PEM BEGIN line and must hold exactly one block."""
    blocks = raw.count(_PEM_BEGIN)
    if blocks != 1:
        raise ParseError(f"certificate table: {name} entry holds {blocks} PEM certificates, expected 1")
    body, sep, rest = raw[len(_PEM_BEGIN):].partition(_PEM_END)
    if not sep or rest.strip(b"\r\n\x00"):
        raise ParseError(f"certificate table: {name} entry is not one PEM certificate")
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"certificate table: {name} entry has invalid base64 in its PEM body") from None


def _certificate(name: str, raw: bytes) -> bytes:
    """The DER bytes of the single certificate in `raw` (DER, or one PEM block).

    The check is structural (one DER SEQUENCE spanning the entry exactly, opening with the
    tbsCertificate SEQUENCE): the verifier parses and checks the certificate itself, and AMD's
    VCEKs carry serial number 0, which some X.509 libraries are starting to refuse.
    """
    text = raw.lstrip()
    der = _pem_body(name, text) if text.startswith(_PEM_BEGIN) else raw
    outer = _der_length(der)
    inner = _der_length(der, outer[0]) if outer else None
    if outer is None or inner is None or sum(outer) != len(der) or sum(inner) > outer[1]:
        total = f" (DER length says {sum(outer)})" if outer and sum(outer) != len(der) else ""
        raise ParseError(f"certificate table: {name} entry ({len(der)} bytes) is not exactly one DER "
                         f"X.509 certificate{total}")
    return der


def parse_cert_table(blob: bytes) -> list[TableCert]:
    """The VCEK/VLEK/ASK/ARK certificates of a GHCB certificate table, in table order.

    An empty blob means the host supplied no certificates. Entries with other GUIDs (for example
    a CRL) are bounds-checked and skipped: they are not certificates the verifier uses.
    """
    if not blob:
        return []
    entries: list[tuple[bytes, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_LEN > len(blob):
            raise ParseError(f"certificate table: no all-zero terminating entry within {len(blob)} bytes")
        guid = blob[pos:pos + 16]
        offset, length = struct.unpack_from("<II", blob, pos + 16)
        pos += ENTRY_LEN
        if guid == bytes(16):
            if offset or length:
                raise ParseError(f"certificate table: terminating entry has offset {offset} / length {length}, "
                                 "expected zeros")
            break
        entries.append((guid, offset, length))
    table_end = pos
    seen: set[bytes] = set()
    out: list[TableCert] = []
    for i, (guid, offset, length) in enumerate(entries):
        name = CERT_GUIDS.get(guid, str(uuid.UUID(bytes=guid)))
        if guid in seen:
            raise ParseError(f"certificate table: GUID {name} appears more than once")
        seen.add(guid)
        if length == 0:
            raise ParseError(f"certificate table: entry {i} ({name}) has length 0")
        if offset < table_end or offset + length > len(blob):
            raise ParseError(f"certificate table: entry {i} ({name}) spans bytes {offset}..{offset + length}, "
                             f"outside the certificate area {table_end}..{len(blob)}")
        if guid in CERT_GUIDS:
            out.append(TableCert(name, _certificate(name, blob[offset:offset + length])))
    return out
