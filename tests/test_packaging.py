"""Packaging promises: a light verifier, fresh generated protos, working console scripts."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval", "datasets")


def test_verifier_imports_no_ml_stack() -> None:
    code = ("import sys, verifier.cli, verifier.bundle, verifier.evidence, verifier.policy, verifier.merkle;"
            f"heavy=[m for m in {HEAVY!r} if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"verifier imported {proc.stdout.strip()}"


def test_generated_protos_are_fresh(tmp_path: Path) -> None:
    from protos.generate import generate

    written = generate(tmp_path)
    assert written, "no proto files were generated"
    stale = [p.name for p in written if not filecmp.cmp(p, REPO / "protos" / p.name, shallow=False)]
    assert not stale, f"committed generated modules are stale, run `make protos`: {stale}"


def test_console_scripts_have_help() -> None:
    for module, sub in (("aaudit.cli", []), ("verifier.cli", []), ("verifier.cli", ["bundle"]),
                        ("verifier.cli", ["evidence"]), ("aaudit.cli", ["enclave", "serve"])):
        proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout
