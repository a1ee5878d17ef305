"""The enclave's gRPC service (protos/enclave.proto) over `Sessions`, a job queue and a watchdog.

Logs say what happened (session ids, asset kinds, digests, sizes, job stages), never secret bytes.
Every method maps errors to status codes through one table (`_CODES`). The server stays
answerable under load: uploads take at most `Limits.max_concurrent_uploads` worker threads and
idle ones are cut after `Limits.upload_idle_s`; queued jobs are bounded; the remaining threads
serve `Attest`, `GetManifest` and the rest.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import contextlib
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import grpc

from enclave.jobs import JobCancelled, JobDeadline, JobFailed, run_job
from enclave.keys import BootKeys
from enclave.prepare import Prepared, output_bound, prepare
from enclave.report import build_bundle, build_statement, encrypt_samples
from enclave.session import (
    Busy,
    JobInputs,
    LimitReached,
    Limits,
    NoSuchSession,
    NotAParty,
    PrepareInputs,
    Sessions,
    Upload,
)
from enclave.tee import CompositeAttester
from enclave.workdir import wipe
from protos import enclave_pb2 as pb
from protos import enclave_pb2_grpc as pb_grpc
from protos import upload_wire
from verifier.binding import NONCE_LEN, key_binding
from verifier.errors import AAuditError, UnusableInput

log = logging.getLogger("aaudit.enclave")

# One sealed chunk (1 MiB by default, at most 4 MiB) plus framing fits; anything larger is refused
# by gRPC itself with RESOURCE_EXHAUSTED before it is buffered.
MAX_MESSAGE_BYTES = 5 << 20
# A job's stream repeats its last progress (or queue position) once it has sent nothing for this
# long. A piped client writes a line on the first event 5 s or more after its last line
# (aaudit.progress), so its log is never quiet for more than 5 s + HEARTBEAT_S + the 0.5 s poll here:
# under the 10 s that issue 11 asks for.
HEARTBEAT_S = 2.0
# The encrypted per-sample records go out in chunks of this size, so no audit fails on the size of
# its records (a gRPC message is capped; the client's receive cap then bounds only the bundle).
SAMPLES_CHUNK_BYTES = 4 << 20
# Upload messages read ahead of the handler (sealed chunks, 1 MiB by default). Each is at most
# MAX_MESSAGE_BYTES, so read-ahead holds at most 4 x 5 MiB per upload (160 MiB at the default 8
# concurrent uploads); 8 measured no faster than 4 (perf/upload_speed.py).
UPLOAD_PREFETCH = 4
RESERVE_WORKERS = 16  # threads kept for Attest, GetManifest, Approve ... whatever uploads and jobs hold
_DONE = object()

# First match wins: subclasses before their bases.
_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (JobDeadline, grpc.StatusCode.DEADLINE_EXCEEDED),
    (JobCancelled, grpc.StatusCode.CANCELLED),
    (JobFailed, grpc.StatusCode.INTERNAL),
    (NoSuchSession, grpc.StatusCode.NOT_FOUND),
    (NotAParty, grpc.StatusCode.PERMISSION_DENIED),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Busy, grpc.StatusCode.ABORTED),
    (UnusableInput, grpc.StatusCode.INVALID_ARGUMENT),
    (AAuditError, grpc.StatusCode.FAILED_PRECONDITION),
]

R = TypeVar("R")


def _status(exc: AAuditError) -> grpc.StatusCode:
    return next(code for cls, code in _CODES if isinstance(exc, cls))


def _refuse(method: str, context: grpc.ServicerContext, exc: Exception) -> None:
    """End the call with the status `_CODES` gives a project error; anything else is a bug,
    reported to the caller without internals (which could hold secrets)."""
    if isinstance(exc, AAuditError):
        # The caller gets the message; the log keeps only its kind, since a message about a spec or
        # dataset can quote what the auditor sent (cut short, but still the auditor's text).
        log.warning("%s refused: %s", method, type(exc).__name__)
        context.abort(_status(exc), str(exc))
    log.error("%s failed: %s", method, type(exc).__name__)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def _rpc(method: Callable[..., R]) -> Callable[..., R]:
    """Every unary and client-streaming method answers errors through `_refuse`."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except Exception as exc:
            _refuse(method.__name__, context, exc)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def _rpc_stream(method: Callable[..., Iterator[R]]) -> Callable[..., Iterator[R]]:
    """`_rpc` for server-streaming methods."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[R]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _refuse(method.__name__, context, exc)

    return wrapper


@dataclass
class _Job:
    inputs: JobInputs | PrepareInputs
    nonce: bytes
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    error: AAuditError | None = None
    bundle: bytes | None = None
    samples: bytes | None = None
    prepared: Prepared | None = None  # a prepare job's result (step B)

    def progress(self, stage: str, fraction: float, message: str = "") -> None:
        self.events.put((stage, float(fraction), message))

    @contextlib.contextmanager
    def failures(self, session_id: str, what: str) -> Iterator[None]:
        """A job's failure as its client sees it: our own errors with their message, anything else
        by type only (a message could quote the secret inputs); logged by type."""
        try:
            yield
        except AAuditError as exc:
            self.error = exc if isinstance(exc, JobFailed) else JobFailed(f"{what} failed: {exc}")
            log.error("session %s: %s ended: %s", session_id, what, type(exc).__name__)
        except Exception as exc:
            self.error = JobFailed(f"{what} failed: {type(exc).__name__}")
            log.error("session %s: %s failed: %s", session_id, what, type(exc).__name__)


@dataclass
class _Stream:
    context: grpc.ServicerContext
    started: float = field(default_factory=time.monotonic)
    upload: Upload | None = None
    cut: str | None = None          # why the watchdog ended it


class _UploadWatch:
    """Upload streams and their limits. A stream first waits for its signed header (at most
    `header_s`; at most `pending` streams at once), then holds one of `slots` upload slots, so an
    unauthenticated stream never holds an upload slot. The watchdog cuts an upload idle for `idle_s`,
    or slower on average than `min_rate` bytes/s once it has run `idle_s` (a trickle that sends a
    chunk just before each cut-off would otherwise hold its slot for ever)."""

    def __init__(self, slots: int, idle_s: float, *, header_s: float = 5.0, pending: int | None = None,
                 min_rate: float = 0.0) -> None:
        self.idle_s, self.header_s, self.min_rate = idle_s, header_s, min_rate
        self._slot_count, self._pending_count = slots, pending or 2 * slots
        self._slots = threading.BoundedSemaphore(self._slot_count)
        self._pending = threading.BoundedSemaphore(self._pending_count)
        self._lock = threading.Lock()
        self._streams: set[int] = set()
        self._by_id: dict[int, _Stream] = {}

    def open(self, context: grpc.ServicerContext) -> _Stream:
        if not self._pending.acquire(blocking=False):
            raise LimitReached(f"{self._pending_count} uploads are starting at once, this enclave's limit; retry shortly")
        stream = _Stream(context)
        with self._lock:
            self._by_id[id(stream)] = stream
        return stream

    def admit(self, stream: _Stream, upload: Upload) -> None:
        """The header verified: move from the pending streams to an upload slot."""
        self._pending.release()
        if not self._slots.acquire(blocking=False):
            stream.upload = None
            with self._lock:
                self._by_id.pop(id(stream), None)
            raise LimitReached(f"{self._slot_count} uploads are in flight, this enclave's limit; retry shortly")
        stream.upload = upload

    def close(self, stream: _Stream) -> None:
        with self._lock:
            known = self._by_id.pop(id(stream), None) is not None
        if known:
            (self._slots if stream.upload is not None else self._pending).release()

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            streams = list(self._by_id.values())
        for stream in streams:
            up = stream.upload
            if up is None:
                if now - stream.started > self.header_s:
                    stream.cut = f"no upload header within {self.header_s:.0f} s"
            elif now - up.last_activity > self.idle_s:
                stream.cut = f"upload idle for more than {self.idle_s:.0f} s"
            elif now - up.started > self.idle_s and up.received / (now - up.started) < self.min_rate:
                stream.cut = f"upload slower than {self.min_rate:.0f} bytes/s"
            if stream.cut is not None:
                stream.context.cancel()


class EnclaveService(pb_grpc.EnclaveServicer):
    def __init__(self, attester: CompositeAttester, code_identity: str, workdir: Path, *,
                 keys: BootKeys | None = None, device: str | None = None, limits: Limits | None = None,
                 tls: bool = True) -> None:
        self.keys = keys or BootKeys.generate()
        self.attester = attester
        self.code_identity = code_identity
        self.workdir = workdir
        self.device = device
        self.limits = limits or Limits()
        self.tls = tls
        self.tls_public = self.keys.tls.public_der if tls else b""
        self.sessions = Sessions(self.keys, attester.platform, code_identity, workdir, self.limits)
        self._uploads = _UploadWatch(self.limits.max_concurrent_uploads, self.limits.upload_idle_s,
                                     header_s=self.limits.upload_header_s,
                                     min_rate=self.limits.min_upload_bytes_per_s)
        self._queue: collections.deque[_Job] = collections.deque()
        self._queue_changed = threading.Condition()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._worker, name="audit-queue", daemon=True),
                         threading.Thread(target=self._watchdog, name="watchdog", daemon=True)]
        for t in self._threads:
            t.start()

    # --- attestation and sessions --------------------------------------------------------------
    @_rpc
    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestResponse:
        if len(request.nonce) != NONCE_LEN:
            raise UnusableInput(f"nonce must be {NONCE_LEN} bytes, got {len(request.nonce)}")
        hpke_pub = self.keys.hpke.public_bytes()
        self.sessions.note_attestation(request.nonce)
        evidence = self.attester.attest(key_binding(self.keys.signing_public, self.keys.hpke.suite, hpke_pub,
                                                    self.tls_public, request.nonce))
        return pb.AttestResponse(evidence=evidence.to_bytes(), signing_public_key=self.keys.signing_public,
                                 hpke_suite=self.keys.hpke.suite, hpke_public_key=hpke_pub,
                                 platform=self.attester.platform, code_identity=self.code_identity,
                                 tls_public_key=self.tls_public)

    def _info(self, session: Any) -> pb.SessionInfo:
        return pb.SessionInfo(session_id=session.id, session_nonce=session.nonce,
                              provider_key=session.parties.provider, auditor_key=session.parties.auditor,
                              joined=sorted(session.joined), state=session.state.value, job=session.job)

    @_rpc
    def CreateSession(self, request: pb.CreateSessionRequest, context: grpc.ServicerContext) -> pb.SessionInfo:
        session = self.sessions.create(request.attest_nonce, request.provider_key, request.auditor_key,
                                       request.creator_role, request.signature)
        log.info("session %s created by the %s", session.id, request.creator_role)
        return self._info(session)

    @_rpc
    def JoinSession(self, request: pb.JoinSessionRequest, context: grpc.ServicerContext) -> pb.SessionInfo:
        session = self.sessions.join(request.session_id, request.role, request.signature)
        log.info("session %s joined by the %s", session.id, request.role)
        return self._info(session)

    # --- provisioning --------------------------------------------------------------------------
    @_rpc
    def Upload(self, request_iterator: Iterator[pb.UploadPart | memoryview],
               context: grpc.ServicerContext) -> pb.UploadResult:
        stream = self._uploads.open(context)
        try:
            return self._upload(request_iterator, stream)
        finally:
            self._uploads.close(stream)

    def _upload(self, parts: Iterator[pb.UploadPart | memoryview], stream: _Stream) -> pb.UploadResult:
        try:
            return self._receive(parts, stream)
        except grpc.RpcError:  # the stream ended under us: cut by the watchdog, or the client went away
            raise UnusableInput(f"{stream.cut}; cut off" if stream.cut else "the client ended the upload") from None

    def _receive(self, parts: Iterator[pb.UploadPart | memoryview], stream: _Stream) -> pb.UploadResult:
        first = next(parts, None)
        if not isinstance(first, pb.UploadPart) or first.WhichOneof("part") != "header":
            raise UnusableInput(f"{stream.cut}; cut off" if stream.cut else "an upload must start with its header")
        h = first.header
        up = self.sessions.begin_upload(h.session_id, h.kind, h.digest, h.wrapped_key, h.stream_header,
                                        h.party_public_key, h.attest_nonce, h.signature)
        try:
            self._uploads.admit(stream, up)
            for part in _prefetched(parts, UPLOAD_PREFETCH):
                if isinstance(part, pb.UploadPart):  # not the common shape upload_wire.parse_part reads itself
                    if part.WhichOneof("part") != "chunk":
                        raise UnusableInput(f"{h.kind}: a second header inside one upload")
                    part = part.chunk
                up.feed(part)
            if stream.cut:
                raise UnusableInput(f"{h.kind}: {stream.cut}; cut off. Nothing of it was kept; upload again")
            asset, manifest_digest = self.sessions.finish_upload(up)
        except BaseException:
            up.abort()
            raise
        log.info("session %s: accepted %s %s (%d bytes); approvals reset", h.session_id, asset.kind, asset.digest,
                 asset.plaintext_bytes)
        return pb.UploadResult(kind=asset.kind, digest=asset.digest, plaintext_bytes=asset.plaintext_bytes,
                               manifest_digest=manifest_digest)

    @_rpc
    def GetManifest(self, request: pb.ManifestRequest, context: grpc.ServicerContext) -> pb.Manifest:
        manifest, approved, problems, session = self.sessions.manifest(request.session_id)
        return pb.Manifest(manifest_json=manifest.canonical(), digest=manifest.digest(), approved_by=approved,
                           complete=not problems, problems=problems, state=session.state.value,
                           queue_position=self._position(session.id))

    @_rpc
    def Approve(self, request: pb.Approval, context: grpc.ServicerContext) -> pb.ApprovalResult:
        approved, ready = self.sessions.approve(request.session_id, request.role, request.manifest_digest,
                                                request.signature)
        log.info("session %s: %s approved manifest %s", request.session_id, request.role, request.manifest_digest)
        return pb.ApprovalResult(approved_by=approved, ready=ready)

    # --- the job queue -------------------------------------------------------------------------
    def _position(self, session_id: str) -> int:
        with self._queue_changed:
            for i, job in enumerate(self._queue, 1):
                if job.inputs.session_id == session_id:
                    return i
        return 0

    @_rpc_stream
    def RunAudit(self, request: pb.RunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        with self._queue_changed:
            inputs = self.sessions.queue_job(request.session_id, request.role, request.manifest_digest,
                                             request.nonce, request.signature, len(self._queue))
            job = _Job(inputs, request.nonce)
            self._queue.append(job)
            self._queue_changed.notify_all()
        log.info("session %s: job %d queued by the %s", inputs.session_id, inputs.manifest.session.job, request.role)
        shown, last, last_sent = -1, None, time.monotonic()
        while True:
            try:
                event = job.events.get(timeout=0.5)
            except queue.Empty:
                position = self._position(inputs.session_id)
                if position and position != shown:
                    shown = position
                    last = pb.Progress(stage="queued", fraction=0.0, message=f"position {position} in the queue")
                elif last is None or time.monotonic() - last_sent < HEARTBEAT_S:
                    continue
                last_sent = time.monotonic()  # a long queue or a silent stage (a large model loading) still shows
                yield pb.RunEvent(progress=last)
                continue
            if event is _DONE:
                break
            stage, fraction, message = event
            last, last_sent = pb.Progress(stage=stage, fraction=fraction, message=message), time.monotonic()
            yield pb.RunEvent(progress=last)
        if job.error is not None:
            raise job.error
        assert job.bundle is not None
        yield from _result_events(job.bundle, job.samples)

    def _worker(self) -> None:
        while not self._stopping.is_set():
            with self._queue_changed:
                while not self._queue and not self._stopping.is_set():
                    self._queue_changed.wait(timeout=1.0)
                if self._stopping.is_set():
                    return
                job = self._queue.popleft()
                self._queue_changed.notify_all()
            try:
                if isinstance(job.inputs, PrepareInputs):
                    self._run_prepare(job)
                else:
                    self._run(job)
            finally:
                with self._queue_changed:
                    self._queue_changed.notify_all()

    def _withdraw(self, session_id: str, why: str) -> None:
        """Take the session's waiting job out of the queue at once (its slot frees, its stream ends)."""
        with self._queue_changed:
            for job in [j for j in self._queue if j.inputs.session_id == session_id]:
                self._queue.remove(job)
                job.error = JobCancelled(why)
                job.events.put(_DONE)
            self._queue_changed.notify_all()

    def _run(self, job: _Job) -> None:
        inputs = job.inputs
        progress = job.progress
        result = None
        try:
            with job.failures(inputs.session_id, "audit job"):
                if not self.sessions.job_running(inputs.session_id, inputs.manifest.session.job):
                    raise JobCancelled("the job was cancelled before it started")
                progress("run", 0.0, "loading model and running lm-eval in a job process")
                run = run_job(inputs.model_dir, inputs.spec, inputs.datasets, device=self.device,
                              deadline_s=inputs.deadline_s, progress=progress, cancel=inputs.cancel,
                              judges_dir=inputs.judges_dir)
                progress("report", 0.0, "signing the statement and taking the final attestation")
                if inputs.spec.output == "aggregate+samples":
                    job.samples = encrypt_samples(run, inputs.spec.samples_recipient, self.keys)
                statement = build_statement(inputs, run, platform=self.attester.platform,
                                            simulated=self.attester.platform == "sim",
                                            code_identity=self.code_identity, nonce=job.nonce,
                                            samples_ciphertext=job.samples)
                bundle = build_bundle(statement, keys=self.keys, tls_public=self.tls_public, attester=self.attester,
                                      nonce=job.nonce, prepare=inputs.prepared)
                job.bundle = bundle
                result = (bundle, job.samples)
                progress("report", 1.0, "done")
                log.info("session %s: job finished, manifest %s", inputs.session_id, inputs.manifest_digest)
        finally:
            self.sessions.end_job(inputs.session_id, inputs.manifest.session.job, result)
            job.events.put(_DONE)

    # --- step B: prepare jobs ------------------------------------------------------------------
    @_rpc_stream
    def Prepare(self, request: pb.PrepareRequest, context: grpc.ServicerContext) -> Iterator[pb.PrepareEvent]:
        with self._queue_changed:
            inputs = self.sessions.queue_prepare(request.session_id, request.role, request.method,
                                                 request.recipient_suite, request.recipient_public_key, request.nonce,
                                                 request.signature, len(self._queue))
            job = _Job(inputs, request.nonce)
            self._queue.append(job)
            self._queue_changed.notify_all()
        log.info("session %s: prepare job %d (%s) queued by the provider", inputs.session_id, inputs.job,
                 inputs.method)
        while True:
            try:
                event = job.events.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                if not context.is_active():  # the provider went away: stop the job, its end wipes Mq
                    inputs.cancel.set()
                    continue
                position = self._position(inputs.session_id)
                yield pb.PrepareEvent(progress=pb.Progress(stage="queued" if position else "prepare", fraction=0.0,
                                                           message=f"position {position} in the queue" if position
                                                           else "working"))
                continue
            if event is _DONE:
                break
            stage, fraction, message = event
            yield pb.PrepareEvent(progress=pb.Progress(stage=stage, fraction=fraction, message=message))
        if job.error is not None:
            raise job.error
        done = job.prepared
        assert done is not None
        try:
            with open(done.sealed.sealed_path, "rb") as sealed:  # ciphertext only
                while chunk := sealed.read(SAMPLES_CHUNK_BYTES):
                    yield pb.PrepareEvent(sealed_chunk=chunk)
            meta = json.dumps(done.sealed.to_json(), sort_keys=True).encode()
            yield pb.PrepareEvent(prepared=pb.PreparedModel(wrapped_key=done.wrapped_key, sealed_meta=meta,
                                                            bundle=done.bundle))
        finally:
            wipe(done.folder)
            self.sessions.tmpfs.release(output_bound(inputs.method, inputs.model_bytes) * 2)

    def _run_prepare(self, job: _Job) -> None:
        inputs = job.inputs
        assert isinstance(inputs, PrepareInputs)
        progress = job.progress
        reserved = output_bound(inputs.method, inputs.model_bytes) * 2  # Mq's plaintext, then its ciphertext
        try:
            with job.failures(inputs.session_id, "prepare job"):
                if not self.sessions.job_running(inputs.session_id, inputs.job):
                    raise JobCancelled("the prepare job was cancelled before it started")
                self.sessions.tmpfs.reserve(reserved)
                try:
                    job.prepared = prepare(inputs, workdir=self.workdir, keys=self.keys, tls_public=self.tls_public,
                                           attester=self.attester, code_identity=self.code_identity, device=self.device,
                                           progress=progress)
                except BaseException:
                    self.sessions.tmpfs.release(reserved)
                    raise
                log.info("session %s: prepare job %d finished: %s -> %s", inputs.session_id, inputs.job,
                         inputs.model_digest, job.prepared.sealed.digest)
        finally:
            self.sessions.end_job(inputs.session_id, inputs.job, None)
            job.events.put(_DONE)

    @_rpc
    def AttachPrepared(self, request: pb.AttachPreparedRequest,
                       context: grpc.ServicerContext) -> pb.AttachPreparedResult:
        statement, manifest = self.sessions.attach_prepared(request.session_id, request.role, request.bundle,
                                                            request.signature)
        log.info("session %s: the provider attached prepare statement %s; approvals reset", request.session_id,
                 statement)
        return pb.AttachPreparedResult(statement_digest=statement, manifest_digest=manifest)

    @_rpc
    def CancelJob(self, request: pb.SessionAction, context: grpc.ServicerContext) -> pb.SessionInfo:
        return self._session_action(self.sessions.cancel, request, "cancelled the job")

    @_rpc
    def CloseSession(self, request: pb.SessionAction, context: grpc.ServicerContext) -> pb.SessionInfo:
        return self._session_action(self.sessions.close, request, "closed the session")

    def _session_action(self, act: Callable[..., Any], request: pb.SessionAction, done: str) -> pb.SessionInfo:
        """A party's signed cancel or close; a job of the session still waiting leaves the queue at once."""
        session = act(request.session_id, request.role, request.manifest_digest, request.signature)
        self._withdraw(session.id, f"the {request.role} {done} while the job was queued")
        log.info("session %s: the %s %s", session.id, request.role, done)
        return self._info(session)

    @_rpc_stream
    def GetResult(self, request: pb.ResultRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        bundle, samples = self.sessions.result(request.session_id)
        yield from _result_events(bundle, samples)

    # --- housekeeping --------------------------------------------------------------------------
    def _watchdog(self) -> None:
        while not self._stopping.wait(1.0):
            self._uploads.sweep()
            self.sessions.reap()

    def close(self) -> None:
        """Stop: cancel every job (its process is killed), drop every session, wipe the work folder."""
        self._stopping.set()
        with self._queue_changed:
            for job in self._queue:
                job.inputs.cancel.set()
            self._queue_changed.notify_all()
        self.sessions.close_all()
        self._threads[0].join(timeout=10)
        wipe(self.workdir)


def _prefetched(parts: Iterator[Any], depth: int) -> Iterator[Any]:
    """`parts`, read ahead by a thread of its own into a queue of `depth` messages. grpcio asks for
    a stream's next message only when the handler asks for it, so without this the handler waited
    for each chunk to arrive and the chunk waited for the handler to decrypt, digest and store the
    one before: an upload ran at about a third of the local unseal's speed (perf/upload_speed.py).
    Errors of the stream (an RpcError when the client or the watchdog ends it) reach the handler
    in order; a handler that stops early stops the reader."""
    pending: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def read() -> None:
        try:
            for part in parts:
                while not stop.is_set():
                    try:
                        pending.put(part, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: Any = end
        except BaseException as exc:  # noqa: BLE001 - handed to the handler, which raises it
            item = exc
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    threading.Thread(target=read, name="upload-reader", daemon=True).start()
    try:
        while True:
            item = pending.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _result_events(bundle: bytes, samples: bytes | None) -> Iterator[pb.RunEvent]:
    """A finished job's result as bounded messages: the samples ciphertext in order, then the bundle."""
    if samples is not None:
        view = memoryview(samples)
        for start in range(0, len(view), SAMPLES_CHUNK_BYTES):
            yield pb.RunEvent(samples_chunk=bytes(view[start:start + SAMPLES_CHUNK_BYTES]))
    yield pb.RunEvent(bundle=bundle)


class _OneLine(logging.Filter):
    """grpcio logs every request it cannot deserialize (bytes that are not the method's protobuf)
    with a Python traceback, before any method runs: keep one line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg, record.args = f"{record.getMessage()} ({record.exc_info[0].__name__})", None
            record.exc_info, record.exc_text = None, None
        return True


def serve(service: EnclaveService, listen: str) -> grpc.Server:
    """Start the gRPC server on `listen` (host:port; port 0 picks one); returns the started server.

    With TLS (the default) the server presents the boot's self-signed certificate, whose key the
    attestation binds; plaintext is only for loopback development."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UnusableInput(f"--listen {listen!r} must be HOST:PORT with a port from 0 to 65535")
    if not service.tls and host not in ("127.0.0.1", "localhost", "[::1]"):
        raise UnusableInput(f"plaintext gRPC is for loopback development only; {host} is not loopback")
    for name in ("grpc._common", "grpc._server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())
    limits = service.limits
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=3 * limits.max_concurrent_uploads + limits.max_queued_jobs + 1
                                   + RESERVE_WORKERS, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", 64 << 20)],
    )
    pb_grpc.add_EnclaveServicer_to_server(service, server)
    server.add_registered_method_handlers(upload_wire.SERVICE, {
        "Upload": grpc.stream_unary_rpc_method_handler(  # chunks read without the runtime's copies
            service.Upload, request_deserializer=upload_wire.parse_part,
            response_serializer=pb.UploadResult.SerializeToString)})
    try:
        if service.tls:
            creds = grpc.ssl_server_credentials([(service.keys.tls.key_pem, service.keys.tls.cert_pem)])
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise UnusableInput(f"cannot listen on {listen} (address in use or not local?)")
    server.bound_port = port  # type: ignore[attr-defined]
    server.start()
    return server
