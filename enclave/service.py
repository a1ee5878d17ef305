"""The enclave's gRPC service (protos/enclave.proto) over a `Session`.

Logs say what happened (asset kind, digest, sizes, job stages), never secret bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc

from enclave.keys import BootKeys
from enclave.report import build_bundle, build_statement, encrypt_samples
from enclave.session import Busy, JobInputs, Session, SessionError
from enclave.tee import CompositeAttester
from enclave.workdir import wipe
from protos import enclave_pb2 as pb
from protos import enclave_pb2_grpc as pb_grpc
from verifier.binding import NONCE_LEN, key_binding
from verifier.errors import AAuditError, UnusableInput
from verifier.models import canonical_json

log = logging.getLogger("aaudit.enclave")

# One sealed chunk (1 MiB by default, at most 4 MiB) plus framing fits; anything larger is refused
# by gRPC itself with RESOURCE_EXHAUSTED before it is buffered.
MAX_MESSAGE_BYTES = 5 << 20
_DONE = object()


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, Busy):
        context.abort(grpc.StatusCode.ABORTED, str(exc))
    if isinstance(exc, UnusableInput):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))


@dataclass
class _Job:
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    bundle: bytes | None = None
    samples: bytes | None = None
    error: str | None = None


class EnclaveService(pb_grpc.EnclaveServicer):
    def __init__(self, attester: CompositeAttester, code_identity: str, workdir: Path, *,
                 keys: BootKeys | None = None, device: str | None = None) -> None:
        self.keys = keys or BootKeys.generate()
        self.attester = attester
        self.code_identity = code_identity
        self.workdir = workdir
        self.device = device
        self.session = Session(self.keys, attester.platform, code_identity, workdir)
        self._last: tuple[bytes, bytes | None] | None = None  # bundle and encrypted samples of the last job

    # --- attestation ---------------------------------------------------------------------------
    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestResponse:
        if len(request.nonce) != NONCE_LEN:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nonce must be {NONCE_LEN} bytes, got {len(request.nonce)}")
        hpke_pub = self.keys.hpke.public_bytes()
        self.session.note_attestation(request.nonce)
        evidence = self.attester.attest(key_binding(self.keys.signing_public, self.keys.hpke.suite, hpke_pub, request.nonce))
        return pb.AttestResponse(evidence=evidence.to_bytes(), signing_public_key=self.keys.signing_public,
                                 hpke_suite=self.keys.hpke.suite, hpke_public_key=hpke_pub,
                                 platform=self.attester.platform, code_identity=self.code_identity)

    # --- provisioning --------------------------------------------------------------------------
    def Upload(self, request_iterator: Iterator[pb.UploadPart], context: grpc.ServicerContext) -> pb.UploadResult:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload must start with its header")
        h = first.header
        try:
            up = self.session.begin_upload(h.kind, h.digest, h.wrapped_key, h.stream_header, h.party_public_key,
                                           h.attest_nonce)
        except AAuditError as exc:
            _abort(context, exc)
        try:
            for part in request_iterator:
                if part.WhichOneof("part") != "chunk":
                    raise UnusableInput(f"{h.kind}: a second header inside one upload")
                up.feed(part.chunk)
            asset, manifest_digest = self.session.finish_upload(up)
        except AAuditError as exc:
            up.abort()
            log.warning("upload of %s refused: %s", h.kind, exc)
            _abort(context, exc)
        except BaseException:
            up.abort()
            raise
        log.info("accepted %s %s (%d bytes); approvals reset", asset.kind, asset.digest, asset.plaintext_bytes)
        return pb.UploadResult(kind=asset.kind, digest=asset.digest, plaintext_bytes=asset.plaintext_bytes,
                               manifest_digest=manifest_digest)

    def GetManifest(self, request: pb.ManifestRequest, context: grpc.ServicerContext) -> pb.Manifest:
        manifest, digest, approved, complete = self.session.manifest()
        return pb.Manifest(manifest_json=canonical_json(manifest), digest=digest, approved_by=approved, complete=complete)

    def Approve(self, request: pb.Approval, context: grpc.ServicerContext) -> pb.ApprovalResult:
        try:
            approved, ready = self.session.approve(request.role, request.manifest_digest, request.signature)
        except AAuditError as exc:
            _abort(context, exc)
        log.info("%s approved manifest %s", request.role, request.manifest_digest)
        return pb.ApprovalResult(approved_by=approved, ready=ready)

    # --- the audit job -------------------------------------------------------------------------
    def RunAudit(self, request: pb.RunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        if len(request.nonce) != NONCE_LEN:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nonce must be {NONCE_LEN} bytes")
        try:
            inputs = self.session.start_job()
        except (SessionError, Busy) as exc:
            _abort(context, exc)
        job = _Job()
        threading.Thread(target=self._run, args=(inputs, request.nonce, job), name="audit-job", daemon=True).start()
        while True:
            event = job.events.get()
            if event is _DONE:
                break
            stage, fraction, message = event
            yield pb.RunEvent(progress=pb.Progress(stage=stage, fraction=fraction, message=message))
        if job.error is not None:
            context.abort(grpc.StatusCode.INTERNAL, job.error)
        if job.samples is not None:
            yield pb.RunEvent(samples=job.samples)
        yield pb.RunEvent(bundle=job.bundle)

    def _run(self, inputs: JobInputs, nonce: bytes, job: _Job) -> None:
        def progress(stage: str, fraction: float, message: str = "") -> None:
            job.events.put((stage, float(fraction), message))

        try:
            from enclave.runner import (
                run_audit,  # heavy imports (torch, lm-eval) happen here, not at boot
            )

            progress("run", 0.0, "loading model and running lm-eval")
            run = run_audit(inputs.model_dir, inputs.spec, inputs.datasets, progress=lambda s, f: progress(s, f),
                            device=self.device)
            progress("report", 0.0, "signing the statement and taking the final attestation")
            if inputs.spec.output == "aggregate+samples":
                job.samples = encrypt_samples(run, inputs.spec.samples_recipient, self.keys)
            statement = build_statement(inputs, run, platform=self.attester.platform,
                                        simulated=self.attester.platform == "sim",
                                        code_identity=self.code_identity, nonce=nonce, samples_ciphertext=job.samples)
            bundle = build_bundle(statement, keys=self.keys, attester=self.attester, nonce=nonce)
            job.bundle = canonical_json(bundle)
            self._last = (job.bundle, job.samples)
            progress("report", 1.0, "done")
            log.info("job finished: manifest %s", inputs.manifest_digest)
        except Exception as exc:  # the job's error goes to the client; never the secret inputs
            job.error = f"audit job failed: {type(exc).__name__}: {exc}" if isinstance(exc, AAuditError) \
                else f"audit job failed: {type(exc).__name__}"
            log.error("job failed: %s", type(exc).__name__)
        finally:
            self.session.end_job()
            job.events.put(_DONE)

    def GetResult(self, request: pb.ResultRequest, context: grpc.ServicerContext) -> pb.ResultResponse:
        if self._last is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no job has finished on this enclave yet")
        bundle, samples = self._last
        return pb.ResultResponse(bundle=bundle, samples=samples or b"")

    def close(self) -> None:
        self.session.end_job()
        wipe(self.workdir)


def serve(service: EnclaveService, listen: str, *, max_workers: int = 8) -> grpc.Server:
    """Start the gRPC server on `listen` (host:port; port 0 picks one); returns the started server."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", 64 << 20)],
    )
    pb_grpc.add_EnclaveServicer_to_server(service, server)
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UnusableInput(f"--listen {listen!r} must be HOST:PORT with a port from 0 to 65535")
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise UnusableInput(f"cannot listen on {listen} (address in use or not local?)")
    server.bound_port = port  # type: ignore[attr-defined]
    server.start()
    return server
