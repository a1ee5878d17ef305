"""Audit sessions owned by their two parties: assets, the run manifest, approvals, job states.

Pure state and rules, no gRPC, so every rule is testable directly. An enclave holds several
sessions. A session is created by one party naming both parties' identity keys and joined by the
other's signature; from then on only those two keys act in it, each by signing what it asks for
(verifier/binding.py). A stranger can create sessions of its own but never reach into another.
A session keeps its assets across jobs (one upload, many audits); each job has its own manifest
(its number in it), approvals and bundle, and closing the session wipes the plaintext. The
auditor's judge models (`judges`, a folder of `<name>/` model folders) are an asset like the others,
unsealed to tmpfs like the model, and required exactly when the spec names `[[judge]]`s.

Attacks this module refuses (tests/test_session.py, tests/test_sessions_attacks.py):
- a captured upload replayed under another key, into another session, or after its job: the header
  is signed by the session's key for that kind, the wrap `info` binds party key, session id and
  attestation nonce, and each attestation nonce serves one upload of each kind;
- an approval carried over to another session or a later job: the manifest holds the session id,
  its fresh random nonce and the job number;
- role lock-out: a session's roles are fixed at creation, so nobody can take another session's role;
- exhaustion: sessions, bytes held in memory and on tmpfs, and queued jobs are bounded (`Limits`).
"""

from __future__ import annotations

import enum
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.spec import AuditSpec, parse_spec
from benchmarks.summary import check_aggregate, summarize_tasks
from enclave.keys import BootKeys
from enclave.runner import engine_problem
from enclave.workdir import wipe
from sealing.stream import DirectorySink, MemorySink, Unsealer
from verifier.binding import (
    NONCE_LEN,
    attach_message,
    create_message,
    job_message,
    join_message,
    prepare_message,
    run_message,
    upload_message,
    wrap_info,
)
from verifier.errors import AAuditError, UnusableInput
from verifier.manifest import (
    ASSET_KINDS,
    REQUIRED_KINDS,
    ROLES,
    UPLOADER_ROLE,
    AssetRef,
    EnclaveRef,
    Limits as ManifestLimits,
    Parties,
    PrepareRef,
    RunManifest,
    SessionRef,
    TaskRef,
    verify_approval,
    verify_party_signature,
)

# Sealed bytes accepted per asset kind: datasets and specs live in enclave memory, the model and
# the judges on tmpfs (FOLDER_KINDS). A `Limits.max_bytes` that leaves a kind out keeps its default.
DEFAULT_MAX_BYTES = {"model": 1 << 40, "dataset": 8 << 30, "spec": 1 << 20, "judges": 1 << 40}
FOLDER_KINDS = ("model", "judges")
MAX_OPEN_NONCES = 65536  # ~6 MiB; an Attest flood needs this many calls to evict a party's nonce
SESSION_ID_BYTES = 16
MAX_PREPARE_BUNDLE_BYTES = 8 << 20  # evidence with certificate chains, far below this


class SessionError(AAuditError):
    """A protocol rule refused the request; the message says which and what to do."""


class Busy(SessionError):
    """The session's job is queued or running; nothing that would change its inputs is accepted."""


class NoSuchSession(SessionError):
    """No session has that id in this enclave boot (never created, closed, or expired)."""


class NotAParty(SessionError):
    """The request is not signed by the session's key for the role it names."""


class LimitReached(SessionError):
    """A resource limit of this enclave is reached; the message names it and what frees it."""


