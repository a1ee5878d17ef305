"""The gRPC face of a `LogBackend` (protos/log.proto, service aaudit.log.v1.TransparencyLog).

The transport is plaintext gRPC on purpose: everything the log says is checked against its signed
checkpoints, so the channel needs no secrecy or authentication for verifiers to be safe. Put it
behind TLS if publishers must be authenticated.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from protos import log_pb2, log_pb2_grpc
from tlog.backend import MAX_ENTRY_BYTES, InvalidRequest, LogBackend, LogError, NotFound
from verifier.errors import AAuditError

# Room for the entry plus its protobuf framing; larger requests are refused by gRPC itself.
MAX_MESSAGE_BYTES = MAX_ENTRY_BYTES + 4096
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LogError, grpc.StatusCode.INTERNAL),
    (AAuditError, grpc.StatusCode.INTERNAL),
]

R = TypeVar("R")


def _rpc(method: Callable[..., R]) -> Callable[..., R]:
    """Turn the backend's errors into gRPC status codes with their messages."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except AAuditError as exc:
            code = next(c for cls, c in _CODES if isinstance(exc, cls))
            context.abort(code, str(exc))
        except Exception as exc:  # a bug: say so without leaking internals to the caller
            print(f"aaudit log: {method.__name__} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def _inclusion(proof: Any) -> log_pb2.InclusionProof:
    return log_pb2.InclusionProof(index=proof.index, tree_size=proof.tree_size, hashes=list(proof.hashes))


class TransparencyLogService(log_pb2_grpc.TransparencyLogServicer):
    def __init__(self, backend: LogBackend) -> None:
        self.backend = backend

    @_rpc
    def Append(self, request: log_pb2.AppendRequest, context: grpc.ServicerContext) -> log_pb2.AppendResponse:
        res = self.backend.append(request.entry)
        return log_pb2.AppendResponse(index=res.index, checkpoint=log_pb2.Checkpoint(note=res.checkpoint),
                                      inclusion_proof=_inclusion(res.proof))

    @_rpc
    def GetEntry(self, request: log_pb2.GetEntryRequest, context: grpc.ServicerContext) -> log_pb2.GetEntryResponse:
        return log_pb2.GetEntryResponse(index=request.index, entry=self.backend.entry(request.index))

    @_rpc
    def GetCheckpoint(self, request: log_pb2.GetCheckpointRequest, context: grpc.ServicerContext) -> log_pb2.Checkpoint:
        return log_pb2.Checkpoint(note=self.backend.checkpoint())

    @_rpc
    def GetInclusionProof(self, request: log_pb2.GetInclusionProofRequest,
                          context: grpc.ServicerContext) -> log_pb2.InclusionProofResponse:
        size = request.tree_size if request.HasField("tree_size") else None
        proof, note = self.backend.inclusion_proof(request.index, size)
        out = log_pb2.InclusionProofResponse(proof=_inclusion(proof))
        if note is not None:
            out.checkpoint.note = note
        return out

    @_rpc
    def GetConsistencyProof(self, request: log_pb2.GetConsistencyProofRequest,
                            context: grpc.ServicerContext) -> log_pb2.ConsistencyProof:
        second = request.second if request.HasField("second") else None
        proof = self.backend.consistency_proof(request.first, second)
        return log_pb2.ConsistencyProof(first=proof.first, second=proof.second, hashes=list(proof.hashes))


def serve(backend: LogBackend, listen: str, *, max_workers: int = 64) -> tuple[grpc.Server, int]:
    """Start serving `backend` on `listen` ("HOST:PORT"; port 0 picks a free one): (server, port).

    Many workers, because appenders block while their batch commits; the group commit turns
    them into few transactions.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tlog"),
                         options=GRPC_OPTIONS)
    log_pb2_grpc.add_TransparencyLogServicer_to_server(TransparencyLogService(backend), server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise LogError(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise LogError(f"cannot listen on {listen}")
    server.start()
    return server, port
