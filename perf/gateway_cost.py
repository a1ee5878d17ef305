"""What receipts and logging cost: completions through the receipt gateway against the same engine directly.

Issue 9 asks that receipts and logging cost at most 2% of throughput and at most 1 ms of median added
latency per response. This starts a gateway the real way (`aaudit gateway serve` with the simulated
TEE, on a signed audit bundle published to a real transparency log served over gRPC on loopback),
uploads the sealed model with `aaudit provider provision`, and so has the gateway start its engine.
The engine is the gateway's own child process: its port is read from that child's command line
(`/proc/*/stat` gives the parent, `/proc/<pid>/cmdline` the `--port` the launcher gave it), and
`GET /v1/models` on it must list the served model. Nothing in the gateway is changed or exposed.

Two paths to that one engine process, in the same run:
  A  the engine directly: plain HTTP on 127.0.0.1;
  B  the gateway: HTTPS pinned to the attested certificate (the serving evidence is verified first),
     request checked and re-serialised, a receipt signed and chained per response, receipts batched
     into Merkle trees and each batch published to the log over gRPC (every --batch-seconds).

For each concurrency level, rounds alternate A, B, A, B, ... (--pairs pairs); a round sends N
identical `/v1/completions` requests (every parameter explicit: temperature 0, a fixed seed, a small
max_tokens, so both paths hand the engine the same request) from C threads, each with its own
httpx.Client (HTTP/1.1 keep-alive). Before each round every client sends one untimed request, so
connections (and TLS sessions) are open: the steady state of long-lived clients is measured, not
handshakes. Throughput = N / (end of the last response - start of the round); latency = wall time of
one request, body read. Reported per level: median throughput A and B, the median of per-pair ratios
B/A (cost = 1 - ratio), median latencies A and B over all requests, and the median of per-pair
differences of round medians (added ms). Also the CPU time each process used per response (from
/proc), since the gateway, the engine, the log and this load generator share the machine's cores
(and the load average, since other processes may share them too). The engine runs torch on
--engine-threads threads (default 1: on a small machine more threads spin against each other).

Afterwards every receipt issued is fetched from `GET /v1/receipts/{id}` once the last batch is
published: all must be "logged"; a few are checked end to end as one-exchange disclosures
(`verifier.disclosure`: bytes, signature, serving evidence, audit, batch and log inclusion). Answers
through A and B must be the same text. Any of those failing, or the gateway not starting, exits 1;
a cost target that is not met is printed as such and the exit is still 0.

Last, receipts and logging alone: the gateway's own ReceiptChain issues receipts in this process
(CPU per receipt) and cuts and publishes batches to the same log (time per batch), which separates
their cost from the HTTPS hop's. The gateway's cost per response is roughly fixed, so its share
depends on how long the engine takes: the default tiny model answers in milliseconds (--model and
--max-tokens measure longer answers).

    python perf/gateway_cost.py [--pairs 5] [--concurrency 1 16] [--requests 32 64] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_COST = 0.02       # of throughput
MAX_ADDED_MS = 1.0    # median added latency per response
SERVED = "audited-model"
PATH = "/v1/completions"
PROMPT = "Once upon a time"
SEED = 1234


class Failed(Exception):
    """The benchmark could not run, or the gateway misbehaved: exit 1 with this message."""


@dataclass
class Round:
    elapsed_s: float
    latencies_s: list[float]
    texts: set[str]

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.elapsed_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5, help="A/B round pairs per concurrency level (default 5)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], metavar="C",
                    help="concurrent clients per level (default 1 16)")
    ap.add_argument("--requests", type=int, nargs="+", default=[32, 64], metavar="N",
                    help="requests per round, one per --concurrency level (default 32 64)")
    ap.add_argument("--max-tokens", type=int, default=8, help="max_tokens of every request (default 8)")
    ap.add_argument("--batch-seconds", type=float, default=2.0,
                    help="the gateway's receipt batch interval (default 2, the gateway's default)")
    ap.add_argument("--engine-threads", type=int, default=1,
                    help="torch CPU threads of the engine (default 1: fastest for a small model on a shared machine; "
                    "0 leaves torch's choice, one per core)")
    ap.add_argument("--model", type=Path, default=None, metavar="DIR",
                    help="a transformers model folder to serve (default: the demo's tiny model, built here)")
    args = ap.parse_args()
    if len(args.requests) != len(args.concurrency) or min(args.concurrency + args.requests) < 1 or args.pairs < 1 \
            or args.max_tokens < 1 or args.batch_seconds <= 0 \
            or args.engine_threads < 0:
        ap.error("give one --requests count per --concurrency level; all counts at least 1, --batch-seconds above 0, "
                 "--engine-threads at least 0")
    try:
        return run(args)
    except Failed as exc:
        print(f"gateway_cost: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    if args.model is not None and not (args.model / "config.json").is_file():
        raise Failed(f"--model {args.model}: not a model folder (no config.json); give a transformers model "
                     "folder, or leave --model out to use the demo's tiny model")
    from aaudit.user import GatewayClient
    from benchmarks.demo_assets import build_tiny_model
    from sealing.digest import file_listing
    from sealing.identity import generate_identity
    from sealing.stream import seal
    from tests.bundle_factory import gateway_policy_toml, make_bundle
    from tests.tlog_support import running_log
    from tlog.publish import publish_bundle
    from transformers.utils import logging as hf_logging
    from verifier import policy as policies

    tmp = Path(tempfile.mkdtemp(prefix="gateway-cost-"))
    proc: subprocess.Popen | None = None
    try:
        t0 = time.monotonic()
        hf_logging.disable_progress_bar()
        model = args.model or build_tiny_model(tmp / "model")
        provider, provider_key, _ = generate_identity(tmp / "keys", "provider")
        seal(model, tmp / "sealed", "model")  # what `aaudit provider provision` uploads below
        made = make_bundle(provider=provider._key, model_listing=file_listing(model))
        with running_log(tmp / "log.db") as log:
            made.bundle = publish_bundle(log.client, made.bundle, log_key=log.key)
            bundle_path = made.write(tmp)
            policy_path = tmp / "policy.toml"
            policy_path.write_text(gateway_policy_toml(made, log.key))
            policy = policies.load(policy_path)
            proc, target = start_gateway(tmp, bundle_path, policy_path, log.target, args.batch_seconds,
                                          args.engine_threads)
            cli("provider", "provision", str(tmp / "sealed"), "--gateway", target, "--policy", str(policy_path),
                "--identity", str(provider_key))
            engine_pid, engine_port = find_engine(proc.pid)
            with GatewayClient(target) as gc:
                attested = gc.attest(policy)  # the pinned certificate is the one the evidence binds
                print(f"gateway https://{target} (pid {proc.pid}, sim evidence verified, TLS key pinned) in front "
                      f"of engine http://127.0.0.1:{engine_port} (pid {engine_pid}); set up in "
                      f"{time.monotonic() - t0:.0f} s")
                cores = len(os.sched_getaffinity(0))
                print(f"{cores} CPU cores shared by the engine, the gateway, the log and this load generator: the "
                      f"gateway's CPU time competes with the engine's (load average now {os.getloadavg()[0]:.1f})")
                body = json.dumps({"model": SERVED, "prompt": PROMPT, "max_tokens": args.max_tokens,
                                   "temperature": 0, "top_p": 1, "seed": SEED, "stop": [], "stream": False}).encode()
                bench = Bench(f"http://127.0.0.1:{engine_port}", f"https://{target}", gc.ssl_context, body,
                              {"gateway": proc.pid, "engine": engine_pid, "load+log": os.getpid()})
                results = [bench.level(c, n, args.pairs) for c, n in zip(args.concurrency, args.requests)]
                texts = set().union(*(r.texts for level in results for pair in level.pairs for r in pair))
                if len(texts) != 1:
                    raise Failed(f"the engine answered differently directly and through the gateway: {len(texts)} "
                                 "distinct texts for one request")
                for level in results:
                    level.report()
                check_receipts(gc, attested, made.bundle, policy, bench, args.batch_seconds)
                receipt_cost(log, attested.serving, body, args.max_tokens)
                engine_ms = statistics.median(x for a, _ in results[0].pairs for x in a.latencies_s) * 1000
                print(f"note: the engine answers in {engine_ms:.0f} ms here (median at {results[0].concurrency} "
                      f"client(s), max_tokens {args.max_tokens}); the gateway's cost per response is about fixed, so "
                      "its share shrinks as answers take longer (--model, --max-tokens). Load average now "
                      f"{os.getloadavg()[0]:.1f} on {cores} cores")
            code, proc = stop_gateway(proc), None
            if code != 0:
                raise Failed(f"the gateway did not stop cleanly on SIGTERM (exit {code})")
    finally:
        if proc is not None:
            stop_gateway(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


# --- the gateway and its engine --------------------------------------------------------------------
def cli(*argv: str) -> None:
    res = subprocess.run([sys.executable, "-m", "aaudit.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        raise Failed(f"`aaudit {' '.join(argv[:2])}` failed ({res.returncode}): {res.stderr.strip()[-2000:]}")


def start_gateway(tmp: Path, bundle: Path, policy: Path, log_target: str, batch_s: float,
                  engine_threads: int) -> tuple[subprocess.Popen, str]:
    port_file, output = tmp / "gateway.port", tmp / "gateway.out"
    threads = [f"--engine-arg=--threads={engine_threads}"] if engine_threads else []
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "gateway", "serve", "--bundle", str(bundle),
                                 "--policy", str(policy), "--log", log_target, "--listen", "127.0.0.1:0",
                                 "--tee", "sim", "--gpu-evidence", "none", "--batch-seconds", str(batch_s),
                                 "--port-file", str(port_file), *threads], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise Failed(f"the gateway did not start; its output:\n{output.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def stop_gateway(proc: subprocess.Popen) -> int | None:
    """SIGTERM, as an operator stops it: the gateway stops its engine, wipes the model and publishes its
    last batch. Returns its exit code (None if it had to be killed after 60 s)."""
    proc.terminate()
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def find_engine(gateway_pid: int) -> tuple[int, int]:
    """The gateway's engine child and the port its launcher gave it; it must serve the model."""
    import httpx

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            if ppid != gateway_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
        if b"gateway.engine" in argv and b"--port" in argv[:-1]:
            found.append((int(stat.parent.name), int(argv[argv.index(b"--port") + 1])))
    if len(found) != 1:
        raise Failed(f"expected one embedded engine child of the gateway (pid {gateway_pid}), found {len(found)}")
    pid, port = found[0]
    listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", trust_env=False, timeout=10).json()
    if [m.get("id") for m in listed.get("data", [])] != [SERVED]:
        raise Failed(f"the server on the engine's port {port} does not serve {SERVED!r}")
    return pid, port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load ------------------------------------------------------------------------------------------
