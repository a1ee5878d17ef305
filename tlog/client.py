"""`LogBackend` over gRPC, and `publish`, the one call a pipeline needs to log a bundle."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import grpc

from protos import log_pb2, log_pb2_grpc
from tlog.backend import AppendResult, InvalidRequest, LogError, NotFound, check_entry
from tlog.publish import publish_bundle
from tlog.server import GRPC_OPTIONS
from verifier.inputs import host_port
from verifier.logentry import ConsistencyProof, InclusionProof


class LogClient:
    """A remote log at `target` ("HOST:PORT"). Thread-safe: one channel, many concurrent calls."""

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self.target = host_port(target, "--log", "127.0.0.1:7300")
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self._stub = log_pb2_grpc.TransparencyLogStub(self._channel)

    def _call(self, name: str, request: Any) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and _speaks_tls(self.target):  # type: ignore[attr-defined]
                raise LogError(f"{self.target} speaks TLS, so it is not an aaudit transparency log (which serves "
                               "plaintext gRPC): is it the enclave? Point --log at `aaudit log serve`") from None
            raise _error(self.target, exc) from None

    def append(self, entry: bytes) -> AppendResult:
        check_entry(entry)  # fail before sending a message the server would refuse anyway
        r = self._call("Append", log_pb2.AppendRequest(entry=entry))
        return AppendResult(r.index, r.checkpoint.note, _inclusion(r.inclusion_proof))

    def entry(self, index: int) -> bytes:
        return bytes(self._call("GetEntry", log_pb2.GetEntryRequest(index=_uint(index, "index"))).entry)

    def checkpoint(self) -> str:
        return self._call("GetCheckpoint", log_pb2.GetCheckpointRequest()).note

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> tuple[InclusionProof, str | None]:
        req = log_pb2.GetInclusionProofRequest(index=_uint(index, "index"))
        if tree_size is not None:
            req.tree_size = _uint(tree_size, "tree size")
        r = self._call("GetInclusionProof", req)
        return _inclusion(r.proof), (r.checkpoint.note if r.HasField("checkpoint") else None)

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        req = log_pb2.GetConsistencyProofRequest(first=_uint(first, "first tree size"))
        if second is not None:
            req.second = _uint(second, "second tree size")
        r = self._call("GetConsistencyProof", req)
        return ConsistencyProof(r.first, r.second, tuple(r.hashes))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "LogClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _speaks_tls(target: str, timeout: float = 2.0) -> bool:
    """Whether `target` completes a TLS handshake: asked only after a call failed, to tell an enclave
    (attested TLS) given as the log apart from a log that is down."""
    host, _, port = target.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is sent or trusted; only the handshake matters
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock, \
                context.wrap_socket(sock):
            return True
    except (OSError, ValueError):
        return False


def _uint(value: int, what: str) -> int:
    if not 0 <= value < 1 << 63:
        raise InvalidRequest(f"{what} must be a non-negative integer, got {value}")
    return value


def _inclusion(p: log_pb2.InclusionProof) -> InclusionProof:
    return InclusionProof(p.index, p.tree_size, tuple(p.hashes))


def _error(target: str, exc: grpc.RpcError) -> Exception:
    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidRequest(f"the log refused the message as too large: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return LogError(f"{target} answers but is not an aaudit transparency log (is it the enclave?); "
                        "point --log at `aaudit log serve`")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return LogError(f"cannot reach the log at {target}: {details}")
    return LogError(f"the log at {target} failed: {code.name}: {details}")


def publish(bundle: dict[str, Any], target: str, timeout: float = 10, *, log_key: str | None = None,
            from_size: int | None = None) -> dict[str, Any]:
    """Append `bundle` to the log at `target`; returns a copy carrying its verified "logEntry".

    See `tlog.publish.publish_bundle` for what is checked and for `log_key` / `from_size`.
    """
    with LogClient(target, timeout) as client:
        return publish_bundle(client, bundle, log_key=log_key, from_size=from_size)
