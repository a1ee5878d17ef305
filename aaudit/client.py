"""The parties' side of the enclave protocol: attest and verify first, then act in a session.

A client never wraps a data key or signs anything for an enclave whose evidence did not verify
against the client's own policy, for the keys it is about to use and a nonce it just made. The
channel is TLS pinned to the certificate whose key that evidence binds: the client fetches the
enclave's self-signed certificate, opens a gRPC channel that trusts exactly that certificate, and
refuses the enclave unless its attestation binds the same key. Every request that acts in a
session is signed with the party's identity key (verifier/binding.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.keys import TLS_NAME
from protos import enclave_pb2 as pb
from protos import enclave_pb2_grpc as pb_grpc
from protos import upload_wire
from sealing import keywrap
from sealing.secretfile import write_secret_file
from sealing.stream import SealedAsset, SealedReader, read_key_file
from verifier.binding import (
    NONCE_LEN,
    attach_message,
    create_message,
    job_message,
    join_message,
    key_binding,
    prepare_message,
    prepared_wrap_info,
    run_message,
    upload_message,
    wrap_info,
)
from verifier.errors import AAuditError, ParseError, UnusableInput, VerificationError
from verifier.evidence import verify_evidence
from verifier.inputs import host_port, load_json
from verifier.manifest import ASSET_KINDS, REQUIRED_KINDS, ROLES, RunManifest, approval_message
from verifier.models import CPU_PLATFORMS, Evidence, Verdict, b64e
from verifier.platforms import allowlist
from verifier.policy import Policy
from verifier.prepare import PrepareBundle, parse_prepare_statement

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 5 << 20), ("grpc.max_receive_message_length", 64 << 20)]
_MAX_CERT = 16 << 10
ENCLAVE_EXAMPLE = "127.0.0.1:50051"


class EnclaveError(AAuditError):
    """The enclave refused a request; carries its status and message."""


class AttestationRefused(VerificationError):
    def __init__(self, verdict: Verdict) -> None:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in verdict.failures) or "no check passed"
        super().__init__(f"enclave evidence did not verify against the policy ({reasons}); nothing was sent")
        self.verdict = verdict


@dataclass(frozen=True)
class ExpectedRun:
    """What a party agreed to before approving: every asset digest, the other party's key, and
    whether per-sample records may leave the enclave (to the auditor). The judges digest is named
    exactly when the agreed spec names judges: a manifest with judges nobody agreed to is refused."""

    digests: dict[str, str]
    parties: dict[str, bytes]
    allow_samples: bool = False
    original_model: str | None = None  # set: the model must come from this digest by a prepare job (step B)

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED_KINDS if k not in self.digests]
        if missing:
            raise UnusableInput(f"an approval must name every asset digest; missing {', '.join(missing)}")


@dataclass(frozen=True)
class AttestedEnclave:
    """The enclave's keys, vouched for by evidence that verified for our nonce."""

    signing_public: bytes
    hpke_suite: str
    hpke_public: bytes
    tls_public: bytes
    nonce: bytes
    platform: str
    code_identity: str
    verdict: Verdict


@dataclass(frozen=True)
class ManifestView:
    """The enclave's answer to GetManifest, checked: the manifest hashes to the digest it states."""

    manifest: RunManifest
    digest: str
    approved_by: list[str]
    complete: bool
    problems: list[str]
    state: str
    queue_position: int


