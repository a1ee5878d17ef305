"""Booting a receipt gateway: check the audit, make the keys, serve HTTPS, publish receipt batches.

The gateway refuses to start unless the audit bundle it is given verifies under the operator's
policy and is in the transparency log (receipts name its log entry). The TLS private key goes to
uvicorn through a memory-only file (memfd) that is closed once loaded: it never touches a disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import uvicorn

from enclave.keys import BootKeys, TlsIdentity
from enclave.tee import CompositeAttester
from gateway.app import Gateway, Settings, build_app
from gateway.receipts import publish_loop
from verifier.bundle import AuditBundle, verify_bundle
from verifier.errors import AAuditError, UnusableInput
from verifier.inputs import host_port
from verifier.logentry import LogEntry
from verifier.models import Verdict
from verifier.policy import Policy
from verifier.receipt import AuditRef, payload_digest
from verifier.statement import parse_statement

log = logging.getLogger("aaudit.gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it re-raises SIGTERM after shutting down, which would
    kill the process before the engine is stopped and the model wiped. `run` handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AuditNotServable(AAuditError):
    """The audit bundle does not verify under the operator's policy, or is not logged."""

    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


@dataclass(frozen=True)
class ServedAudit:
    bundle: dict[str, Any]
    ref: AuditRef
    model_digest: str
    provider_key: bytes
    dtype: str            # the dtype the audit ran the model in: the engine serves in the same


def check_audit(bundle: dict[str, Any], policy: Policy) -> ServedAudit:
    """The audit a gateway may serve under: verified under `policy`, with a log entry."""
    verdict = verify_bundle(bundle, policy, at=datetime.now(timezone.utc))
    if not verdict.verified:
        why = "; ".join(f"{s.name}: {s.reason}" for s in verdict.failures) or \
            "the policy leaves unpinned: " + ", ".join(verdict.unpinned)
        raise AuditNotServable(f"refusing to serve: the audit bundle does not verify under the policy ({why})", verdict)
    parsed = AuditBundle.from_json(bundle)
    if parsed.log_entry is None:
        raise AuditNotServable("refusing to serve: the audit bundle is not in a transparency log (receipts name its "
                               "log entry); publish it with `aaudit log publish` first")
    entry = LogEntry.from_json(parsed.log_entry)
    statement = parse_statement(parsed.envelope.payload)
    return ServedAudit(bundle, AuditRef(payload_digest(parsed.envelope), entry.origin, entry.index),
                       statement.subject_digest, statement.party_key("provider"), statement.predicate.runtime.dtype)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def tls_context(tls: TlsIdentity) -> ssl.SSLContext:
    """A server context for the boot certificate, loaded from memory-only files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert_fd, key_fd = _memfd("aaudit-cert", tls.cert_pem), _memfd("aaudit-key", tls.key_pem)
    try:
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)
    context.set_alpn_protocols(["http/1.1"])
    return context


def bind(listen: str) -> socket.socket:
    host, _, port = host_port(listen, "--listen", "127.0.0.1:8443", listen=True).rpartition(":")
    host = host.strip("[]")
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP.
    # Without it, Nagle holds a response's body record until the client ACKs its header record, and the
    # client delays that ACK: about 40 ms more per answer (perf/gateway_cost.py measured it).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise UnusableInput(f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


def run(audit: ServedAudit, attester: CompositeAttester, code_identity: str, workdir: Path, settings: Settings,
        start_engine: Callable[[Path], Any], publish: Callable[[bytes], LogEntry], sock: socket.socket, *,
        batch_interval_s: float = 2.0, batch_max: int = 1024, limit_concurrency: int = 1024,
        on_ready: Callable[[Gateway], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then stop the engine and publish the last batch."""
    keys = BootKeys.generate()
    gw = Gateway(keys, attester, code_identity, audit.bundle, audit.ref, audit.model_digest, audit.provider_key,
                 workdir, settings, start_engine)
    gw.chain.batch_max = batch_max
    stop = threading.Event()
    publisher = threading.Thread(target=publish_loop, args=(gw.chain, publish, stop),
                                 kwargs={"interval_s": batch_interval_s}, name="receipt-publisher", daemon=True)
    publisher.start()
    config = uvicorn.Config(build_app(gw), log_level="warning", access_log=False, limit_concurrency=limit_concurrency,
                            timeout_keep_alive=30, timeout_graceful_shutdown=5, ssl_context_factory=lambda *_: tls_context(keys.tls),
                            lifespan="on")
    server = _Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    if on_ready is not None:
        on_ready(gw)
    try:
        server.run(sockets=[sock])
    finally:
        gw.close()
        stop.set()
        gw.chain.wake()
        publisher.join(timeout=15)
