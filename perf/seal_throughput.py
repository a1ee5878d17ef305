"""How fast assets are sealed and unsealed, each against a same-run baseline of the bare primitives.

Creates a random asset (default 512 MiB, a few files) on a tmpfs, seals it once to have a sealed
file, then runs `--runs` rounds (default 5). Every measurement runs in a fresh child process; each
round runs every baseline and every system path once, the order of the two halves alternating
from round to round so that load on the machine weighs on both alike. Each system path is divided
by its baseline within the same round, and the median of those per-round ratios is reported
(with the spread), next to median MB/s (10^6 plaintext bytes per second):

  seal            stream.seal into a new sealed file (read, per-file SHA-256, record framing,
                  AES-256-GCM, SHA-256 of the sealed bytes, write)
    baseline      read + per-file SHA-256 + AES-256-GCM encrypt_into + write of the same chunks, no
                  format. Why this one: sealing cannot avoid any of these steps, so the ratio is
                  the cost of the format and its plumbing alone; SHA-256 alone or encryption alone
                  would charge sealing for work any sealing must do.
  unseal+digest   what the enclave does on upload: SealedReader -> Unsealer -> DigestOnlySink
    baseline      AES-256-GCM decrypt of the same chunks with the stream's own key and nonces
    also vs       SHA-256 of the plaintext files (what digesting alone costs)
  unseal+store    the same into a DirectorySink on the tmpfs (the enclave's model folder)
    baseline      copying the plaintext files into new files on the tmpfs (what storing costs)

Memory, measured, not inferred: each child resets its peak-RSS mark (/proc/self/clear_refs, 5)
after its imports and setup, then reports VmHWM minus the VmRSS it started the work with: the
most the work itself ever held resident. Exits 1 if unseal+digest is below --bar MB/s or any
path's memory peak exceeds a few chunks; exit 2 if the peak cannot be measured here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from sealing import _stream_format, stream  # noqa: E402
from sealing.digest import asset_files, read_blocks  # noqa: E402

MEMORY_CHUNKS_ALLOWED = 8
# (system path, its baseline); plus unseal+digest against SHA-256 alone
PAIRS = (("seal", "seal-baseline"), ("unseal-digest", "decrypt"), ("unseal-digest", "sha256"),
         ("unseal-store", "write"))
BASELINES = ("seal-baseline", "decrypt", "sha256", "write")
SYSTEM = ("seal", "unseal-digest", "unseal-store")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"error: /proc/self/status has no {field}; this benchmark measures memory on Linux only")


def _reset_peak() -> int:
    """Reset this process's peak-RSS mark; the resident bytes at that moment."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        raise SystemExit(f"error: cannot reset the peak-RSS mark ({exc}); needs Linux >= 4.0") from None
    return _status_kib("VmRSS") * 1024


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


def _encrypt_baseline(asset: Path, out: Path, key: bytes, block: int) -> str:
    """The primitives sealing cannot avoid, on the same chunks, with no format: read, per-file
    SHA-256, AES-256-GCM into a reused buffer, write."""
    aead, total = AESGCM(key), hashlib.sha256()
    buffer = memoryview(bytearray(block + stream.TAG_LEN))
    index = 0
    with open(out, "xb", buffering=0) as sink:
        for file in asset_files(asset):
            digest = hashlib.sha256()
            for piece in read_blocks(file, block):
                digest.update(piece)
                n = len(piece) + stream.TAG_LEN
                aead.encrypt_into(index.to_bytes(12, "big"), piece, None, buffer[:n])
                sink.write(buffer[:n])
                index += 1
            total.update(digest.digest())
    return total.hexdigest()


def _unseal(sealed: Path, key: bytes, sink: stream.Sink) -> str:
    reader = stream.SealedReader(sealed)
    unsealer = stream.Unsealer(reader.header, key, "model", sink)
    for chunk in reader:
        unsealer.feed(chunk)
    return unsealer.finish()


def child(mode: str, asset: Path, sealed: Path, key_file: Path, scratch: Path) -> None:
    key = stream.read_key_file(key_file)
    chunk_size = stream.SealedReader(sealed).chunk_size
    out = scratch / f"out-{os.getpid()}"
    rss0 = _reset_peak()
    start = time.perf_counter()
    if mode == "sha256":
        result = _sha256_files(asset, chunk_size)
    elif mode == "write":
        result = _copy_files(asset, out, chunk_size)
    elif mode == "decrypt":
        result = _decrypt_only(sealed, key)
    elif mode == "seal-baseline":
        result = _encrypt_baseline(asset, out, key, chunk_size)
    elif mode == "seal":
        result = stream.seal(asset, out, "model", chunk_size=chunk_size).digest
    elif mode == "unseal-digest":
        result = _unseal(sealed, key, stream.DigestOnlySink())
    else:
        result = _unseal(sealed, key, stream.DirectorySink(out))
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"seconds": seconds, "result": result, "work_peak": peak - rss0, "peak_rss": peak}))
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)


