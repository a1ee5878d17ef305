"""The enclave service under attack over real gRPC: stalls, relays, plaintext, crash leftovers."""

from __future__ import annotations

import base64
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
    """Review finding: eight idle Upload streams took every worker. Now a stream that has not sent
    its signed header holds no upload slot, only one of 2 x max_concurrent_uploads pending places
    (one more is refused at once), and is cut after upload_header_s; Attest answers within 2 s."""
    enclave = RunningEnclave(Limits(max_concurrent_uploads=8, upload_header_s=2.0))
    release = threading.Event()
    try:
        with enclave.client() as c:
            sid = open_session(c, parties)
            idle = [_idle_upload(c._channel, release) for _ in range(16)]
            time.sleep(0.5)
            extra = _idle_upload(c._channel, release)
            with pytest.raises(grpc.RpcError) as refused:
                extra.result(timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "uploads are starting at once" in refused.value.details()
            with EnclaveClient(enclave.target) as other:  # another client, another connection
                t0 = time.monotonic()
                other.attest(parties.enclave_policy)
                assert time.monotonic() - t0 < 2.0
            for f in idle:  # the watchdog cuts every stream that sent no header in time
                with pytest.raises(grpc.RpcError) as cut:
                    f.result(timeout=10)
                assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INVALID_ARGUMENT)
            e = c.attest(parties.enclave_policy)  # the places are free again: a real upload goes through
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


def _session_with_spec(c: EnclaveClient, parties, spec_text: str, tmp_path: Path, name: str) -> tuple[str, str]:
    """A session with the parties' model and data and an auditor spec of `spec_text`, both approved;
    returns (session id, spec digest)."""
    from aaudit.client import ExpectedRun
    from sealing.stream import seal

    (tmp_path / f"{name}.toml").write_text(spec_text)
    spec = seal(tmp_path / f"{name}.toml", tmp_path / f"sealed-{name}", "spec")
    sid = open_session(c, parties)
    e = c.attest(parties.enclave_policy)
    c.upload(e, sid, parties.sealed["model"], parties.provider)
    c.upload(e, sid, parties.sealed["dataset"], parties.auditor)
    c.upload(e, sid, spec, parties.auditor)
    digests = {"model": parties.sealed["model"].digest, "dataset": parties.sealed["dataset"].digest,
               "spec": spec.digest}
    c.approve(e, sid, "provider", parties.provider,
              ExpectedRun(digests, {"auditor": parties.auditor.public_raw()}, allow_samples=True))
    c.approve(e, sid, "auditor", parties.auditor,
              ExpectedRun(digests, {"provider": parties.provider.public_raw()}, allow_samples=True))
    return sid, spec.digest


_FOREVER = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"


def _looping_spec(parties, deadline: str) -> str:
    from benchmarks.demo_assets import demo_spec_toml

    from sealing.identity import load_samples_key

    recipient = base64.b64encode(load_samples_key(parties.samples_key).public_bytes()).decode()
    text = demo_spec_toml(samples_recipient=recipient)
    looping = text.replace('doc_to_text = "Question: {{question}}', f'doc_to_text = "{_FOREVER}Question: {{{{question}}}}', 1)
    assert looping != text
    return f'deadline = "{deadline}"\n' + looping


def test_a_spec_that_loops_for_ever_ends_at_its_deadline_and_the_next_job_runs(parties, tmp_path: Path) -> None:
    """Review finding: a spec could run for ever and the enclave refused all work until restart.
    Meanwhile, with eight idle uploads open and the job running, another client attests within 2 s."""
    from e2e_helpers import run

    enclave = RunningEnclave(Limits(upload_idle_s=20.0))
    release = threading.Event()
    try:
        with enclave.client() as c:
            sid, _ = _session_with_spec(c, parties, _looping_spec(parties, "6s"), tmp_path, "forever")
            failure: list[BaseException] = []
            runner = threading.Thread(target=lambda: _expect_failure(lambda: run(c, parties, sid), failure))
            t0 = time.monotonic()
            runner.start()
            idle = [_idle_upload(c._channel, release) for _ in range(8)]
            time.sleep(2.0)
            with EnclaveClient(enclave.target) as other:
                t1 = time.monotonic()
                other.attest(parties.enclave_policy)
                assert time.monotonic() - t1 < 2.0, "Attest must answer while uploads idle and a job runs"
            runner.join(timeout=120)
            assert not runner.is_alive()
            elapsed = time.monotonic() - t0
            assert failure and "DEADLINE_EXCEEDED" in str(failure[0]), failure
            assert elapsed < 60, f"the job ended {elapsed:.0f} s after it started; its deadline was 6 s"
            release.set()
            for f in idle:
                with pytest.raises(grpc.RpcError):
                    f.result(timeout=30)
            sid2 = open_session(c, parties)  # the enclave is free: the next job runs to its bundle
            provision_and_run = _normal_job(c, parties, sid2)
            assert provision_and_run["nonce"]
    finally:
        release.set()
        enclave.stop()


