"""Upload chunk parts written and read without the protobuf runtime (protos.upload_wire): checked against the
runtime on every shape, and the enclave's answer to each shape over real gRPC."""

from __future__ import annotations

import os

import grpc
import pytest
from e2e_helpers import RunningEnclave, make_parties, open_session

from aaudit.client import EnclaveError
from protos import enclave_pb2 as pb
from protos import upload_wire


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, (1 << 20) + 16, 5 << 20])
def test_a_chunk_part_is_the_runtimes_encoding_and_reads_back(size: int) -> None:
    chunk = os.urandom(size)
    wire = upload_wire.chunk_part(chunk)
    assert wire == pb.UploadPart(chunk=chunk).SerializeToString()
    part = upload_wire.parse_part(wire)
    assert isinstance(part, memoryview) and part == chunk
    assert upload_wire.serialize_part(wire) is wire


def _varint_padded(n: int, extra: int) -> bytes:
    """`n` as a varint with `extra` redundant continuation bytes: valid protobuf, not the shortest form."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | 0x80)
        n >>= 7
        if not n:
            break
    out += b"\x80" * extra
    out[-1] &= 0x7F
    return bytes(out)


HEADER = pb.UploadPart(header=pb.UploadHeader(kind="model", digest="sha256:" + "ab" * 32)).SerializeToString()
ODD_SHAPES = {
    "non-minimal length": b"\x12" + _varint_padded(3, 2) + b"abc",
    "non-minimal 5-byte length of a large chunk": b"\x12" + _varint_padded(200, 3) + b"\0" * 200,
    "chunk then an unknown field": b"\x12\x03abc" + b"\x18\x01",
    "an unknown field then the chunk": b"\x18\x01" + b"\x12\x03abc",
    "two chunks, the last wins": b"\x12\x01x" + b"\x12\x03abc",
    "a chunk then a header": b"\x12\x03abc" + HEADER,
    "a header": HEADER,
    "empty message": b"",
    "empty chunk": b"\x12\x00",
}


@pytest.mark.parametrize("name", sorted(ODD_SHAPES))
def test_every_shape_reads_as_the_runtime_reads_it(name: str) -> None:
    wire = ODD_SHAPES[name]
    expected = pb.UploadPart.FromString(wire)
    part = upload_wire.parse_part(wire)
    if isinstance(part, memoryview):
        assert expected.WhichOneof("part") == "chunk" and bytes(part) == expected.chunk
    else:
        assert part == expected


@pytest.mark.parametrize("wire", [
    b"\x12\x05abc", b"\x12\x01abc", b"\x12\xff", b"\x12" + b"\xff" * 11, b"\x0a\x05ab",
    # lengths in 6 to 10 varint bytes, which the runtime refuses even when they are right
    b"\x12" + b"\x80" * 9 + b"\x00", b"\x12\x83" + b"\x80" * 7 + b"\x00abc", b"\x12" + _varint_padded(3, 5) + b"abc",
])
def test_a_malformed_part_is_refused_as_the_runtime_refuses_it(wire: bytes) -> None:
    with pytest.raises(Exception) as ours:
        upload_wire.parse_part(wire)
    with pytest.raises(Exception) as runtimes:
        pb.UploadPart.FromString(wire)
    assert type(ours.value) is type(runtimes.value)


@pytest.fixture(scope="module")
def enclave_and_parties(tmp_path_factory: pytest.TempPathFactory):
    enclave = RunningEnclave()
    try:
        yield enclave, make_parties(tmp_path_factory.mktemp("parties"))
    finally:
        enclave.stop()


@pytest.mark.parametrize("encode", [
    lambda c: pb.UploadPart(chunk=c).SerializeToString(),
    lambda c: b"\x12" + _varint_padded(len(c), 2) + c,  # a 5-byte length: the runtime's path
    lambda c: b"\x12" + _varint_padded(len(c), 0) + c + b"\x18\x07",  # the runtime's path: an unknown field
], ids=["runtime", "non-minimal-length", "unknown-field"])
def test_the_enclave_accepts_any_valid_encoding_of_a_chunk(enclave_and_parties, monkeypatch, encode) -> None:
    enclave, parties = enclave_and_parties
    monkeypatch.setattr(upload_wire, "chunk_part", encode)
    with enclave.client() as c:
        sid = open_session(c, parties)
        result = c.upload(c.attest(parties.enclave_policy), sid, parties.sealed["model"], parties.provider)
        assert result.digest == parties.sealed["model"].digest


def test_the_served_upload_reads_chunks_as_views(enclave_and_parties, monkeypatch) -> None:
    # Were the override of the generated handler lost (registered under another name, or after the server
    # started, which grpc only logs), every part would arrive as a parsed UploadPart.
    import enclave.service

    seen: list[type] = []
    original = enclave.service._prefetched

    def spy(parts, depth):  # noqa: ANN001, ANN202
        for part in original(parts, depth):
            seen.append(type(part))
            yield part

    monkeypatch.setattr(enclave.service, "_prefetched", spy)
    enclave, parties = enclave_and_parties
    with enclave.client() as c:
        sid = open_session(c, parties)
        c.upload(c.attest(parties.enclave_policy), sid, parties.sealed["model"], parties.provider)
    assert seen and set(seen) == {memoryview}


def test_a_header_inside_a_chunk_part_is_refused_and_nothing_kept(enclave_and_parties, monkeypatch) -> None:
    enclave, parties = enclave_and_parties
    monkeypatch.setattr(upload_wire, "chunk_part", lambda c: b"\x12" + _varint_padded(len(c), 0) + c + HEADER)
    with enclave.client() as c:
        sid = open_session(c, parties)
        with pytest.raises(EnclaveError, match="a second header inside one upload"):
            c.upload(c.attest(parties.enclave_policy), sid, parties.sealed["model"], parties.provider)
        assert "model" not in c.manifest(sid).manifest.assets


def test_an_upload_that_starts_with_a_chunk_is_refused(enclave_and_parties) -> None:
    enclave, parties = enclave_and_parties
    with enclave.client() as c:
        sid = open_session(c, parties)
        upload = c._channel.stream_unary(upload_wire.METHOD, request_serializer=upload_wire.serialize_part,
                                         response_deserializer=pb.UploadResult.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            upload(iter([upload_wire.chunk_part(b"\0" * 64)]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "an upload must start with its header" in refused.value.details()
        assert c.manifest(sid).manifest.assets == {}