@dataclass
class Level:
    concurrency: int
    requests: int
    pairs: list[tuple[Round, Round]]
    cpu_ms: dict[str, tuple[float, float]]   # process -> (CPU ms per response in A rounds, in B rounds)

    def report(self) -> None:
        a_tp = statistics.median(a.throughput for a, _ in self.pairs)
        b_tp = statistics.median(b.throughput for _, b in self.pairs)
        ratios = [b.throughput / a.throughput for a, b in self.pairs]
        a_lat = statistics.median(x for a, _ in self.pairs for x in a.latencies_s) * 1000
        b_lat = statistics.median(x for _, b in self.pairs for x in b.latencies_s) * 1000
        adds = [(statistics.median(b.latencies_s) - statistics.median(a.latencies_s)) * 1000 for a, b in self.pairs]
        ratio, added = statistics.median(ratios), statistics.median(adds)
        cost = 1 - ratio
        print(f"\n{self.concurrency} concurrent client(s), {len(self.pairs)} A/B pairs of {self.requests} requests:")
        print(f"  throughput  A engine {a_tp:7.1f} req/s   B gateway {b_tp:7.1f} req/s   median B/A {ratio:.3f}  "
              f"(cost {cost * 100:.1f}%; pairs {min(ratios):.3f} to {max(ratios):.3f})")
        print(f"  latency     A engine {a_lat:7.2f} ms      B gateway {b_lat:7.2f} ms      median added {added:.2f} ms  "
              f"(pairs {min(adds):.2f} to {max(adds):.2f})")
        print("  CPU per response (A / B): " + ", ".join(f"{name} {a:.2f} / {b:.2f} ms"
                                                        for name, (a, b) in self.cpu_ms.items()))
        print(f"  target: throughput cost at most {MAX_COST * 100:.0f}%: {'met' if cost <= MAX_COST else 'NOT met'}")
        print(f"  target: median added latency at most {MAX_ADDED_MS:.0f} ms: "
              f"{'met' if added <= MAX_ADDED_MS else 'NOT met'}")


