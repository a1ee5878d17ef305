"""How fast the enclave unseals and digests an asset, against plain SHA-256 and AES-GCM baselines.

Creates a random asset (default 1 GiB, a few files) on a tmpfs, seals it, then measures in fresh
child processes (so peak RSS belongs to the measurement alone), round-robin `--repeat` times so
that other load on the machine weighs on every measurement alike; medians:

  sha256 baseline   read the plaintext files block by block and SHA-256 them
  decrypt baseline  read the sealed file chunk by chunk and AES-256-GCM decrypt it (nothing else)
  write baseline    copy the plaintext files into new files on the tmpfs (what storing costs alone;
                    in a fresh VM or TEE, first-touch of guest memory makes this the slow part)
  unseal+digest     what the enclave does: SealedReader -> Unsealer -> DigestOnlySink (decrypt,
                    parse records, per-file SHA-256, manifest digest)
  unseal+store      the same into a DirectorySink on the tmpfs (the enclave's model folder)

Reports MB/s (10^6 bytes of plaintext per second), ratios to the baselines, and peak memory (RSS
growth and tracemalloc peak) in chunks. Exits 1 if unseal+digest is below --bar MB/s or its memory
grows beyond a few chunks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from sealing import _stream_format, stream  # noqa: E402
from sealing.digest import asset_files, read_blocks  # noqa: E402

MEMORY_CHUNKS_ALLOWED = 8


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sha256_files(asset: Path, block: int) -> str:
    total = hashlib.sha256()
    for file in asset_files(asset):
        digest = hashlib.sha256()
        for piece in read_blocks(file, block):
            digest.update(piece)
        total.update(digest.digest())
    return total.hexdigest()


def _copy_files(asset: Path, dest: Path, block: int) -> str:
    dest.mkdir()
    for file in asset_files(asset):
        with open(dest / file.relpath.replace("/", "_"), "xb", buffering=0) as out:
            for piece in read_blocks(file, block):
                out.write(piece)
    return "ok"


def _decrypt_only(sealed: Path, key: bytes) -> str:
    """AES-256-GCM over the same chunks with the stream's own key and nonces, and nothing else."""
    reader = stream.SealedReader(sealed)
    aead_key, _ = _stream_format.derive_keys(key, reader.header[: _stream_format.FIELDS_LEN])
    aead, prefix = AESGCM(aead_key), _stream_format.parse_header(reader.header, str(sealed)).nonce_prefix
    buffer = memoryview(bytearray(reader.chunk_size))
    for index, chunk in enumerate(reader):
        last = index == reader.chunk_count - 1
        aead.decrypt_into(_stream_format.chunk_nonce(prefix, index, last), chunk, reader.header, buffer[: len(chunk) - stream.TAG_LEN])
    return "ok"


def _unseal(sealed: Path, key: bytes, sink: stream.Sink) -> str:
    reader = stream.SealedReader(sealed)
    unsealer = stream.Unsealer(reader.header, key, "model", sink)
    for chunk in reader:
        unsealer.feed(chunk)
    return unsealer.finish()


def child(mode: str, asset: Path, sealed: Path, key_file: Path, scratch: Path, trace: bool) -> None:
    key = stream.read_key_file(key_file)
    chunk_size = stream.SealedReader(sealed).chunk_size
    if trace:
        tracemalloc.start()
    rss0 = _maxrss_bytes()
    start = time.perf_counter()
    if mode == "sha256":
        result = _sha256_files(asset, chunk_size)
    elif mode == "write":
        result = _copy_files(asset, scratch / "unsealed", chunk_size)
    elif mode == "decrypt":
        result = _decrypt_only(sealed, key)
    elif mode == "unseal-digest":
        result = _unseal(sealed, key, stream.DigestOnlySink())
    else:
        result = _unseal(sealed, key, stream.DirectorySink(scratch / "unsealed"))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    peak_rss = _maxrss_bytes()
    print(json.dumps({"seconds": seconds, "result": result, "rss_growth": peak_rss - rss0, "peak_rss": peak_rss,
                      "traced_peak": peak}))
    shutil.rmtree(scratch / "unsealed", ignore_errors=True)


