"""The one owner of the test vectors: where they live and which genuine evidence there is.

Every vector is real evidence from real hardware, committed under `tests/vectors/<platform>/<source>/`
with a PROVENANCE.md (source repository and commit, licence, verification time, expected result), so
a fresh clone tests itself with nothing beside it. A missing file is an error that names the file,
never a skip: a suite that silently stops checking real evidence is worse than a red one. Tests and
`perf/verify_speed.py` read vectors only through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from verifier.inputs import decode_blob, parse_time, read_certs
from verifier.models import Evidence

ROOT = Path(__file__).resolve().parent / "vectors"


def path(rel: str) -> Path:
    """The committed vector file `rel` (relative to tests/vectors/); FileNotFoundError naming it if absent."""
    p = ROOT / rel
    if not p.is_file():
        raise FileNotFoundError(f"test vector {p} is missing: every vector is committed under {ROOT} "
                                "(restore it with `git checkout -- tests/vectors`)")
    return p


def read(rel: str) -> bytes:
    return path(rel).read_bytes()


def certs(*rels: str) -> tuple[bytes, ...]:
    """DER certificates from PEM or DER files, in file order."""
    out: list[bytes] = []
    for rel in rels:
        out.extend(read_certs(read(rel), rel))
    return tuple(out)


@dataclass(frozen=True)
class Vector:
    """One genuine piece of evidence and what is needed to check it (files relative to tests/vectors/)."""

    platform: str
    evidence: str
    at: str
    certs: tuple[str, ...] = ()
    collateral: str | None = None
    verifies: bool = True  # False: genuine, but fails one named check (its PROVENANCE.md says which)

    @property
    def when(self) -> datetime:
        return parse_time(self.at)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.evidence, *self.certs, *((self.collateral,) if self.collateral else ()))

    def load(self) -> Evidence:
        collateral = read(self.collateral) if self.collateral else None
        return Evidence(self.platform, decode_blob(read(self.evidence)), certs(*self.certs), collateral)


MILAN = "sev-snp/milan-vcek"
TDX_V4 = "tdx/v4-quote"
ETERNIS = "nitro/eternis-debug"
BLOCKY = "nitro/blocky-nitrite"
HOPPER = "nvidia/hopper"
HOPPER_545 = "nvidia/hopper-545"

# Every genuine vector, by name (platform/source); each verifies at `at` unless `verifies` is False.
GENUINE: dict[str, Vector] = {
    "sev-snp/milan-vcek": Vector("sev-snp", f"{MILAN}/report.bin", "2025-01-01T00:00:00Z",
                                 (f"{MILAN}/vcek.der", f"{MILAN}/ask_ark.pem")),
    "sev-snp/azure-milan-v3": Vector("sev-snp", "sev-snp/azure-milan-v3/report.hex", "2025-06-01T00:00:00Z",
                                     ("sev-snp/azure-milan-v3/vcek.pem",)),
    "sev-snp/yaxi-genoa-v5": Vector("sev-snp", "sev-snp/yaxi-genoa-v5/report.b64", "2025-11-14T17:32:12Z",
                                    ("sev-snp/yaxi-genoa-v5/vcek.pem",)),
    "sev-snp/aws-milan-vlek-v5": Vector("sev-snp", "sev-snp/aws-milan-vlek-v5/report.b64", "2026-03-23T21:09:19Z",
                                        ("sev-snp/aws-milan-vlek-v5/vlek.pem",)),
    "tdx/v4-quote": Vector("tdx", f"{TDX_V4}/quote.bin", "2025-07-01T00:00:00Z",
                           collateral=f"{TDX_V4}/collateral.json"),
    "tdx/dcap-qvl-sample-hex": Vector("tdx", "tdx/dcap-qvl-sample-hex/quote.hex", "2025-07-01T00:00:00Z",
                                      collateral=f"{TDX_V4}/collateral.json", verifies=False),
    "nitro/eternis-debug": Vector("nitro", f"{ETERNIS}/attestation.b64", "2024-09-09T20:00:00Z"),
    "nitro/blocky-nitrite": Vector("nitro", f"{BLOCKY}/nitro_attestation.b64", "2024-09-07T15:00:00Z"),
    "nitro/blocky-nitrite-debug": Vector("nitro", f"{BLOCKY}/nitro_attestation_debug.b64", "2024-09-07T15:00:00Z"),
    "nvidia/hopper": Vector("nvidia", f"{HOPPER}/report.hex", "2025-01-01T00:00:00Z", (f"{HOPPER}/chain.pem",)),
    "nvidia/hopper-545": Vector("nvidia", f"{HOPPER_545}/report.hex", "2025-01-01T00:00:00Z",
                                (f"{HOPPER_545}/chain.pem",)),
}


def of(platform: str) -> dict[str, Vector]:
    """The genuine vectors of one platform, by name."""
    return {name: v for name, v in GENUINE.items() if v.platform == platform}


def require_all() -> None:
    """FileNotFoundError naming the first missing file of any vector in the table."""
    for vector in GENUINE.values():
        for rel in vector.files:
            path(rel)
