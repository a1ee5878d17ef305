"""The enclave's audit session: assets, the run manifest, approvals, and the one job at a time.

Pure state and rules, no gRPC, so every rule is testable directly: an asset is accepted only when
its stream authenticates to the end and its digest matches the uploader's claim; any upload voids
the approvals; a run needs all assets and both approvals on the current manifest; at the end of a
job every secret is dropped.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.spec import AuditSpec, parse_spec
from enclave.keys import BootKeys
from enclave.workdir import wipe
from sealing.stream import DirectorySink, MemorySink, Unsealer
from verifier.binding import NONCE_LEN, wrap_info
from verifier.errors import AAuditError, UnusableInput
from verifier.models import b64e
from verifier.statement import ASSET_KINDS, manifest_digest, verify_approval

UPLOADER_ROLE = {"model": "provider", "dataset": "auditor", "spec": "auditor"}
# Sealed bytes accepted per asset kind: datasets and specs live in enclave memory, the model on tmpfs.
DEFAULT_MAX_BYTES = {"model": 1 << 40, "dataset": 8 << 30, "spec": 1 << 20}
MAX_OPEN_NONCES = 4096


class SessionError(AAuditError):
    """A protocol rule refused the request; the message says which and what to do."""


class Busy(SessionError):
    """A job is running; nothing that would change its inputs is accepted."""


@dataclass
class Asset:
    kind: str
    digest: str
    plaintext_bytes: int
    party_key: bytes
    attest_nonce: bytes
    files: dict[str, bytes] | None = field(default=None, repr=False)  # dataset / spec
    folder: Path | None = None                                          # model, on tmpfs

    def drop(self) -> None:
        if self.folder is not None:
            wipe(self.folder)
        if self.files is not None:
            self.files.clear()


@dataclass
class Upload:
    """One upload in progress. The data key lives only here, only until `finish` or `abort`."""

    kind: str
    claimed_digest: str
    party_key: bytes
    attest_nonce: bytes
    unsealer: Unsealer
    sink: Any
    folder: Path | None
    max_bytes: int
    received: int = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_bytes:
            self.abort()
            raise SessionError(f"{self.kind}: upload exceeds this enclave's limit of {self.max_bytes} bytes; refused")
        self.unsealer.feed(chunk)

    def abort(self) -> None:
        self.unsealer.abort()
        if self.folder is not None:
            wipe(self.folder)


class Session:
    def __init__(self, keys: BootKeys, platform: str, code_identity: str, workdir: Path,
                 max_bytes: dict[str, int] | None = None) -> None:
        self.keys = keys
        self.platform = platform
        self.code_identity = code_identity
        self.workdir = workdir
        self._lock = threading.Lock()
        self._assets: dict[str, Asset] = {}
        self._approvals: dict[str, bytes] = {}
        self._running = False
        self._spec: AuditSpec | None = None
        self._issued_nonces: OrderedDict[bytes, set[str]] = OrderedDict()
        self.max_bytes = {**DEFAULT_MAX_BYTES, **(max_bytes or {})}

    # --- uploads -------------------------------------------------------------------------------
    def begin_upload(self, kind: str, digest: str, wrapped_key: bytes, stream_header: bytes,
                     party_key: bytes, attest_nonce: bytes) -> Upload:
        if kind not in ASSET_KINDS:
            raise UnusableInput(f"unknown asset kind {kind!r} (expected one of {', '.join(ASSET_KINDS)})")
        if len(party_key) != 32:
            raise UnusableInput("party_public_key must be a raw 32-byte Ed25519 key")
        if len(attest_nonce) != NONCE_LEN:
            raise UnusableInput(f"attest_nonce must be {NONCE_LEN} bytes")
        with self._lock:
            if self._running:
                raise Busy("a job is running; uploads are refused until it ends")
            self._check_auditor_key_locked(kind, party_key)
            used = self._issued_nonces.get(attest_nonce)
            if used is None:
                raise SessionError("attest_nonce was not issued by this enclave boot: attest first, then upload")
            if kind in used:
                raise SessionError(f"attest_nonce was already used for a {kind} upload (a replay?); attest again")
            used.add(kind)
        try:
            data_key = self.keys.hpke.unwrap(wrapped_key, wrap_info(kind, digest, self.keys.signing_public))
        except AAuditError:
            raise SessionError(f"{kind}: the wrapped data key does not open for this enclave, asset kind and "
                               "digest (wrapped for another enclave boot, or digest/kind changed)") from None
        folder = None
        if kind == "model":
            folder = self.workdir / f"model-{secrets.token_hex(8)}"
            sink: Any = DirectorySink(folder)
        else:
            sink = MemorySink()
        unsealer = Unsealer(stream_header, data_key, kind, sink, expected_kind=kind)
        del data_key
        return Upload(kind, digest, party_key, attest_nonce, unsealer, sink, folder, self.max_bytes[kind])

    def _check_auditor_key_locked(self, kind: str, party_key: bytes) -> None:
        """One auditor key uploads both dataset and spec, so one key approves for the role."""
        if kind in ("dataset", "spec"):
            other = self._assets.get("spec" if kind == "dataset" else "dataset")
            if other is not None and other.party_key != party_key:
                raise SessionError(f"the auditor's other asset ({other.kind}) was uploaded with another identity "
                                   "key; one auditor key must upload both dataset and spec")

    def note_attestation(self, nonce: bytes) -> None:
        """Remember a nonce this boot attested to; each may serve one upload of each asset kind."""
        with self._lock:
            self._issued_nonces[nonce] = set()
            while len(self._issued_nonces) > MAX_OPEN_NONCES:
                self._issued_nonces.popitem(last=False)

    def finish_upload(self, up: Upload) -> tuple[Asset, str]:
        try:
            digest = up.unsealer.finish(expected_digest=up.claimed_digest)  # wipes the sink on mismatch
        except BaseException:
            up.abort()
            raise
        files = None if up.folder is not None else dict(up.sink.files)
        spec = None
        if up.kind == "spec":
            if len(files or {}) != 1:
                up.abort()
                raise UnusableInput("spec: the sealed spec must hold exactly one TOML file")
            spec = parse_spec(next(iter(files.values())))  # SpecError (UnusableInput) names the problem
        size = sum(len(v) for v in files.values()) if files is not None else _folder_size(up.folder)
        asset = Asset(up.kind, digest, size, up.party_key, up.attest_nonce, files, up.folder)
        with self._lock:
            if self._running:
                asset.drop()
                raise Busy("a job started while this upload was in flight; upload refused")
            try:
                self._check_auditor_key_locked(up.kind, up.party_key)  # again: another upload may have finished
            except SessionError:
                asset.drop()
                raise
            old = self._assets.pop(up.kind, None)
            if old is not None:
                old.drop()
            self._assets[up.kind] = asset
            if spec is not None:
                self._spec = spec
            self._approvals.clear()  # any new asset voids every approval
            return asset, self._manifest_digest_locked()

    # --- manifest and approvals ----------------------------------------------------------------
    def _manifest_locked(self) -> dict[str, Any]:
        parties = {}
        for kind, asset in self._assets.items():
            parties[UPLOADER_ROLE[kind]] = b64e(asset.party_key)
        return {
            "version": 1,
            "assets": {k: {"digest": a.digest, "bytes": a.plaintext_bytes} for k, a in sorted(self._assets.items())},
            "parties": parties,
            "output": self._spec.output if self._spec is not None else None,
            "samplesRecipient": self._spec.samples_recipient if self._spec is not None else None,
            "enclave": {"platform": self.platform, "codeIdentity": self.code_identity,
                        "signingKey": b64e(self.keys.signing_public)},
        }

    def _manifest_digest_locked(self) -> str:
        return manifest_digest(self._manifest_locked())

    def _missing_locked(self) -> str:
        return ", ".join(k for k in ASSET_KINDS if k not in self._assets)

    def manifest(self) -> tuple[dict[str, Any], str, list[str], bool]:
        with self._lock:
            m = self._manifest_locked()
            return m, manifest_digest(m), sorted(self._approvals), set(self._assets) == set(ASSET_KINDS)

    def approve(self, role: str, digest: str, signature: bytes) -> tuple[list[str], bool]:
        if role not in UPLOADER_ROLE.values():
            raise UnusableInput(f"unknown role {role!r} (provider or auditor)")
        with self._lock:
            if self._running:
                raise Busy("a job is running; approvals are closed")
            current = self._manifest_digest_locked()
            if digest != current:
                raise SessionError(f"approval is for manifest {digest}, but the current manifest is {current} "
                                   "(an asset was uploaded since); fetch the manifest again")
            if self._missing_locked():
                raise SessionError(f"manifest incomplete: missing {self._missing_locked()}")
            key = next(a.party_key for k, a in self._assets.items() if UPLOADER_ROLE[k] == role)
            if not verify_approval(key, digest, signature):
                raise SessionError(f"{role} approval signature does not verify with the {role}'s upload key")
            self._approvals[role] = signature
            return sorted(self._approvals), len(self._approvals) == 2

    # --- the job -------------------------------------------------------------------------------
    def start_job(self) -> "JobInputs":
        with self._lock:
            if self._running:
                raise Busy("a job is already running; one job at a time — wait for it and fetch its result")
            if self._missing_locked():
                raise SessionError(f"cannot run: missing asset(s) {self._missing_locked()}")
            missing_roles = [r for r in ("provider", "auditor") if r not in self._approvals]
            if missing_roles:
                raise SessionError(f"cannot run: no approval from {' and '.join(missing_roles)} on the current manifest")
            assert self._spec is not None
            data = self._assets["dataset"].files or {}
            absent = [name for name in self._spec.datasets if name not in data]
            if absent:
                raise SessionError(f"cannot run: spec names dataset file(s) not in the dataset asset: {', '.join(absent)}")
            manifest = self._manifest_locked()
            digest = manifest_digest(manifest)
            approvals = []
            for kind, role in (("model", "provider"), ("dataset", "auditor")):
                approvals.append({"role": role, "publicKey": b64e(self._assets[kind].party_key),
                                  "signature": b64e(self._approvals[role])})
            self._running = True
            return JobInputs(
                model_dir=self._assets["model"].folder,  # type: ignore[arg-type]
                spec=self._spec, datasets=data, manifest=manifest, manifest_digest=digest, approvals=approvals,
                party_nonces={UPLOADER_ROLE[k]: a.attest_nonce.hex() for k, a in self._assets.items()},
            )

    def end_job(self) -> None:
        """Drop every secret of the job: decrypted files, dataset bytes, spec, approvals."""
        with self._lock:
            for asset in self._assets.values():
                asset.drop()
            self._assets.clear()
            self._approvals.clear()
            self._spec = None
            self._running = False

    @property
    def running(self) -> bool:
        return self._running


@dataclass
class JobInputs:
    model_dir: Path
    spec: AuditSpec
    datasets: dict[str, bytes]
    manifest: dict[str, Any]
    manifest_digest: str
    approvals: list[dict[str, str]]
    party_nonces: dict[str, str]


def _folder_size(folder: Path | None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else 0