def _run_child(mode: str, paths: dict[str, Path], trace: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [str(paths[k]) for k in ("asset", "sealed", "key", "scratch")]
    if trace:
        cmd.append("--trace")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _make_asset(root: Path, size: int, files: int) -> None:
    """Random bytes (incompressible, like weights), split into `files` files plus a small config."""
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama", "hidden_size": 4096}')
    per_file, block = size // files, 64 << 20
    for i in range(files):
        with open(root / f"model-{i + 1:05d}-of-{files:05d}.safetensors", "wb") as handle:
            left = per_file if i < files - 1 else size - per_file * (files - 1)
            while left:
                n = min(block, left)
                handle.write(os.urandom(n))
                left -= n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="plaintext size (default 1024)")
    ap.add_argument("--files", type=int, default=4, help="number of weight files (default 4)")
    ap.add_argument("--chunk-kib", type=int, default=stream.DEFAULT_CHUNK_SIZE // 1024)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    ap.add_argument("--bar", type=float, default=500.0, help="required unseal+digest MB/s (default 500)")
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="tmpfs to work in (default /dev/shm)")
    ap.add_argument("--child", nargs=5, metavar=("MODE", "ASSET", "SEALED", "KEY", "SCRATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        child(mode, *map(Path, rest), trace=args.trace)
        return 0

    size = args.size_mib << 20
    chunk_size = args.chunk_kib * 1024
    work = Path(tempfile.mkdtemp(prefix="aaudit-perf-", dir=args.dir))
    try:
        paths = {"asset": work / "asset", "sealed": work / "out" / "model.sealed", "key": work / "out" / "model.key",
                 "scratch": work}
        _make_asset(paths["asset"], size, args.files)
        start = time.perf_counter()
        asset = stream.seal(paths["asset"], work / "out", "model", chunk_size=chunk_size)
        seal_s = time.perf_counter() - start
        plain = asset.plaintext_size

        # Round-robin, so that load from other processes weighs on baselines and unsealing alike.
        modes = ("sha256", "decrypt", "write", "unseal-digest", "unseal-store")
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(_run_child(mode, paths))
        traced = _run_child("unseal-digest", paths, trace=True)
        for mode in ("unseal-digest", "unseal-store"):
            assert all(r["result"] == asset.digest for r in runs[mode]), f"{mode}: digest differs from seal's"

        rate = {m: plain / statistics.median(r["seconds"] for r in rs) / 1e6 for m, rs in runs.items()}
        rss = max(r["rss_growth"] for r in runs["unseal-digest"])
        peak_rss = max(r["peak_rss"] for r in runs["unseal-digest"])
        mib = 1 << 20
        print(f"asset: {plain / mib:.0f} MiB in {asset.file_count} files, {asset.chunk_count} chunks of "
              f"{chunk_size // 1024} KiB, on {args.dir or tempfile.gettempdir()}; {os.cpu_count()} CPUs; "
              f"medians of {args.repeat}")
        print(f"  seal (read + digest + encrypt + write)       {plain / seal_s / 1e6:8.0f} MB/s")
        print(f"  baseline: SHA-256 of the plaintext files      {rate['sha256']:8.0f} MB/s")
        print(f"  baseline: AES-256-GCM decrypt of the chunks   {rate['decrypt']:8.0f} MB/s")
        print(f"  baseline: write the plaintext to the tmpfs    {rate['write']:8.0f} MB/s")
        print(f"  unseal + digest (Unsealer, DigestOnlySink)    {rate['unseal-digest']:8.0f} MB/s  "
              f"= {rate['unseal-digest'] / rate['sha256']:.2f}x SHA-256, {rate['unseal-digest'] / rate['decrypt']:.2f}x decrypt")
        print(f"  unseal + digest + store (DirectorySink)       {rate['unseal-store']:8.0f} MB/s  "
              f"= {rate['unseal-store'] / rate['sha256']:.2f}x SHA-256, {rate['unseal-store'] / rate['write']:.2f}x write")
        print(f"  unseal memory: process peak RSS {peak_rss / mib:.0f} MiB (interpreter and libraries included), "
              f"growth while unsealing {rss / mib:.1f} MiB ({rss / chunk_size:.1f} chunks),\n               "
              f"tracemalloc peak {traced['traced_peak'] / mib:.1f} MiB ({traced['traced_peak'] / chunk_size:.1f} chunks); "
              f"asset {plain / mib:.0f} MiB")
        fast = rate["unseal-digest"] >= args.bar
        small = max(rss, traced["traced_peak"]) <= MEMORY_CHUNKS_ALLOWED * chunk_size
        print(f"  bar: unseal + digest >= {args.bar:.0f} MB/s: {'PASS' if fast else 'FAIL'}; "
              f"memory <= {MEMORY_CHUNKS_ALLOWED} chunks: {'PASS' if small else 'FAIL'}")
        return 0 if fast and small else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
