"""The enclave's code identity: what every statement says about the code that ran.

A SHA-256 over a canonical listing of the installed project files (each file's path relative to
the project root, size and SHA-256; sorted) and, when present, the dependency lock files (the
CPU image's `requirements.lock` and the CUDA image's `requirements-gpu.lock`, see deploy/). It is
the `measurement` of the simulated attester and the code identity a hardware image pins beside its
launch measurement; `aaudit enclave measure` prints it.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from verifier.models import canonical_json

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aaudit", "benchmarks", "enclave", "gateway", "protos", "sealing", "tlog", "verifier")
LOCK_FILES = ("requirements.lock", "requirements-gpu.lock")


def _files(root: Path) -> list[Path]:
    out = []
    for pkg in PACKAGES:
        base = root / pkg
        if base.is_dir():
            out.extend(p for p in base.rglob("*") if p.is_file() and p.suffix in (".py", ".proto", ".pem", ".toml", ".yaml"))
    out.extend(root / f for f in LOCK_FILES if (root / f).is_file())
    return sorted(out)


def code_listing(root: Path = ROOT) -> list[dict[str, object]]:
    """The canonical list the code identity hashes: path, size and SHA-256 of each code file."""
    return [
        {"path": p.relative_to(root).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
         "size": p.stat().st_size}
        for p in _files(root)
    ]


def listing_digest(entries: list[dict[str, object]]) -> str:
    """Hex SHA-256 of a code listing in the project's one canonical JSON: the code identity of the tree."""
    return hashlib.sha256(canonical_json(entries)).hexdigest()


@lru_cache(maxsize=None)
def code_identity(root: Path = ROOT) -> str:
    """The code identity of the project under `root`, computed once per process (files do not change)."""
    return listing_digest(code_listing(root))