class State(enum.Enum):
    AWAITING_JOIN = "awaiting-join"
    OPEN = "open"
    QUEUED = "queued"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class Limits:
    """What one enclave accepts from everyone together. The operator sets them (`aaudit enclave
    serve --help`); the defaults follow the machine's size (`Limits.for_machine`)."""

    max_sessions: int = 64
    max_pending_sessions: int = 16         # created but not yet joined
    join_timeout_s: float = 120.0          # a session nobody joined by then is closed
    party_keys: frozenset[bytes] | None = None  # when set, only sessions naming these keys may be created
    max_memory_bytes: int = 8 << 30        # datasets and specs, all sessions together
    max_tmpfs_bytes: int = 1 << 40         # decrypted models and judges, all sessions together
    max_bytes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_BYTES))
    max_concurrent_uploads: int = 8
    upload_idle_s: float = 30.0
    upload_header_s: float = 5.0           # an upload stream must send its signed header this soon
    min_upload_bytes_per_s: int = 256 << 10  # average, enforced once an upload has run upload_idle_s
    max_queued_jobs: int = 8
    max_deadline_s: int = 24 * 3600
    min_documents_floor: int = 10
    session_idle_s: float = 3600.0

    @classmethod
    def for_machine(cls, workdir: Path, **overrides: Any) -> "Limits":
        """Half the machine's memory for datasets and specs, the work folder's free space for models."""
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            memory = 16 << 30
        try:
            st = os.statvfs(workdir)
            tmpfs = st.f_bavail * st.f_frsize
        except OSError:
            tmpfs = 0
        return cls(**{"max_memory_bytes": memory // 2, "max_tmpfs_bytes": int(tmpfs * 0.9), **overrides})


class ByteBudget:
    """Bytes held across all sessions for one kind of storage; reservations fail past the limit."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.used = name, limit, 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise LimitReached(f"the enclave holds {self.used} bytes of {self.name} and its limit is "
                                   f"{self.limit}; retry when other sessions have closed or ask the operator")
            self.used += n

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


@dataclass
class Asset:
    kind: str
    digest: str
    plaintext_bytes: int
    party_key: bytes
    attest_nonce: bytes
    budget: ByteBudget
    reserved: int
    files: dict[str, bytes] | None = field(default=None, repr=False)  # dataset / spec
    folder: Path | None = None                                          # model, judges: on tmpfs
    listing: list[dict[str, Any]] = field(default_factory=list, repr=False)  # per file: path, sha256, size

    def drop(self) -> None:
        if self.folder is not None:
            wipe(self.folder)
        if self.files is not None:
            self.files.clear()
        self.budget.release(self.reserved)
        self.reserved = 0


@dataclass
class Upload:
    """One upload in progress. The data key lives only here, only until `finish` or `abort`."""

    session: "AuditSession"
    kind: str
    claimed_digest: str
    party_key: bytes
    attest_nonce: bytes
    unsealer: Unsealer
    sink: Any
    folder: Path | None
    max_bytes: int
    budget: ByteBudget
    received: int = 0
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)

    def feed(self, chunk: bytes) -> None:
        self.last_activity = time.monotonic()
        self.session.last_activity = self.last_activity  # a long upload keeps its session from the reaper
        if self.received + len(chunk) > self.max_bytes:
            self.abort()
            raise LimitReached(f"{self.kind}: upload exceeds this enclave's limit of {self.max_bytes} bytes; refused")
        try:
            self.budget.reserve(len(chunk))
        except LimitReached:
            self.abort()
            raise
        self.received += len(chunk)
        self.unsealer.feed(chunk)

    def abort(self) -> None:
        self.session.uploading.discard(self.kind)
        self.unsealer.abort()
        if self.folder is not None:
            wipe(self.folder)
        self.budget.release(self.received)
        self.received = 0


@dataclass
class JobInputs:
    """What one job needs; the session keeps ownership of the secrets, and holds them for its next
    jobs until it is closed."""

    session_id: str
    model_dir: Path
    spec: AuditSpec
    datasets: dict[str, bytes]
    manifest: RunManifest
    manifest_digest: str
    model_listing: list[dict[str, Any]]   # the model's files as unsealed: the statement's subjects
    approvals: dict[str, bytes]   # role -> Ed25519 signature over the manifest digest
    party_nonces: dict[str, str]
    deadline_s: int
    cancel: threading.Event
    prepared: bytes | None = None  # the prepare bundle the manifest names (step B), carried into the bundle
    judges_dir: Path | None = None   # the judges asset's folder on tmpfs, when the spec names judges
    judges_listing: list[dict[str, Any]] = field(default_factory=list)  # its files: the judge subjects


@dataclass
class PrepareInputs:
    """What one prepare job (step B) needs: the session's model M and the provider's signed request."""

    session_id: str
    job: int
    session_nonce: bytes
    model_dir: Path
    model_digest: str
    model_listing: list[dict[str, Any]]
    model_bytes: int
    method: str
    recipient_suite: str
    recipient: bytes
    provider: bytes
    signature: bytes
    nonce: bytes
    deadline_s: int
    cancel: threading.Event


@dataclass
class AuditSession:
    id: str
    nonce: bytes
    parties: Parties
    joined: set[str]
    created: float = field(default_factory=time.monotonic)
    state: State = State.AWAITING_JOIN
    job: int = 1
    assets: dict[str, Asset] = field(default_factory=dict)
    approvals: dict[str, bytes] = field(default_factory=dict)
    spec: AuditSpec | None = None
    tasks: tuple[TaskRef, ...] = ()
    problems: tuple[str, ...] = ()
    generation: int = 0                 # bumps whenever an asset lands: summaries are made outside the lock
    result: tuple[bytes, bytes | None] | None = None
    prepared: tuple[bytes, PrepareRef] | None = None  # attached prepare bundle of the model (step B)
    cancel: threading.Event = field(default_factory=threading.Event)
    last_activity: float = field(default_factory=time.monotonic)
    uploading: set[str] = field(default_factory=set)  # asset kinds with an upload in flight

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def drop_assets(self) -> None:
        self.generation += 1
        for asset in self.assets.values():
            asset.drop()
        self.assets.clear()
        self.approvals.clear()
        self.prepared = None
        self.spec = None
        self.tasks, self.problems = (), ()


class NonceBook:
    """The attestation nonces one boot issued and what each already served (a session creation, one
    upload per kind). Attesting a known nonce again never reopens it; the oldest are evicted first,
    and an evicted nonce is refused like one never issued."""

    def __init__(self, capacity: int = MAX_OPEN_NONCES) -> None:
        self.capacity = capacity
        self._used: dict[bytes, set[str]] = {}
        self._lock = threading.Lock()

    def issue(self, nonce: bytes) -> None:
        with self._lock:
            self._used.setdefault(nonce, set())
            while len(self._used) > self.capacity:
                del self._used[next(iter(self._used))]

    def use(self, nonce: bytes, purpose: str) -> None:
        with self._lock:
            used = self._used.get(nonce)
            if used is None:
                raise SessionError("attest_nonce was not issued by this enclave boot (or expired): attest again, "
                                   "then retry")
            if purpose in used:
                raise SessionError(f"attest_nonce was already used for a {purpose} (a replay?); attest again")
            used.add(purpose)


class Sessions:
    """Every session of one enclave boot, the attestation nonces it issued, and the shared budgets."""

    def __init__(self, keys: BootKeys, platform: str, code_identity: str, workdir: Path,
                 limits: Limits | None = None) -> None:
        self.keys = keys
        self.platform = platform
        self.code_identity = code_identity
        self.workdir = workdir
        self.limits = limits or Limits()
        self.memory = ByteBudget("dataset and spec bytes in memory", self.limits.max_memory_bytes)
        self.tmpfs = ByteBudget("decrypted model and judges bytes on tmpfs", self.limits.max_tmpfs_bytes)
        self._lock = threading.RLock()
        self._sessions: dict[str, AuditSession] = {}
        self.nonces = NonceBook()

    # --- attestation nonces --------------------------------------------------------------------
    def note_attestation(self, nonce: bytes) -> None:
        """Remember a nonce this boot attested to; each serves one session creation and one upload per kind."""
        self.nonces.issue(nonce)

    # --- sessions ------------------------------------------------------------------------------
    def create(self, attest_nonce: bytes, provider: bytes, auditor: bytes, creator_role: str,
               signature: bytes) -> AuditSession:
        _check_len(attest_nonce, NONCE_LEN, "attest_nonce")
        _check_len(provider, 32, "provider_key (raw Ed25519)")
        _check_len(auditor, 32, "auditor_key (raw Ed25519)")
        if creator_role not in ROLES:
            raise UnusableInput(f"unknown role {_q(creator_role)} (provider or auditor)")
        if provider == auditor:
            raise UnusableInput("provider and auditor must use different identity keys")
        parties = Parties(provider, auditor)
        message = create_message(self.keys.signing_public, attest_nonce, provider, auditor)
        if not verify_party_signature(parties.key(creator_role), message, signature):
            raise NotAParty(f"the session request is not signed by the {creator_role} key it names")
        allowed = self.limits.party_keys
        if allowed is not None and not {provider, auditor} <= allowed:
            raise NotAParty("this enclave's operator accepts sessions only for the party keys it lists; one of "
                            "the keys named is not among them")
        with self._lock:
            self._reap_locked()
            pending = sum(1 for x in self._sessions.values() if x.state is State.AWAITING_JOIN)
            if pending >= self.limits.max_pending_sessions:
                raise LimitReached(f"{pending} sessions are waiting for their second party, this enclave's limit; "
                                   f"each closes {int(self.limits.join_timeout_s)} s after it was created unless "
                                   "joined: retry shortly")
            if len(self._sessions) >= self.limits.max_sessions:
                raise LimitReached(f"this enclave holds its limit of {self.limits.max_sessions} sessions; "
                                   "close a session you own or retry later")
            self.nonces.use(attest_nonce, "session creation")
            session = AuditSession(secrets.token_hex(SESSION_ID_BYTES), secrets.token_bytes(32), parties,
                                   {creator_role})
            self._sessions[session.id] = session
            return session

    def join(self, session_id: str, role: str, signature: bytes) -> AuditSession:
        with self._lock:
            session = self._get_locked(session_id)
            self._check_signed_locked(session, role, join_message(self.keys.signing_public, session.id,
                                                                  session.nonce, role), signature, "join")
            session.joined.add(role)
            if session.state is State.AWAITING_JOIN and session.joined == set(ROLES):
                session.state = State.OPEN
            session.touch()
            return session

    def get(self, session_id: str) -> AuditSession:
        with self._lock:
            return self._get_locked(session_id)

    def _get_locked(self, session_id: str) -> AuditSession:
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise NoSuchSession(f"no session {_q(session_id)} in this enclave boot (closed, expired after "
                                f"{int(self.limits.session_idle_s)} s idle, or the enclave restarted: a restart "
                                "loses every session and asset, so create a session and upload again)")
        return session

    def _check_signed_locked(self, session: AuditSession, role: str, message: bytes, signature: bytes,
                             what: str) -> None:
        if role not in ROLES:
            raise UnusableInput(f"unknown role {_q(role)} (provider or auditor)")
        if not verify_party_signature(session.parties.key(role), message, signature):
            raise NotAParty(f"{what} refused: not signed by this session's {role} key")

    def _require_open_locked(self, session: AuditSession, what: str) -> None:
        if session.state is State.AWAITING_JOIN:
            missing = " and ".join(r for r in ROLES if r not in session.joined)
            raise SessionError(f"{what} refused: the {missing} has not joined session {session.id} yet")
        if session.state is State.CLOSED:
            raise NoSuchSession(f"{what} refused: session {session.id} is closing")
        if session.state in (State.QUEUED, State.RUNNING):
            raise Busy(f"{what} refused: session {session.id}'s job is {session.state.value}; wait for it or "
                       "cancel it")

    def _reap_locked(self) -> None:
        """Close sessions idle past the limit (never one whose job is queued or running)."""
        now = time.monotonic()
        for session in list(self._sessions.values()):
            idle = now - session.last_activity
            unjoined = session.state is State.AWAITING_JOIN and now - session.created > self.limits.join_timeout_s
            if unjoined or (idle > self.limits.session_idle_s and session.state is State.OPEN):
                self._close_locked(session)

    def reap(self) -> None:
        with self._lock:
            self._reap_locked()

    def _close_locked(self, session: AuditSession) -> None:
        session.drop_assets()
        session.result = None
        session.state = State.CLOSED
        self._sessions.pop(session.id, None)

    # --- uploads -------------------------------------------------------------------------------
    def begin_upload(self, session_id: str, kind: str, digest: str, wrapped_key: bytes, stream_header: bytes,
                     party_key: bytes, attest_nonce: bytes, signature: bytes) -> Upload:
        if kind not in ASSET_KINDS:
            raise UnusableInput(f"unknown asset kind {_q(kind)} (expected one of {', '.join(ASSET_KINDS)})")
        _check_len(party_key, 32, "party_public_key (raw Ed25519)")
        _check_len(attest_nonce, NONCE_LEN, "attest_nonce")
        role = UPLOADER_ROLE[kind]
        with self._lock:
            session = self._get_locked(session_id)
            if party_key != session.parties.key(role):
                raise NotAParty(f"{kind} upload refused: only session {session.id}'s {role} key may upload a {kind}")
            message = upload_message(self.keys.signing_public, session.id, kind, digest, stream_header, wrapped_key,
                                     attest_nonce)
            if not verify_party_signature(party_key, message, signature):
                raise NotAParty(f"{kind} upload refused: the header signature does not verify with the {role} key "
                                "for this session, kind, digest, stream and nonce (altered or replayed from "
                                "elsewhere)")
            self._require_open_locked(session, f"{kind} upload")
            self.nonces.use(attest_nonce, f"{kind} upload")
            session.touch()
        try:
            data_key = self.keys.hpke.unwrap(wrapped_key, wrap_info(kind, digest, self.keys.signing_public, party_key,
                                                                    session.id, attest_nonce))
        except AAuditError:
            raise SessionError(f"{kind}: the wrapped data key does not open for this enclave, session, party, "
                               "asset kind, digest and nonce (wrapped for another context, or altered)") from None
        folder, budget = None, self.memory
        if kind in FOLDER_KINDS:
            folder, budget = self.workdir / f"{kind}-{secrets.token_hex(8)}", self.tmpfs
            sink: Any = DirectorySink(folder)
        else:
            sink = MemorySink()
        unsealer = Unsealer(stream_header, data_key, kind, sink, expected_kind=kind)
        del data_key
        with self._lock:
            try:
                self._require_open_locked(session, f"{kind} upload")
                self._replace_locked(session, kind)
            except BaseException:
                unsealer.abort()
                raise
        return Upload(session, kind, digest, party_key, attest_nonce, unsealer, sink, folder,
                      self.limits.max_bytes.get(kind, DEFAULT_MAX_BYTES[kind]), budget)

    def _replace_locked(self, session: AuditSession, kind: str) -> None:
        """Start an upload of `kind`: one at a time per session and kind, and the plaintext held once.
        The asset it replaces is dropped now, not when the new one lands (a model is the largest
        thing an enclave holds; two copies would double tmpfs and memory); the spec (1 MiB at most)
        is kept until its replacement parses, since a spec refused at parse time should lose nothing."""
        if kind in session.uploading:
            raise Busy(f"{kind} upload refused: another {kind} upload into session {session.id} is in progress; "
                       "wait for it to finish")
        session.uploading.add(kind)
        if kind != "spec" and kind in session.assets:
            session.generation += 1  # a summary made from the old asset is stale
            session.assets.pop(kind).drop()
            session.approvals.clear()
            if kind == "model":
                session.prepared = None  # a prepare bundle speaks for the model it came with
            if kind == "dataset":
                session.tasks, session.problems = (), ()

    def finish_upload(self, up: Upload) -> tuple[Asset, str]:
        try:
            digest = up.unsealer.finish(expected_digest=up.claimed_digest)  # wipes the sink on mismatch
            files = None if up.folder is not None else dict(up.sink.files)
            spec = None
            if up.kind == "spec":
                if len(files or {}) != 1:
                    raise UnusableInput("spec: the sealed spec must hold exactly one TOML file")
                spec = parse_spec(next(iter(files.values())))  # SpecError (UnusableInput) names the problem
        except BaseException:
            up.abort()
            raise
        size = sum(len(v) for v in files.values()) if files is not None else _folder_size(up.folder)
        asset = Asset(up.kind, digest, size, up.party_key, up.attest_nonce, up.budget, up.received, files, up.folder,
                      up.unsealer.manifest)
        up.received = 0  # the reservation moves to the asset
        session = up.session
        while True:
            with self._lock:
                self._check_still_open_locked(session, asset)
                generation = session.generation
                current_spec = spec or session.spec
                data = asset.files if up.kind == "dataset" else (session.assets["dataset"].files
                                                                if "dataset" in session.assets else None)
            # Parsing a dataset can take long: done outside the lock every other client needs.
            summary = self._summary(current_spec, data) if up.kind not in FOLDER_KINDS else None
            with self._lock:
                self._check_still_open_locked(session, asset)
                if session.generation != generation:
                    continue  # the other auditor asset changed meanwhile: summarize again
                old = session.assets.pop(up.kind, None)
                if old is not None:
                    old.drop()
                if up.kind == "model":
                    session.prepared = None  # a prepare bundle speaks for the model it came with
                session.assets[up.kind] = asset
                if up.kind == "spec":
                    session.spec = spec
                if summary is not None:
                    session.tasks, session.problems = summary
                session.generation += 1
                session.approvals.clear()  # any new asset voids every approval
                session.uploading.discard(up.kind)
                session.touch()
                return asset, self._manifest_locked(session).digest()

    def _check_still_open_locked(self, session: AuditSession, asset: Asset) -> None:
        if session.state in (State.CLOSED, State.QUEUED, State.RUNNING):
            asset.drop()
            raise Busy(f"session {session.id} was closed or its job started while this upload was in flight; "
                       "upload refused")

    def _summary(self, spec: AuditSpec | None, data: dict[str, bytes] | None) -> tuple[tuple[TaskRef, ...],
                                                                                         tuple[str, ...]]:
        """Per-task document counts and metrics for the manifest, once dataset and spec are both there;
        an inconsistency is a problem that blocks approval (not a refused upload, so that either
        asset can be replaced next)."""
        if spec is None or data is None:
            return (), ()
        tasks: tuple[TaskRef, ...] = ()
        problems: tuple[str, ...] = ()
        try:
            summaries = summarize_tasks(spec, data)
            tasks = tuple(TaskRef(s.name, s.documents, s.distinct, tuple(s.metrics)) for s in summaries)
            check_aggregate(spec, summaries, self.limits.min_documents_floor)
        except AAuditError as exc:
            problems = (str(exc),)
        if (problem := engine_problem(spec.engine)) is not None:
            problems += (problem,)  # before anyone approves, not after the job started
        if spec.deadline_s > self.limits.max_deadline_s:
            problems += (f"the spec's deadline of {spec.deadline_s} s exceeds this enclave's limit of "
                         f"{self.limits.max_deadline_s} s",)
        return tasks, problems

    # --- manifest and approvals ----------------------------------------------------------------
    def _manifest_locked(self, session: AuditSession) -> RunManifest:
        spec = session.spec
        limits = None
        if spec is not None:
            floor = None if spec.output != "aggregate" else max(spec.min_documents, self.limits.min_documents_floor)
            limits = ManifestLimits(min(spec.deadline_s, self.limits.max_deadline_s), floor)
        return RunManifest(
            session=SessionRef(session.id, session.nonce, session.job),
            enclave=EnclaveRef(self.platform, self.code_identity, self.keys.signing_public),
            parties=session.parties,
            assets={k: AssetRef(a.digest, a.plaintext_bytes) for k, a in sorted(session.assets.items())},
            output=spec.output if spec is not None else None,
            samples_recipient=spec.samples_recipient if spec is not None else None,
            tasks=session.tasks,
            limits=limits,
            prepared_from=session.prepared[1] if session.prepared is not None else None,
        )

    def _problems_locked(self, session: AuditSession) -> list[str]:
        missing = [k for k in REQUIRED_KINDS if k not in session.assets]
        uploads = " and ".join(f"`aaudit {role} upload`" for role in dict.fromkeys(UPLOADER_ROLE[k] for k in missing))
        problems = [f"missing asset(s): {', '.join(missing)}; upload into this session with {uploads} (an "
                    "enclave restart drops every upload)"] if missing else []
        if session.state is State.AWAITING_JOIN:
            problems.append(f"waiting for the {' and '.join(r for r in ROLES if r not in session.joined)} to join")
        if session.spec is not None:
            problems += judges_problems(session.spec, session.assets.get("judges"))
        return problems + list(session.problems)

    def manifest(self, session_id: str) -> tuple[RunManifest, list[str], list[str], AuditSession]:
        """The current manifest, the roles that approved it, and why it cannot be approved yet."""
        with self._lock:
            session = self._get_locked(session_id)
            return (self._manifest_locked(session), sorted(session.approvals), self._problems_locked(session),
                    session)

    def approve(self, session_id: str, role: str, digest: str, signature: bytes) -> tuple[list[str], bool]:
        if role not in ROLES:
            raise UnusableInput(f"unknown role {_q(role)} (provider or auditor)")
        with self._lock:
            session = self._get_locked(session_id)
            self._require_open_locked(session, "approval")
            current = self._manifest_locked(session).digest()
            if digest != current:
                raise SessionError(f"approval is for manifest {digest[:80]}, but session {session.id}'s current "
                                   f"manifest is {current} (an asset was uploaded since); fetch the manifest again")
            problems = self._problems_locked(session)
            if problems:
                raise SessionError("the manifest cannot be approved yet: " + "; ".join(problems))
            if not verify_approval(session.parties.key(role), digest, signature):
                raise NotAParty(f"{role} approval signature does not verify with this session's {role} key")
            session.approvals[role] = signature
            session.touch()
            return sorted(session.approvals), len(session.approvals) == len(ROLES)

    # --- jobs ----------------------------------------------------------------------------------
    def queue_job(self, session_id: str, role: str, digest: str, run_nonce: bytes, signature: bytes,
                  queued_jobs: int) -> JobInputs:
        """Move an approved session to QUEUED and hand out its job's inputs."""
        _check_len(run_nonce, NONCE_LEN, "run nonce")
        with self._lock:
            session = self._get_locked(session_id)
            self._check_signed_locked(session, role, run_message(self.keys.signing_public, session.id, digest,
                                                                 run_nonce), signature, "run")
            self._require_open_locked(session, "run")
            manifest = self._manifest_locked(session)
            if digest != manifest.digest():
                raise SessionError(f"run refused: manifest {digest[:80]} is not session {session.id}'s current one "
                                   f"({manifest.digest()})")
            problems = self._problems_locked(session)
            if problems:
                raise SessionError("cannot run: " + "; ".join(problems))
            missing_roles = [r for r in ROLES if r not in session.approvals]
            if missing_roles:
                raise SessionError(f"cannot run: no approval from {' and '.join(missing_roles)} on the current "
                                   "manifest")
            if queued_jobs >= self.limits.max_queued_jobs:
                raise LimitReached(f"{queued_jobs} jobs are waiting for the accelerator, this enclave's limit; "
                                   "retry later")
            assert session.spec is not None and manifest.limits is not None
            session.state = State.QUEUED
            session.cancel = threading.Event()
            session.touch()
            return JobInputs(
                session_id=session.id,
                model_dir=session.assets["model"].folder,  # type: ignore[arg-type]
                spec=session.spec,
                datasets=session.assets["dataset"].files or {},
                manifest=manifest,
                manifest_digest=manifest.digest(),
                model_listing=session.assets["model"].listing,
                approvals={r: session.approvals[r] for r in ROLES},
                party_nonces={UPLOADER_ROLE[k]: a.attest_nonce.hex() for k, a in session.assets.items()},
                deadline_s=manifest.limits.deadline_seconds,
                cancel=session.cancel,
                prepared=session.prepared[0] if session.prepared is not None else None,
                judges_dir=session.assets["judges"].folder if "judges" in session.assets else None,
                judges_listing=session.assets["judges"].listing if "judges" in session.assets else [],
            )

    # --- step B: prepare jobs ------------------------------------------------------------------
    def queue_prepare(self, session_id: str, role: str, method: str, recipient_suite: str, recipient: bytes,
                      nonce: bytes, signature: bytes, queued_jobs: int) -> PrepareInputs:
        """Move the session to QUEUED for a prepare job the provider signed (enclave/prepare.py).
        The auditor's approval is not needed: the job only reads the provider's model and returns Mq
        sealed to the provider; an audit of Mq names the result in a manifest both approve."""
        from sealing.keywrap import DEFAULT_SUITE
        from verifier.prepare import METHODS

        _check_len(nonce, NONCE_LEN, "prepare nonce")
        if role != "provider":
            raise NotAParty("prepare refused: only the session's provider may ask to prepare its model")
        if method not in METHODS:
            raise UnusableInput(f"unknown prepare method {_q(method)}; known: {', '.join(METHODS)}")
        if recipient_suite != DEFAULT_SUITE or len(recipient) != 32:
            raise UnusableInput(f"the recipient key must be a 32-byte {DEFAULT_SUITE} public key")
        with self._lock:
            session = self._get_locked(session_id)
            model = session.assets.get("model")
            digest = model.digest if model is not None else ""
            self._check_signed_locked(session, role, prepare_message(
                self.keys.signing_public, session.id, session.nonce, session.job, digest, method, recipient_suite,
                recipient, nonce), signature, "prepare")
            self._require_open_locked(session, "prepare")
            if model is None:
                raise SessionError("prepare refused: the session holds no model; upload M with `aaudit provider "
                                   "upload` first")
            if queued_jobs >= self.limits.max_queued_jobs:
                raise LimitReached(f"{queued_jobs} jobs are waiting for the accelerator, this enclave's limit; "
                                   "retry later")
            session.state = State.QUEUED
            session.cancel = threading.Event()
            session.touch()
            return PrepareInputs(session.id, session.job, session.nonce, model.folder,  # type: ignore[arg-type]
                                 model.digest, model.listing, model.plaintext_bytes, method, recipient_suite,
                                 recipient, session.parties.provider, signature, nonce, self.limits.max_deadline_s,
                                 session.cancel)

    def attach_prepared(self, session_id: str, role: str, bundle: bytes, signature: bytes) -> tuple[str, str]:
        """Attach the prepare bundle of the session's model; returns (statement digest, manifest digest).
        The enclave checks what it can see (the statement is signed by the key the bundle names and
        made the session's model for this provider); the parties and verifiers check the evidence."""
        from verifier import dsse
        from verifier.inputs import load_json
        from verifier.prepare import PrepareBundle, parse_prepare_statement

        if role != "provider":
            raise NotAParty("attach refused: only the session's provider may attach a prepare bundle")
        if len(bundle) > MAX_PREPARE_BUNDLE_BYTES:
            raise UnusableInput(f"a prepare bundle is at most {MAX_PREPARE_BUNDLE_BYTES} bytes")
        parsed = PrepareBundle.from_json(load_json(bundle, "prepare bundle"))  # ParseError is UnusableInput
        statement = parse_prepare_statement(parsed.envelope.payload)
        if not dsse.verify(parsed.envelope, parsed.enclave.signing_key.public):
            raise UnusableInput("prepare bundle: the statement's signature does not verify with the enclave key "
                                "the bundle names (altered?)")
        p = statement.predicate
        with self._lock:
            session = self._get_locked(session_id)
            model = session.assets.get("model")
            digest = model.digest if model is not None else ""
            self._check_signed_locked(session, role, attach_message(self.keys.signing_public, session.id,
                                                                    session.nonce, digest, parsed.statement_digest),
                                      signature, "attach")
            self._require_open_locked(session, "attach")
            if model is None:
                raise SessionError("attach refused: upload the prepared model (Mq) first, then attach its bundle")
            if p.prepared.digest != model.digest:
                raise SessionError(f"attach refused: the prepare bundle made {p.prepared.digest}, but the session's "
                                   f"model is {model.digest}; upload the Mq that bundle names")
            if p.request.provider != session.parties.provider:
                raise SessionError("attach refused: the prepare bundle was requested by another provider key")
            session.prepared = (bundle, PrepareRef(parsed.statement_digest, p.original.digest, p.method.name))
            session.generation += 1
            session.approvals.clear()
            session.touch()
            return parsed.statement_digest, self._manifest_locked(session).digest()

    def job_running(self, session_id: str, job: int) -> bool:
        """The queue picked this session's job; False if it was cancelled or closed meanwhile."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.job != job or session.state is not State.QUEUED or session.cancel.is_set():
                return False
            session.state = State.RUNNING
            return True

    def end_job(self, session_id: str, job: int, result: tuple[bytes, bytes | None] | None) -> None:
        """Keep job number `job`'s result and open the session for its next job: the assets stay
        (one upload, many audits) until a party closes the session, it idles out or the enclave
        stops; the approvals go, and the next manifest has the next number, so no approval carries
        over. A job that was already ended (cancelled while queued) changes nothing."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.job != job:
                return
            if session.state is State.CLOSED:
                self._close_locked(session)
                return
            self._next_job_locked(session, result)

    def _next_job_locked(self, session: AuditSession, result: tuple[bytes, bytes | None] | None) -> None:
        session.approvals.clear()
        if result is not None:
            session.result = result
        session.job += 1
        session.state = State.OPEN
        session.touch()

    def _signed_action_locked(self, action: str, session_id: str, role: str, digest: str,
                              signature: bytes) -> AuditSession:
        session = self._get_locked(session_id)
        self._check_signed_locked(session, role, job_message(action, self.keys.signing_public, session.id, digest),
                                  signature, action)
        if digest != self._manifest_locked(session).digest():
            raise SessionError(f"{action} refused: it names another manifest than session {session.id}'s current one")
        return session

    def cancel(self, session_id: str, role: str, digest: str, signature: bytes) -> AuditSession:
        with self._lock:
            session = self._signed_action_locked("cancel", session_id, role, digest, signature)
            if session.state not in (State.QUEUED, State.RUNNING):
                raise SessionError(f"session {session.id} has no queued or running job to cancel")
            session.cancel.set()  # a running job's process is killed; its end opens the next job (assets kept)
            if session.state is State.QUEUED:
                self._next_job_locked(session, None)
            return session

    def close(self, session_id: str, role: str, digest: str, signature: bytes) -> AuditSession:
        with self._lock:
            session = self._signed_action_locked("close", session_id, role, digest, signature)
            session.cancel.set()
            if session.state is State.CLOSED:
                return session  # closing already; its running job's end drops the assets
            if session.state is State.RUNNING:
                session.state = State.CLOSED  # the job's end drops its assets and removes the session
            else:
                self._close_locked(session)
            return session

    def result(self, session_id: str) -> tuple[bytes, bytes | None]:
        with self._lock:
            session = self._get_locked(session_id)
            if session.result is None:
                raise NoSuchSession(f"session {session.id} has no finished job yet")
            return session.result

    def close_all(self) -> None:
        with self._lock:
            for session in list(self._sessions.values()):
                session.cancel.set()
                self._close_locked(session)


def judges_problems(spec: AuditSpec, judges: Asset | None) -> list[str]:
    """Why the judges asset does not fit the spec: absent although the spec names judges, no
    `<name>/` folder for a judge the spec names, or folders and files no judge of the spec names
    (weights the job would never load, yet both parties would approve them). Each blocks approval,
    so the auditor can upload a corrected spec or judges asset next."""
    named = [j.name for j in spec.judges]
    if judges is None:
        return [f"the spec names judge(s) {_listed(named)} but no judges asset was uploaded; seal their folders "
                "with `aaudit seal judges FOLDER` and upload it with `aaudit auditor upload`"] if named else []
    folders: set[str] = set()
    loose = 0
    for entry in judges.listing:
        head, sep, _ = entry["path"].partition("/")
        if sep:
            folders.add(head)
        else:
            loose += 1
    problems = []
    if absent := [n for n in named if n not in folders]:
        problems.append(f"the judges asset has no folder for judge(s) {_listed(absent)} named by the spec (expected "
                        "<name>/ with the judge's config.json, safetensors weights and tokenizer)")
    if unused := sorted(folders - set(named)):
        problems.append(f"the judges asset holds folder(s) {_listed(unused)} that no [[judge]] of the spec names; "
                        "seal only the spec's judges")
    if loose:
        problems.append(f"the judges asset holds {loose} file(s) outside any judge folder; seal a folder holding "
                        "only one <name>/ folder per [[judge]] of the spec")
    return problems


def _listed(names: list[str], shown: int = 8) -> str:
    """Names quoted and cut short: a problem never lists thousands of folders."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(_q(n) for n in names[:shown]) + more


def _q(text: object) -> str:
    """A request field quoted in a message, cut short: a refusal never echoes megabytes."""
    shown = repr(text)
    return shown if len(shown) <= 66 else shown[:60] + "...'"


def _check_len(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise UnusableInput(f"{what} must be {n} bytes, got {len(value)}")


def _folder_size(folder: Path | None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else 0
