"""The Upload stream's chunk parts on the wire without the protobuf runtime's copies.

An `UploadPart` holding only `chunk` (field 2, length-delimited) is the byte 0x12, the chunk's length
as a varint, and the chunk. The protobuf runtime copies a 1 MiB chunk into the message and again when
serializing it on the client, and twice more when parsing and reading `.chunk` on the enclave: about a
quarter of an upload's CPU on a small machine (perf/upload_speed.py). These two functions write and
read exactly that shape, and hand everything else to the runtime, so what crosses the wire is the same
`UploadPart` any protobuf client sends and reads.
"""

from __future__ import annotations

from protos import enclave_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Enclave"].full_name
METHOD = f"/{SERVICE}/Upload"  # the RPC these (de)serializers replace the generated ones for
_CHUNK_TAG = 0x12  # field 2 (`chunk`), wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def chunk_part(chunk: bytes) -> bytes:
    """`UploadPart(chunk=chunk)`, serialized: what the client sends for each sealed chunk."""
    return bytes((_CHUNK_TAG,)) + _varint(len(chunk)) + chunk


def serialize_part(part: pb.UploadPart | bytes) -> bytes:
    """The client's request serializer: a part made by `chunk_part` as it is, any other by the runtime."""
    return part if isinstance(part, bytes) else part.SerializeToString()


def parse_part(data: bytes) -> pb.UploadPart | memoryview:
    """The enclave's request deserializer: a view of the chunk when `data` is exactly what `chunk_part`
    writes (one `chunk` field, its length in the shortest varint), else the message as the protobuf
    runtime parses it or refuses it (a header, or any other encoding of a chunk part: the runtime
    decides, so both answers agree on every input)."""
    if len(data) > 1 and data[0] == _CHUNK_TAG:
        length, shift = 0, 0
        for i in range(1, min(len(data), 6)):  # 5 varint bytes: lengths up to 32 GiB, past any message limit
            length |= (data[i] & 0x7F) << shift
            shift += 7
            if not data[i] & 0x80:
                if i + 1 + length == len(data) and data[1:i + 1] == _varint(length):
                    return memoryview(data)[i + 1:]
                break
    return pb.UploadPart.FromString(data)