class Bench:
    """The two paths to one engine, the request they send, and every receipt the gateway gave."""

    def __init__(self, engine_url: str, gateway_url: str, ssl_context, body: bytes, pids: dict[str, int]) -> None:  # noqa: ANN001
        self.urls = {"A": (engine_url, None), "B": (gateway_url, ssl_context)}
        self.body, self.pids = body, pids
        self.receipts: list[str] = []                 # every receipt id seen, in order
        self.kept: list[tuple[str, bytes]] = []       # a few (receipt id, response bytes) to verify

    def level(self, concurrency: int, requests: int, pairs: int) -> Level:
        import httpx

        clients = {side: [httpx.Client(base_url=url, verify=ctx if ctx is not None else True, trust_env=False,
                                       timeout=300) for _ in range(concurrency)]
                   for side, (url, ctx) in self.urls.items()}
        cpu = {side: dict.fromkeys(self.pids, 0.0) for side in "AB"}
        done: list[tuple[Round, Round]] = []
        try:
            for _ in range(pairs):
                pair = []
                for side in "AB":
                    before = {name: cpu_s(pid) for name, pid in self.pids.items()}
                    r = self.round(clients[side], requests, side == "B")
                    for name, pid in self.pids.items():
                        cpu[side][name] += cpu_s(pid) - before[name]
                    pair.append(r)
                done.append((pair[0], pair[1]))
        finally:
            for side in clients.values():
                for c in side:
                    c.close()
        total = pairs * (requests + concurrency)  # each round's untimed warm-up requests used CPU too
        return Level(concurrency, requests, done, {name: (cpu["A"][name] * 1000 / total, cpu["B"][name] * 1000 / total)
                                                   for name in self.pids})

    def round(self, clients: list, n: int, gateway: bool) -> Round:
        """N requests from len(clients) threads; each client sends one untimed request first."""
        lock, left = threading.Lock(), [n]
        start = threading.Barrier(len(clients) + 1)
        out: list[tuple[float, float, str, str, bytes]] = []   # (latency, end time, text, receipt id, bytes)
        errors: list[str] = []

        def one(client) -> tuple[float, float, str, str, bytes]:  # noqa: ANN001
            t = time.perf_counter()
            resp = client.post(PATH, content=self.body, headers={"content-type": "application/json"})
            end = time.perf_counter()
            if resp.status_code != 200:
                raise Failed(f"{'gateway' if gateway else 'engine'} answered {resp.status_code}: {resp.text[:300]}")
            rid = resp.headers.get("aaudit-receipt-id", "")
            if gateway and not rid:
                raise Failed("the gateway answered without a receipt id")
            return end - t, end, json.loads(resp.content)["choices"][0]["text"], rid, resp.content

        def worker(client) -> None:  # noqa: ANN001
            try:
                warm = one(client)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(f"{type(exc).__name__}: {exc}")
                warm = None
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            if warm is None:
                return
            with lock:
                if warm[3]:
                    self.receipts.append(warm[3])
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                try:
                    got = one(client)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                with lock:
                    out.append(got)
                    if got[3]:
                        self.receipts.append(got[3])

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        if errors or len(out) != n:
            raise Failed(f"a request failed: {errors[0] if errors else f'{len(out)} of {n} answered'}")
        r = Round(max(e for _, e, _, _, _ in out) - t0, [x[0] for x in out], {x[2] for x in out})
        if gateway:
            self.kept.append((out[-1][3], out[-1][4]))
        return r


