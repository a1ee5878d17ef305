"""The enclave service under attack over real gRPC: stalls, relays, plaintext, crash leftovers."""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from e2e_helpers import RunningEnclave, make_parties, open_session

from aaudit.client import AttestationRefused, EnclaveClient, EnclaveError
from enclave.session import Limits
from protos import enclave_pb2 as pb
from protos import enclave_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory):
    return make_parties(tmp_path_factory.mktemp("parties"))


def _idle_upload(target_channel: grpc.Channel, release: threading.Event) -> grpc.Future:
    """An upload stream that opens and then sends nothing until `release` (or its cut-off)."""

    def parts():
        release.wait(30)
        if False:  # pragma: no cover - a generator that yields nothing
            yield pb.UploadPart()

    return pb_grpc.EnclaveStub(target_channel).Upload.future(parts(), timeout=60)


def test_idle_uploads_cannot_stall_attest_and_are_cut_off(parties) -> None:
    """Review finding: eight idle Upload streams took every worker. Now: uploads hold at most their
    slots, a ninth is refused at once, Attest answers within 2 s, idle streams are cut off."""
    enclave = RunningEnclave(Limits(max_concurrent_uploads=8, upload_idle_s=3.0))
    release = threading.Event()
    try:
        with enclave.client() as c:
            open_session(c, parties)
            idle = [_idle_upload(c._channel, release) for _ in range(8)]
            time.sleep(0.5)
            extra = _idle_upload(c._channel, release)
            with pytest.raises(grpc.RpcError) as refused:
                extra.result(timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "uploads are in flight" in refused.value.details()
            with EnclaveClient(enclave.target) as other:  # another client, another connection
                t0 = time.monotonic()
                other.attest(parties.enclave_policy)
                assert time.monotonic() - t0 < 2.0
            for f in idle:  # the watchdog cuts every idle stream after upload_idle_s
                with pytest.raises(grpc.RpcError) as cut:
                    f.result(timeout=10)
                assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INVALID_ARGUMENT)
            sid = open_session(c, parties)  # the slots are free again: a real upload goes through
            e = c.attest(parties.enclave_policy)
            c.upload(e, sid, parties.sealed["spec"], parties.auditor)
    finally:
        release.set()
        enclave.stop()


class _Relay(pb_grpc.EnclaveServicer):
    """A machine in the middle with its own TLS certificate that relays Attest to the real enclave."""

    def __init__(self, upstream: EnclaveClient) -> None:
        self.upstream = upstream

    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestResponse:
        return self.upstream._stub.Attest(request)


def test_a_relay_with_its_own_tls_key_is_refused(parties) -> None:
    from enclave.keys import TlsIdentity

    enclave = RunningEnclave()
    relay_tls = TlsIdentity.generate()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    try:
        with enclave.client() as upstream:
            pb_grpc.add_EnclaveServicer_to_server(_Relay(upstream), server)
            port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(relay_tls.key_pem,
                                                                                       relay_tls.cert_pem)]))
            server.start()
            with EnclaveClient(f"127.0.0.1:{port}") as victim, pytest.raises(AttestationRefused) as exc:
                victim.attest(parties.enclave_policy)
            assert "channel key" in str(exc.value) and "machine in the middle" in str(exc.value)
    finally:
        server.stop(None)
        enclave.stop()


def test_plaintext_is_loopback_only_and_never_silent(parties, tmp_path: Path) -> None:
    from enclave.measure import code_identity
    from enclave.service import EnclaveService, serve
    from enclave.tee.select import make_attester
    from verifier.errors import UnusableInput

    service = EnclaveService(make_attester("sim"), code_identity(), tmp_path, tls=False)
    try:
        with pytest.raises(UnusableInput, match="loopback development only"):
            serve(service, "0.0.0.0:0")
        server = serve(service, "127.0.0.1:0")
        target = f"127.0.0.1:{server.bound_port}"
        with pytest.raises(EnclaveError, match="TLS handshake failed.*insecure-plaintext-loopback"):
            EnclaveClient(target, timeout=5)
        with EnclaveClient(target, insecure_plaintext=True) as c:
            e = c.attest(parties.enclave_policy)
            assert e.tls_public == b""
            assert any("plaintext channel" in s.reason for s in e.verdict.steps)
        server.stop(None)
    finally:
        service.close()


def test_stale_job_folders_are_wiped_at_start(tmp_path: Path) -> None:
    """Review finding: after kill -9 mid-job the plaintext model stayed on tmpfs."""
    from enclave.workdir import PREFIX, make_workdir

    dead = tmp_path / f"{PREFIX}{_dead_pid()}-abcd"
    (dead / "model-1").mkdir(parents=True)
    (dead / "model-1" / "model.safetensors").write_bytes(b"plaintext weights")
    legacy = tmp_path / f"{PREFIX}x1y2"
    legacy.mkdir()
    live = tmp_path / f"{PREFIX}{os.getpid()}-live"
    live.mkdir()
    work = make_workdir(tmp_path, unsafe_allow_disk=True)
    assert not dead.exists() and not legacy.exists(), "stale plaintext must be gone after a restart"
    assert live.exists(), "a running enclave's folder is left alone"
    assert work.stat().st_mode & 0o777 == 0o700


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