def _expect_failure(fn, out: list[BaseException]) -> None:  # noqa: ANN001
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        out.append(exc)


def _normal_job(c: EnclaveClient, parties, sid: str) -> dict:
    from e2e_helpers import approve_both, provision, run

    provision(c, parties, sid)
    approve_both(c, parties, sid)
    return run(c, parties, sid)


def test_either_party_cancels_a_running_job(parties, tmp_path: Path) -> None:
    from e2e_helpers import run

    enclave = RunningEnclave()
    try:
        with enclave.client() as c:
            sid, _ = _session_with_spec(c, parties, _looping_spec(parties, "10m"), tmp_path, "cancel")
            failure: list[BaseException] = []
            runner = threading.Thread(target=lambda: _expect_failure(lambda: run(c, parties, sid), failure))
            runner.start()
            deadline = time.monotonic() + 60
            while c.manifest(sid).state != "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            e = c.attest(parties.enclave_policy)
            stranger = _stranger()
            with pytest.raises(EnclaveError, match="PERMISSION_DENIED"):
                c.session_action(e, "cancel", sid, "provider", stranger)
            t0 = time.monotonic()
            c.session_action(e, "cancel", sid, "provider", parties.provider)
            runner.join(timeout=30)
            assert not runner.is_alive() and time.monotonic() - t0 < 10
            assert failure and "CANCELLED" in str(failure[0]), failure
            view = c.manifest(sid)
            assert view.state == "open" and view.manifest.session.job == 2 and view.approved_by == []
            assert set(view.manifest.assets) == {"model", "dataset", "spec"}, "a cancelled job keeps the assets"
    finally:
        enclave.stop()


def _stranger():  # noqa: ANN202
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from sealing.identity import Identity

    return Identity(ed25519.Ed25519PrivateKey.generate())


def test_sigterm_stops_the_enclave_within_seconds_mid_job(parties, tmp_path: Path) -> None:
    """A hung enclave ignored SIGTERM. Now `aaudit enclave serve` cancels the job, kills its
    process, wipes its work folder and exits within seconds."""
    import signal
    import subprocess
    import sys

    work = tmp_path / "shm"
    work.mkdir()
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "enclave", "serve", "--tee", "sim",
                             "--gpu-evidence", "none", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--workdir", str(work), "--unsafe-allow-disk-workdir"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        from e2e_helpers import run

        with EnclaveClient(target) as c:
            sid, _ = _session_with_spec(c, parties, _looping_spec(parties, "10m"), tmp_path, "term")
            failure: list[BaseException] = []
            runner = threading.Thread(target=lambda: _expect_failure(lambda: run(c, parties, sid), failure))
            runner.start()
            while c.manifest(sid).state != "running" and time.monotonic() < deadline + 60:
                time.sleep(0.2)
            assert any(work.iterdir()), "the job's plaintext model sits in the work folder while it runs"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            assert time.monotonic() - t0 < 15
            runner.join(timeout=20)
        assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
        assert failure, "the client sees its run end"
        assert list(work.iterdir()) == [], "no plaintext left behind"
        out = proc.stdout.read() if proc.stdout else ""
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_upload_read_ahead_keeps_order_errors_and_stops_with_the_handler() -> None:
    """The read-ahead thread hands messages over in order, then the stream's own error (the RpcError
    of a cut stream); a handler that stops early stops the reader, which then reads no further."""
    import threading
    import time

    from enclave.service import _prefetched

    class Cut(Exception):
        pass

    def stream():
        yield from (1, 2, 3)
        raise Cut("cut off")

    got = []
    with pytest.raises(Cut, match="cut off"):
        for item in _prefetched(stream(), 2):
            got.append(item)
    assert got == [1, 2, 3]

    read = []

    def endless():
        for i in range(1_000_000):
            read.append(i)
            yield i

    before = threading.active_count()
    items = _prefetched(endless(), 2)
    assert next(items) == 0
    items.close()  # the handler gave up (an error, a refused chunk)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, "the reader thread ended"
    assert len(read) <= 5, "and read no further than the queue's depth"