# --- the receipts ----------------------------------------------------------------------------------
def check_receipts(gc, attested, bundle: dict, policy, bench: Bench, batch_s: float, verify: int = 3) -> None:  # noqa: ANN001
    """Every receipt issued is logged once the last batch is published; a few verify as disclosures."""
    from verifier.disclosure import verify_disclosure
    from verifier.receipt import Disclosure, Exchange

    issued = bench.receipts
    last = gc.receipt(issued[-1], wait_logged_s=max(30.0, 5 * batch_s))
    if last.status != "logged":
        raise Failed(f"the last receipt is still {last.status} {max(30.0, 5 * batch_s):.0f} s after the load stopped "
                     f"({last.log_error or 'no log error reported'})")
    status: dict[str, int] = {}
    entries = set()
    proofs = {}
    for rid in issued:  # one issued just after the last one seen may sit in a later batch: wait for it too
        p = gc.receipt(rid, wait_logged_s=2 * batch_s + 5)
        status[p.status] = status.get(p.status, 0) + 1
        if p.batch is not None and p.batch.log_entry is not None:
            entries.add(p.batch.log_entry.index)
        proofs[rid] = p
    print(f"\nreceipts: {len(issued)} issued (timed and warm-up requests), "
          + ", ".join(f"{k} {v}" for k, v in sorted(status.items()))
          + f"; {len(entries)} batch entries in the transparency log")
    if status.get("logged", 0) != len(issued):
        raise Failed(f"not every receipt reached the log: {status}")
    step = max(1, len(bench.kept) // verify)
    checked = bench.kept[::step][:verify]
    for rid, response in checked:
        disclosure = Disclosure((Exchange(bench.body, response, proofs[rid]),), attested.serving, bundle)
        verdict = verify_disclosure(disclosure.to_json(), policy, at=datetime.now(timezone.utc))
        if not verdict.verified:
            raise Failed(f"receipt {rid} does not verify as a disclosure: "
                         + "; ".join(f"{s.name}: {s.reason}" for s in verdict.failures))
    print(f"{len(checked)} receipts checked end to end as disclosures (bytes, signature, evidence, audit, batch, "
          "log inclusion): verified")


def receipt_cost(log, serving, body: bytes, max_tokens: int, batches: int = 5, size: int = 100) -> None:  # noqa: ANN001
    """Receipts and logging alone, in this process with the gateway's own code: issuing (sign, chain)
    and cutting a batch and publishing it to the same log over gRPC (a throwaway key signs them)."""
    import hashlib
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.receipts import ReceiptChain
    from tlog.publish import publish_entry
    from verifier.receipt import GatewayRef, RequestRef, ResponseRef, Sampling

    key = Ed25519PrivateKey.generate()
    chain = ReceiptChain(key, GatewayRef(key.public_key().public_bytes_raw(), serving.code_identity, serving.platform),
                         serving.model, serving.audit)
    request = RequestRef("POST", PATH, hashlib.sha256(body).hexdigest())
    response = ResponseRef(200, hashlib.sha256(b"response").hexdigest(), False)
    sampling = Sampling(0.0, 1.0, max_tokens, SEED, ())
    issue_cpu = publish_wall = 0.0
    for _ in range(batches):
        c0 = time.thread_time()
        for _ in range(size):
            chain.issue(secrets.token_hex(16), request, response, sampling, "")
        issue_cpu += time.thread_time() - c0
        t0 = time.perf_counter()
        batch = chain.cut_batch()
        chain.logged(batch, publish_entry(log.client, batch.log_bytes, log_key=log.key))
        publish_wall += time.perf_counter() - t0
    n = batches * size
    print(f"receipts alone (the gateway's code, in this process): issuing (sign, chain) {issue_cpu / n * 1000:.3f} ms "
          f"CPU per receipt; cutting a batch of {size} and publishing it to the log over gRPC "
          f"{publish_wall / batches * 1000:.1f} ms ({publish_wall / n * 1000:.3f} ms per receipt, off the answer path)")


if __name__ == "__main__":
    raise SystemExit(main())
