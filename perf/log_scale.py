"""Transparency log at scale: bulk appends, proof generation and verification, database size.

    python perf/log_scale.py [--entries 1000000] [--batch 1000] [--entry-bytes 256] [--db PATH]

Appends go through `SQLiteLog.append_many` (one transaction, one fsync and one signed checkpoint
per batch, as the server's group commit does under load). Then, on the full tree: inclusion
proof generation and verification for random entries, consistency proofs between random sizes,
and, last, gRPC appends from concurrent publishers in another process (each acknowledged only
after its commit, so the rate is set by how many share an fsync).
Prints medians and rates; targets: >= 2,000 appends/s and <= 5 ms per inclusion proof.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlog.client import LogClient  # noqa: E402
from tlog.log import SQLiteLog  # noqa: E402
from tlog.server import serve  # noqa: E402
from verifier.checkpoint import verify_checkpoint  # noqa: E402
from verifier.merkle import leaf_hash, verify_consistency, verify_inclusion  # noqa: E402


def _entry(i: int, size: int) -> bytes:
    head = f'{{"entry":{i},"pad":"'.encode()
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if not p.name.endswith(".key"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000, help="entries per transaction (default 1000)")
    ap.add_argument("--entry-bytes", type=int, default=256, help="size of each entry (default 256)")
    ap.add_argument("--samples", type=int, default=1000, help="proofs to time (default 1000)")
    ap.add_argument("--grpc-appends", type=int, default=6000, help="appends over gRPC at the end (default 6000)")
    ap.add_argument("--publishers", type=int, default=64, help="concurrent gRPC publishers (default 64)")
    ap.add_argument("--db", type=Path, help="database path (default: a temporary directory, removed after)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="log_scale.") as tmp:
        db = args.db or Path(tmp) / "log.db"
        log = SQLiteLog(db, origin="perf.example/log")
        key = log.signer.verifier_key
        start_size = log.size
        n = args.entries
        print(f"appending {n:,} entries of {args.entry_bytes} bytes in batches of {args.batch} ...", flush=True)
        t0 = time.perf_counter()
        next_report = t0 + 30
        for first in range(0, n, args.batch):
            log.append_many([_entry(start_size + i, args.entry_bytes)
                             for i in range(first, min(n, first + args.batch))])
            if time.perf_counter() > next_report:
                done = first + args.batch
                print(f"  {done:,} ({done / (time.perf_counter() - t0):,.0f}/s)", flush=True)
                next_report += 30
        append_s = time.perf_counter() - t0
        size = log.size
        cp = verify_checkpoint(log.checkpoint(), key)
        assert cp.size == size

        rng = random.Random(1)
        gen, ver = [], []
        for _ in range(args.samples):
            index = rng.randrange(size)
            t = time.perf_counter()
            proof, _ = log.inclusion_proof(index, size)
            gen.append(time.perf_counter() - t)
            leaf = leaf_hash(log.entry(index))
            t = time.perf_counter()
            ok = verify_inclusion(leaf, index, size, proof.hashes, cp.root)
            ver.append(time.perf_counter() - t)
            assert ok, index

        cons = []
        for _ in range(args.samples):
            first = start_size + args.batch * rng.randrange(1, max(2, n // args.batch))  # a signed size
            first = min(first, size)
            t = time.perf_counter()
            proof = log.consistency_proof(first, size)
            cons.append(time.perf_counter() - t)
            old_note = log.inclusion_proof(0, first)[1]
            assert old_note is not None
            old = verify_checkpoint(old_note, key)
            assert verify_consistency(first, size, proof.hashes, old.root, cp.root)

        db_bytes = _db_bytes(db)
        grpc_rate = _grpc_appends(log, args.grpc_appends, args.publishers, args.entry_bytes)
        log.close()

    print()
    print(f"entries                      {size:,}")
    print(f"bulk appends/s               {n / append_s:,.0f}   ({append_s:.1f} s; target >= 2,000)")
    print(f"inclusion proof, median      {_median_ms(gen):.3f} ms   (p99 {_p99_ms(gen):.3f} ms; target <= 5 ms)")
    print(f"inclusion verify, median     {_median_ms(ver):.3f} ms")
    print(f"consistency proof, median    {_median_ms(cons):.3f} ms")
    print(f"gRPC appends/s               {grpc_rate:,.0f}   ({args.publishers} publishers, each acknowledged "
          "after its commit)")
    print(f"database size                {db_bytes / 2**20:,.1f} MiB ({db_bytes / size:,.0f} bytes/entry, entries "
          f"of {args.entry_bytes} bytes)")


def _p99_ms(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1] * 1000


def _grpc_appends(log: SQLiteLog, count: int, publishers: int, entry_bytes: int) -> float:
    """Appends/s over gRPC, publishers in a separate process (as real publishers would be)."""
    if count <= 0:
        return 0.0
    server, port = serve(log, "127.0.0.1:0")
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_publish_burst, (f"127.0.0.1:{port}", count, publishers, entry_bytes))
    finally:
        server.stop(grace=None).wait()


def _publish_burst(target: str, count: int, publishers: int, entry_bytes: int) -> float:
    per = count // publishers

    def work(p: int) -> None:
        with LogClient(target) as c:
            for i in range(per):
                c.append(_entry(-(p * per + i) - 1, entry_bytes))

    threads = [threading.Thread(target=work, args=(p,)) for p in range(publishers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * publishers / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
