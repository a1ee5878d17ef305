"""Median in-process time to verify each genuine evidence vector (parse + chain + signature + policy).

    python perf/verify_speed.py [--repeat N]

One row per vector of tests/vectors.py's table (the committed real evidence). Missing vector files
are an error that names every one of them (exit 2) before anything is timed, never a skipped row;
the target line says "met" only when SEV-SNP vectors were actually timed. The first (cold) run is shown separately: it
includes loading the pinned roots. Exit 1 if a vector's verdict is not the one the table expects or
the SEV-SNP target is missed. Target: SEV-SNP <= 20 ms (warm median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import vectors  # noqa: E402
from verifier import policy  # noqa: E402
from verifier.evidence import verify_evidence  # noqa: E402
from verifier.models import Evidence  # noqa: E402

SNP_TARGET_MS = 20.0


def _time_ms(ev: Evidence, at: datetime, pol: policy.Policy) -> tuple[float, bool]:
    start = time.perf_counter()
    verdict, _ = verify_evidence(ev, at=at, policy=pol)
    return (time.perf_counter() - start) * 1000, verdict.verified


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50, help="warm runs per vector (default 50)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    missing: list[str] = []
    for vector in vectors.GENUINE.values():
        for rel in vector.files:
            try:
                vectors.path(rel)
            except FileNotFoundError:
                if str(vectors.ROOT / rel) not in missing:
                    missing.append(str(vectors.ROOT / rel))
    if missing:
        print(f"error: {len(missing)} test vector file(s) missing, nothing timed: {', '.join(missing)}; every vector "
              f"is committed under {vectors.ROOT} (restore with `git checkout -- tests/vectors`)", file=sys.stderr)
        return 2
    print(f"{'platform':<8}  {'vector':<28}  {'verified':<8}  {'cold ms':>8}  {'median ms':>9}  {'min ms':>7}")
    over = unexpected = False
    snp_timed = 0
    for name, vector in vectors.GENUINE.items():
        ev = vector.load()
        pol = policy.baseline(vector.platform, allow_debug=True)  # time the whole path, debug vectors included
        cold, verified = _time_ms(ev, vector.when, pol)
        runs = [_time_ms(ev, vector.when, pol)[0] for _ in range(args.repeat)]
        median = statistics.median(runs)
        mark = "" if verified == vector.verifies else f"  UNEXPECTED (table says verifies={vector.verifies})"
        unexpected |= bool(mark)
        print(f"{vector.platform:<8}  {name:<28}  {str(verified):<8}  {cold:8.2f}  {median:9.2f}  {min(runs):7.2f}{mark}")
        if vector.platform == "sev-snp":
            snp_timed += 1
            over |= median > SNP_TARGET_MS
    if not snp_timed:
        print(f"\nSEV-SNP target: warm median <= {SNP_TARGET_MS:.0f} ms: NOT MEASURED (no SEV-SNP vector in the table)")
        return 1
    print(f"\nSEV-SNP target: warm median <= {SNP_TARGET_MS:.0f} ms over {snp_timed} vectors: "
          f"{'MISSED' if over else 'met'}")
    return 1 if over or unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