def _error(exc: grpc.RpcError, target: str) -> EnclaveError:
    """The enclave's refusal as a message that says what to do where the status tells it."""
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return EnclaveError(f"enclave unreachable: {detail}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return EnclaveError(f"{target} answers but is not an aaudit enclave (is it the transparency log?); "
                            "point --enclave at `aaudit enclave serve`")
    if code == grpc.StatusCode.NOT_FOUND:
        return EnclaveError(f"the enclave at {target} does not have this session: it was closed, it expired, or "
                            "the enclave restarted (a restart drops every session and upload). Create a new session "
                            "(`aaudit auditor create-session`), have the provider join it, and both parties upload "
                            f"again. The enclave said: {detail}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EnclaveError(f"enclave limit reached: {detail}")
    return EnclaveError(f"enclave refused ({code.name}): {detail}")


def fetch_certificate(target: str, timeout: float, alpn: tuple[str, ...] = ("h2",)) -> bytes:
    """The PEM certificate the server at `target` presents. Not trusted by itself: the client trusts
    it only once an attestation binds its key (`EnclaveClient.attest`)."""
    host, _, port = host_port(target, "--enclave", ENCLAVE_EXAMPLE).rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned below, after attestation, not by a CA
    context.set_alpn_protocols(list(alpn))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=TLS_NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise EnclaveError(f"{target}: TLS handshake failed ({exc.reason}), so it is not an aaudit enclave "
                           "serving attested TLS: is it the transparency log? (An enclave started with "
                           "--insecure-plaintext-loopback needs that flag here too.)") from None
    except (OSError, ValueError, OverflowError) as exc:
        raise EnclaveError(f"enclave unreachable: {target}: {getattr(exc, 'strerror', None) or exc}") from None
    if not der or len(der) > _MAX_CERT:
        raise EnclaveError(f"enclave {target} presented no usable certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def _spki(cert_pem: bytes) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        raise ParseError("the enclave's TLS certificate does not parse") from None


class EnclaveClient:
    """One party's connection to one enclave. TLS pinned to the attested key unless
    `insecure_plaintext` (loopback development only: nothing authenticates the channel)."""

    def __init__(self, target: str, timeout: float = 60.0, *, insecure_plaintext: bool = False) -> None:
        self.target = host_port(target, "--enclave", ENCLAVE_EXAMPLE)
        self.timeout = timeout
        self.insecure_plaintext = insecure_plaintext
        if insecure_plaintext:
            self._pinned_tls = b""
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            cert = fetch_certificate(target, min(timeout, 30.0))
            self._pinned_tls = _spki(cert)
            creds = grpc.ssl_channel_credentials(root_certificates=cert)
            self._channel = grpc.secure_channel(target, creds,
                                                options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", TLS_NAME)])
        self._stub = pb_grpc.EnclaveStub(self._channel)
        self._upload = self._channel.stream_unary(  # the stub's Upload, with chunks written by upload_wire
            upload_wire.METHOD, request_serializer=upload_wire.serialize_part,
            response_deserializer=pb.UploadResult.FromString)
        self.samples: bytearray | None = None  # encrypted per-sample records of the last run/result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EnclaveClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None

    # --- attestation ---------------------------------------------------------------------------
    def attest(self, policy: Policy, *, at: datetime | None = None) -> AttestedEnclave:
        """Fresh nonce -> evidence -> verify against `policy` for exactly the returned keys, and the
        TLS key this channel is pinned to."""
        nonce = os.urandom(NONCE_LEN)
        resp = self._call(self._stub.Attest, pb.AttestRequest(nonce=nonce), timeout=self.timeout)
        evidence = Evidence.from_bytes(resp.evidence)
        verdict = Verdict(subject=f"enclave at {self.target}")
        if evidence.platform not in CPU_PLATFORMS:
            verdict.fail("evidence platform", f"{evidence.platform} evidence cannot stand alone")
        verdict.check("channel key", resp.tls_public_key == self._pinned_tls,
                      "the attested TLS key is the one this channel is pinned to" if self._pinned_tls else
                      "plaintext channel (development): the enclave binds no TLS key",
                      "the attested TLS key is not the key of this channel's certificate (a machine in the middle?)")
        verify_evidence(evidence, at=at or datetime.now(timezone.utc), policy=policy, verdict=verdict,
                        expected_report_data=key_binding(resp.signing_public_key, resp.hpke_suite,
                                                         resp.hpke_public_key, resp.tls_public_key, nonce))
        # Self-reported, so it binds only as far as a pinned measurement does; still refused if not listed.
        allowlist.check(verdict, "code identity", resp.code_identity, policy.code_identities)
        if not verdict.verified:
            raise AttestationRefused(verdict)
        return AttestedEnclave(resp.signing_public_key, resp.hpke_suite, resp.hpke_public_key, resp.tls_public_key,
                               nonce, evidence.platform, resp.code_identity, verdict)

    # --- sessions ------------------------------------------------------------------------------
    def create_session(self, enclave: AttestedEnclave, role: str, identity: Any, other_key: bytes) -> pb.SessionInfo:
        """Create a session for us (`role`) and the other party's key; the other party must join."""
        if role not in ROLES:
            raise UnusableInput(f"unknown role {role!r}")
        keys = {role: identity.public_raw(), _other(role): other_key}
        signature = identity.sign(create_message(enclave.signing_public, enclave.nonce, keys["provider"],
                                                 keys["auditor"]))
        return self._call(self._stub.CreateSession, pb.CreateSessionRequest(
            attest_nonce=enclave.nonce, provider_key=keys["provider"], auditor_key=keys["auditor"],
            creator_role=role, signature=signature), timeout=self.timeout)

    def join_session(self, enclave: AttestedEnclave, session_id: str, role: str, identity: Any,
                     other_key: bytes) -> pb.SessionInfo:
        """Join after checking that the session is in the attested enclave and names us and the
        party we expect."""
        view = self.manifest(session_id)
        m = view.manifest
        problems = _enclave_problems(m, enclave)
        if m.parties.key(role) != identity.public_raw():
            problems.append(f"the session's {role} key is not ours")
        if m.parties.key(_other(role)) != other_key:
            problems.append(f"the session's {_other(role)} key is {b64e(m.parties.key(_other(role)))}, expected "
                            f"{b64e(other_key)}")
        if problems:
            raise VerificationError("refusing to join: " + "; ".join(problems))
        signature = identity.sign(join_message(enclave.signing_public, session_id, m.session.nonce, role))
        return self._call(self._stub.JoinSession, pb.JoinSessionRequest(session_id=session_id, role=role,
                                                                        signature=signature), timeout=self.timeout)

    def upload(self, enclave: AttestedEnclave, session_id: str, asset: SealedAsset, identity: Any,
               on_progress: Callable[[int], None] | None = None) -> pb.UploadResult:
        party = identity.public_raw()
        data_key = read_key_file(asset.key_path)
        wrapped = keywrap.wrap(data_key, enclave.hpke_public, enclave.hpke_suite,
                               wrap_info(asset.kind, asset.digest, enclave.signing_public, party, session_id,
                                         enclave.nonce))
        del data_key
        reader = SealedReader(asset.sealed_path)
        signature = identity.sign(upload_message(enclave.signing_public, session_id, asset.kind, asset.digest,
                                                 reader.header, wrapped, enclave.nonce))

        def parts() -> Iterator[pb.UploadPart | bytes]:
            yield pb.UploadPart(header=pb.UploadHeader(
                kind=asset.kind, digest=asset.digest, wrapped_key=wrapped, stream_header=reader.header,
                party_public_key=party, attest_nonce=enclave.nonce, session_id=session_id, signature=signature))
            if on_progress:
                on_progress(len(reader.header))  # the sealed file's header travels in the upload header
            for chunk in reader:
                yield upload_wire.chunk_part(chunk)
                if on_progress:
                    on_progress(len(chunk))

        return self._call(self._upload, parts(), timeout=None)

    def manifest(self, session_id: str) -> ManifestView:
        m = self._call(self._stub.GetManifest, pb.ManifestRequest(session_id=session_id), timeout=self.timeout)
        manifest = RunManifest.from_json(load_json(m.manifest_json, "the enclave's manifest"))
        if manifest.canonical() != m.manifest_json or manifest.digest() != m.digest:
            raise VerificationError("the enclave's manifest does not hash to the digest it states")
        if manifest.session.id != session_id:
            raise VerificationError(f"the enclave answered with session {manifest.session.id}, not {session_id}")
        return ManifestView(manifest, m.digest, list(m.approved_by), m.complete, list(m.problems), m.state,
                            m.queue_position)

    def approve(self, enclave: AttestedEnclave, session_id: str, role: str, identity: Any,
                expected: ExpectedRun) -> pb.ApprovalResult:
        """Check every field of the manifest against what this party agreed to; then sign it.

        A party approves a whole run, not only its own upload: the enclave, the session, both keys,
        every digest and the output policy must be the ones it expects, or it refuses.
        """
        view = self.manifest(session_id)
        m = view.manifest
        problems = [] if view.complete else [f"manifest is not ready ({'; '.join(view.problems)})"]
        problems += _enclave_problems(m, enclave)
        parties = {**expected.parties, role: identity.public_raw()}
        for who, key in sorted(parties.items()):
            if m.parties.key(who) != key:
                problems.append(f"manifest's {who} key is {b64e(m.parties.key(who))}, expected {b64e(key)}")
        for kind in ASSET_KINDS:
            got = m.digest_of(kind)
            want = expected.digests.get(kind)
            if got != want:
                problems.append(f"manifest has {kind} {got or 'none'}, expected {want or 'none'}")
        if expected.original_model is not None:
            origin = m.prepared_from.original_model_digest if m.prepared_from is not None else None
            if origin != expected.original_model:
                problems.append(f"the manifest's model was prepared from {origin or 'no prepare statement'}, "
                                f"expected a prepare statement from {expected.original_model}")
        if m.output == "aggregate+samples" and not expected.allow_samples:
            problems.append(f"the spec sends per-sample records to {m.samples_recipient}; approve only with "
                            "allow_samples (--allow-samples) if you agreed to that")
        if problems:
            raise VerificationError("refusing to approve: " + "; ".join(problems))
        approval = pb.Approval(session_id=session_id, role=role, manifest_digest=view.digest,
                               signature=identity.sign(approval_message(view.digest)))
        return self._call(self._stub.Approve, approval, timeout=self.timeout)

    # --- jobs ----------------------------------------------------------------------------------
    def run(self, enclave: AttestedEnclave, session_id: str, role: str, identity: Any, nonce: bytes,
            on_progress: Callable[[pb.Progress], None] | None = None) -> dict[str, Any]:
        """Queue the approved job and follow it; returns the bundle (encrypted samples, if any, in
        `self.samples`)."""
        view = self.manifest(session_id)
        problems = _enclave_problems(view.manifest, enclave)
        if problems:
            raise VerificationError("refusing to run: " + "; ".join(problems))
        signature = identity.sign(run_message(enclave.signing_public, session_id, view.digest, nonce))
        events = self._stub.RunAudit(pb.RunRequest(session_id=session_id, role=role, nonce=nonce,
                                                   manifest_digest=view.digest, signature=signature))
        result = self._follow(events, "audit run", on_progress)
        if result.get("nonce") != nonce.hex():
            raise VerificationError("the bundle does not carry the nonce this run was started with (a replay?)")
        return result

    def session_action(self, enclave: AttestedEnclave, action: str, session_id: str, role: str,
                       identity: Any) -> pb.SessionInfo:
        """`cancel` the session's queued or running job, or `close` the session (drops its assets)."""
        view = self.manifest(session_id)
        problems = _enclave_problems(view.manifest, enclave)
        if problems:
            raise VerificationError(f"refusing to {action}: " + "; ".join(problems))
        request = pb.SessionAction(session_id=session_id, role=role, manifest_digest=view.digest,
                                   signature=identity.sign(job_message(action, enclave.signing_public, session_id,
                                                                       view.digest)))
        method = self._stub.CancelJob if action == "cancel" else self._stub.CloseSession
        return self._call(method, request, timeout=self.timeout)

    def result(self, session_id: str) -> dict[str, Any]:
        """The session's last bundle (encrypted samples, if any, in `self.samples`)."""
        return self._follow(self._stub.GetResult(pb.ResultRequest(session_id=session_id), timeout=self.timeout),
                            "fetching the result")

    # --- step B: prepare ------------------------------------------------------------------------
    def prepare(self, enclave: AttestedEnclave, session_id: str, identity: Any, method: str, out_dir: Path,
                on_progress: Callable[[pb.Progress], None] | None = None) -> tuple[SealedAsset, bytes]:
        """Ask the enclave to turn the session's model into Mq by `method`; write Mq as `aaudit seal`
        would (out_dir/model.sealed, model.key (0600), model.json) and return it with the prepare
        bundle's bytes. Mq's data key is wrapped to a key made for this request only, so no
        long-lived provider key is needed and nobody else can open Mq."""
        view = self.manifest(session_id)
        m = view.manifest
        problems = _enclave_problems(m, enclave)
        model = m.digest_of("model")
        if model is None:
            problems.append("the session holds no model: upload M first")
        if problems:
            raise VerificationError("refusing to prepare: " + "; ".join(problems))
        paths = {name: out_dir / name for name in ("model.sealed", "model.key", "model.json", "prepare.json")}
        existing = [str(p) for p in paths.values() if p.exists() or p.is_symlink()]
        if existing:
            raise UnusableInput(f"{', '.join(existing)} already exist(s); choose another --out folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        recipient = keywrap.HpkeKeyPair.generate()
        nonce = os.urandom(NONCE_LEN)
        signature = identity.sign(prepare_message(enclave.signing_public, session_id, m.session.nonce, m.session.job,
                                                  model, method, recipient.suite, recipient.public_bytes(), nonce))
        events = self._stub.Prepare(pb.PrepareRequest(
            session_id=session_id, role="provider", method=method, recipient_suite=recipient.suite,
            recipient_public_key=recipient.public_bytes(), nonce=nonce, signature=signature))
        partial = out_dir / ".model.sealed.partial"
        sealed_sha256, done = hashlib.sha256(), None
        try:
            with open(partial, "xb") as sealed:
                for event in events:
                    kind = event.WhichOneof("event")
                    if done is not None:
                        raise EnclaveError(f"prepare: the enclave sent {kind} after the prepared model")
                    if kind == "progress":
                        if on_progress:
                            on_progress(event.progress)
                    elif kind == "sealed_chunk":
                        sealed.write(event.sealed_chunk)
                        sealed_sha256.update(event.sealed_chunk)
                    else:
                        done = event.prepared
            if done is None:
                raise EnclaveError("prepare: the enclave ended the stream without the prepared model")
            bundle = PrepareBundle.from_json(load_json(done.bundle, "the enclave's prepare bundle"))
            statement = parse_prepare_statement(bundle.envelope.payload)
            p = statement.predicate
            meta = load_json(done.sealed_meta, "the enclave's sealed-model description")
            if not isinstance(meta, dict) or meta.get("digest") != p.prepared.digest                     or meta.get("sealed", {}).get("sha256") != sealed_sha256.hexdigest():
                raise VerificationError("the sealed Mq received does not match its description or the statement")
            if bundle.nonce != nonce.hex() or p.request.provider != identity.public_raw()                     or p.original.digest != model or p.method.name != method:
                raise VerificationError("the prepare statement is not for this request (nonce, provider, model "
                                        "or method differ)")
            data_key = recipient.unwrap(done.wrapped_key, prepared_wrap_info(
                p.prepared.digest, enclave.signing_public, identity.public_raw(), session_id, m.session.job, nonce))
            write_secret_file(paths["model.key"], data_key)
            del data_key
            os.replace(partial, paths["model.sealed"])
            meta.update(sealed={**meta["sealed"], "file": "model.sealed"}, keyFile="model.key")
            paths["model.json"].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            paths["prepare.json"].write_bytes(done.bundle)
        except grpc.RpcError as exc:
            raise EnclaveError(f"prepare failed: {_error(exc, self.target)}") from None
        finally:
            partial.unlink(missing_ok=True)
        return SealedAsset.load(paths["model.json"]), done.bundle

    def attach_prepared(self, enclave: AttestedEnclave, session_id: str, identity: Any,
                        bundle: bytes) -> pb.AttachPreparedResult:
        """Attach the prepare bundle of the session's model (Mq, uploaded before); the manifest then
        names its statement, and both parties approve the chain."""
        view = self.manifest(session_id)
        problems = _enclave_problems(view.manifest, enclave)
        if problems:
            raise VerificationError("refusing to attach: " + "; ".join(problems))
        parsed = PrepareBundle.from_json(load_json(bundle, "prepare bundle"))
        signature = identity.sign(attach_message(enclave.signing_public, session_id, view.manifest.session.nonce,
                                                 view.manifest.digest_of("model") or "", parsed.statement_digest))
        return self._call(self._stub.AttachPrepared, pb.AttachPreparedRequest(
            session_id=session_id, role="provider", bundle=bundle, signature=signature), timeout=self.timeout)

    def _follow(self, events: Iterator[pb.RunEvent], what: str,
                on_progress: Callable[[pb.Progress], None] | None = None) -> dict[str, Any]:
        """Read a job's event stream: progress, the samples ciphertext in chunks (appended in place,
        so the records are held once), then the bundle, which must come last."""
        bundle = None
        self.samples = None
        try:
            for event in events:
                kind = event.WhichOneof("event")
                if bundle is not None:
                    raise EnclaveError(f"{what}: the enclave sent {kind} after the bundle")
                if kind == "progress":
                    if on_progress:
                        on_progress(event.progress)
                elif kind == "samples_chunk":
                    if self.samples is None:
                        self.samples = bytearray()
                    self.samples += event.samples_chunk
                else:
                    bundle = event.bundle
        except grpc.RpcError as exc:
            raise EnclaveError(f"{what} failed: {_error(exc, self.target)}") from None
        if bundle is None:
            self.samples = None
            raise EnclaveError(f"{what}: the enclave ended the stream without a bundle")
        return _bundle_json(bundle)


def _other(role: str) -> str:
    return "auditor" if role == "provider" else "provider"


def _enclave_problems(m: RunManifest, enclave: AttestedEnclave) -> list[str]:
    if m.enclave.signing_key != enclave.signing_public:
        return ["the session belongs to another enclave key than the one we attested"]
    return []


def _bundle_json(data: bytes) -> dict[str, Any]:
    bundle = load_json(data, "the enclave's bundle")  # the verifier's strict reader
    if not isinstance(bundle, dict):
        raise VerificationError("the enclave's bundle is not a JSON object")
    return bundle