def _run_child(mode: str, paths: dict[str, Path]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [str(paths[k]) for k in ("asset", "sealed", "key", "scratch")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the {mode} run failed (exit {done.returncode}): {done.stderr.strip()}")
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
    ap.add_argument("--size-mib", type=int, default=512, help="plaintext size (default 512)")
    ap.add_argument("--files", type=int, default=4, help="number of weight files (default 4)")
    ap.add_argument("--chunk-kib", type=int, default=stream.DEFAULT_CHUNK_SIZE // 1024,
                    help=f"sealed chunk size (default {stream.DEFAULT_CHUNK_SIZE // 1024})")
    ap.add_argument("--runs", type=int, default=5, help="rounds; medians of per-round ratios (default 5)")
    ap.add_argument("--bar", type=float, default=500.0, help="required unseal+digest MB/s (default 500)")
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="tmpfs to work in (default /dev/shm)")
    ap.add_argument("--child", nargs=5, metavar=("MODE", "ASSET", "SEALED", "KEY", "SCRATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        child(mode, *map(Path, rest))
        return 0
    if args.runs < 1 or args.size_mib < 1 or args.files < 1:
        ap.error("--runs, --size-mib and --files must be at least 1")

    size = args.size_mib << 20
    chunk_size = args.chunk_kib * 1024
    work = Path(tempfile.mkdtemp(prefix="aaudit-perf-", dir=args.dir))
    try:
        paths = {"asset": work / "asset", "sealed": work / "out" / "model.sealed", "key": work / "out" / "model.key",
                 "scratch": work}
        _make_asset(paths["asset"], size, args.files)
        asset = stream.seal(paths["asset"], work / "out", "model", chunk_size=chunk_size)
        plain = asset.plaintext_size

        runs: dict[str, list[dict]] = {m: [] for m in BASELINES + SYSTEM}
        for r in range(args.runs):
            halves = (BASELINES, SYSTEM) if r % 2 == 0 else (SYSTEM, BASELINES)
            for mode in halves[0] + halves[1]:
                runs[mode].append(_run_child(mode, paths))
        for mode in ("seal", "unseal-digest", "unseal-store"):
            bad = [x["result"] for x in runs[mode] if x["result"] != asset.digest]
            if bad:
                raise SystemExit(f"error: {mode} produced digest {bad[0]}, not the asset's {asset.digest}")

        mib = 1 << 20
        rate = {m: plain / statistics.median(x["seconds"] for x in rs) / 1e6 for m, rs in runs.items()}
        print(f"asset: {plain / mib:.0f} MiB in {asset.file_count} files, {asset.chunk_count} chunks of "
              f"{chunk_size // 1024} KiB, on {args.dir or tempfile.gettempdir()}; {os.cpu_count()} CPUs; "
              f"{args.runs} rounds, each path in a fresh process")
        print(f"  {'path':<16}{'median MB/s':>12}  {'peak held by the work':>22}")
        for mode in SYSTEM + BASELINES:
            held = max(x["work_peak"] for x in runs[mode])
            print(f"  {mode:<16}{rate[mode]:12.0f}  {held / mib:13.1f} MiB ({held / chunk_size:4.1f} chunks)")
        print("  time ratios, system / same-round baseline (median of per-round ratios; min-max):")
        for system, base in PAIRS:
            ratios = [s["seconds"] / b["seconds"] for s, b in zip(runs[system], runs[base])]
            print(f"    {system:<14} / {base:<14} {statistics.median(ratios):5.2f}x  "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")
        whole = max(x["peak_rss"] for rs in runs.values() for x in rs)
        print(f"  largest child peak RSS, interpreter and libraries included: {whole / mib:.0f} MiB; asset "
              f"{plain / mib:.0f} MiB")
        fast = rate["unseal-digest"] >= args.bar
        held = max(x["work_peak"] for m in SYSTEM for x in runs[m])
        small = held <= MEMORY_CHUNKS_ALLOWED * chunk_size
        print(f"  bar: unseal + digest >= {args.bar:.0f} MB/s: {'met' if fast else 'NOT met'}; memory held by "
              f"seal/unseal <= {MEMORY_CHUNKS_ALLOWED} chunks: {'met' if small else 'NOT met'}")
        return 0 if fast and small else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
