"""How fast a model upload into the enclave runs, against the same unseal + digest + store done locally.

Issue 12 asks: provisioning at >= 0.9x the speed of the same work done locally in the same run.
Method:

- A random asset (default 1024 MiB in 4 weight files, incompressible like weights) is made on a
  tmpfs and sealed once (`--chunk-kib`, default the sealer's).
- A (local): in a fresh child process, `SealedReader` -> `Unsealer` -> `DirectorySink` into a new
  folder on the tmpfs: read the sealed file, AES-256-GCM, per-file SHA-256, write the plaintext
  (perf/seal_throughput.py's "unseal-store" path, the very code it times).
- B (upload): a real sim enclave (`aaudit enclave serve --tee sim`) in its own process on loopback,
  over attested TLS and gRPC, as a provider's client would reach it: per round a new session is
  opened (not timed), then `EnclaveClient.upload` of the sealed model is timed from the first byte
  to the enclave's answer (the plaintext unsealed, digested and stored on the enclave's tmpfs, the
  digest checked), and the session is closed (not timed; it wipes the plaintext).
- The enclave is left to finish starting (its job fork server imports torch and lm-eval) before
  the first round.
- Rounds alternate A, B, B, A, ... (--rounds); reported: each side's median MB/s (10^6 plaintext
  bytes per second) and the median of per-round ratios B/A (speed), with the range.

Exit 1 if a run fails or, with --target, the median ratio is below it; 2 for unusable options.

    python perf/upload_speed.py [--size-mib 1024] [--rounds 5] [--target 0.9]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "perf")]

import seal_throughput  # noqa: E402 - the local unseal path and the random asset, timed the same way

TARGET = 0.9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="plaintext size in MiB (default 1024)")
    ap.add_argument("--files", type=int, default=4, help="number of weight files (default 4)")
    ap.add_argument("--chunk-kib", type=int, default=None, help="sealed chunk size in KiB (default: the sealer's)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each one local run and one upload (default 5)")
    ap.add_argument("--target", type=float, default=TARGET,
                    help=f"required median ratio upload/local speed; 0 reports only (default {TARGET})")
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="tmpfs to work in (default /dev/shm)")
    args = ap.parse_args()
    if args.rounds < 1 or args.size_mib < 1 or args.files < 1:
        ap.error("--rounds, --size-mib and --files must be at least 1")
    if not args.dir.is_dir():
        print(f"error: {args.dir} does not exist; give a tmpfs folder with --dir", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="aa-upload-") as tmp:
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, tmp: Path) -> int:
    from aaudit.client import EnclaveClient
    from e2e_helpers import Parties, open_session
    from enclave.measure import code_identity
    from sealing import stream
    from sealing.identity import generate_identity
    from verifier import policy

    t0 = time.perf_counter()
    size = args.size_mib << 20
    seal_throughput._make_asset(tmp / "asset", size, args.files)
    chunk = (args.chunk_kib << 10) if args.chunk_kib else stream.DEFAULT_CHUNK_SIZE
    sealed = stream.seal(tmp / "asset", tmp / "sealed", "model", chunk_size=chunk)
    shutil.rmtree(tmp / "asset")  # only the sealed file is read from here on
    (tmp / "scratch").mkdir()
    paths = {"asset": tmp / "asset", "sealed": sealed.sealed_path, "key": sealed.key_path, "scratch": tmp / "scratch"}
    provider, _, _ = generate_identity(tmp / "keys", "provider")
    auditor, _, _ = generate_identity(tmp / "keys", "auditor")
    enclave_policy = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]}},
                                  "enclave-policy")
    parties = Parties(tmp, b"", {"model": sealed}, provider, auditor, enclave_policy, tmp / "keys")
    print(f"asset: {sealed.plaintext_size / 1e6:.0f} MB in {args.files} files, sealed in {chunk >> 10} KiB chunks; "
          f"setup {time.perf_counter() - t0:.1f} s", flush=True)

    server, target = _start_enclave(tmp)
    _wait_until_idle(server.pid)
    local: list[float] = []
    upload: list[float] = []
    try:
        with EnclaveClient(target) as client:
            for i in range(args.rounds):
                order = ("local", "upload") if i % 2 == 0 else ("upload", "local")
                for side in order:
                    if side == "local":
                        out = seal_throughput._run_child("unseal-store", paths)
                        if out["result"] != sealed.digest:
                            return _fail("the local unseal gave another digest")
                        local.append(out["seconds"])
                    else:
                        upload.append(_upload(client, parties, open_session))
                print(f"round {i + 1}/{args.rounds}: local {_mbs(size, local[-1]):7.0f} MB/s   "
                      f"upload {_mbs(size, upload[-1]):7.0f} MB/s", flush=True)
    except Exception as exc:  # noqa: BLE001 - a failed run fails the benchmark, by name
        return _fail(f"a run failed: {type(exc).__name__}: {exc}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratios = sorted(a / b for a, b in zip(local, upload))  # speed ratio = time ratio inverted
    median = statistics.median(ratios)
    print(f"local unseal+digest+store: median {_mbs(size, statistics.median(local)):.0f} MB/s")
    print(f"upload over attested gRPC: median {_mbs(size, statistics.median(upload)):.0f} MB/s")
    print(f"upload / local speed: median {median:.3f}x (range {ratios[0]:.3f}-{ratios[-1]:.3f}, "
          f"{len(ratios)} rounds); target >= {args.target}")
    if args.target and median < args.target:
        print(f"NOT MET: {median:.3f}x < {args.target}x", flush=True)
        return 1
    return 0


def _start_enclave(tmp: Path) -> tuple[subprocess.Popen, str]:
    """`aaudit enclave serve --tee sim` in its own process, as a real enclave runs apart from its clients."""
    work, port_file = tmp / "enclave-work", tmp / "enclave.port"
    work.mkdir()
    log = open(tmp / "enclave.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "enclave", "serve", "--tee", "sim",
                             "--listen", "127.0.0.1:0", "--workdir", str(work), "--port-file", str(port_file)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"error: the enclave did not start; its log:\n{(tmp / 'enclave.log').read_text()}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def _wait_until_idle(pid: int, limit_s: float = 180.0) -> None:
    """Wait until the enclave and its children (the job fork server imports torch and lm-eval once
    it starts) use under 5% of a core, so that no round pays for the enclave's start."""
    def cpu_seconds() -> float:
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid or stat.parent.name == str(pid):  # the enclave or one of its children
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    deadline = time.monotonic() + limit_s
    last = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds()
        if now - last < 0.05:
            return
        last = now


def _upload(client, parties, open_session) -> float:  # noqa: ANN001
    sid = open_session(client, parties)
    enclave = client.attest(parties.enclave_policy)
    start = time.perf_counter()
    result = client.upload(enclave, sid, parties.sealed["model"], parties.provider)
    seconds = time.perf_counter() - start
    if result.digest != parties.sealed["model"].digest:
        raise RuntimeError("the enclave reports another digest")
    client.session_action(enclave, "close", sid, "provider", parties.provider)
    return seconds


def _mbs(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
