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


def test_serve_bad_listen_address_exits_2_and_leaves_no_work_folder(tmp_path: Path) -> None:
    for listen in ("garbage", "127.0.0.1:99999"):
        proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "enclave", "serve", "--tee", "sim",
                               "--listen", listen, "--workdir", str(tmp_path), "--unsafe-allow-disk-workdir"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "HOST:PORT" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_auditor_run_refuses_an_unwritable_output_before_contacting_anyone(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("allow_simulated = true\n")
    proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "auditor", "run", "--enclave", "127.0.0.1:1",
                           "--session", "0" * 32, "--identity", str(tmp_path / "none.key"),
                           "--policy", str(tmp_path / "p.toml"), "--out", str(tmp_path / "missing" / "b.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a writable folder" in proc.stderr, proc.stderr
