"""`aaudit enclave serve` on a machine without a TEE: a clear refusal, fast, never a silent sim."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_serve_tee_auto_without_tee_exits_2_quickly() -> None:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "enclave", "serve", "--tee", "auto",
                           "--listen", "127.0.0.1:0"], cwd=REPO, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "/dev/sev-guest" in proc.stderr and "/dev/nsm" in proc.stderr, proc.stderr
    assert "listening" not in proc.stdout
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
