"""Audit sessions without gRPC, attacked as the security review did: replayed and re-targeted
uploads, approvals carried over, role lock-out, strangers acting in another's session, exhaustion."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from enclave.keys import BootKeys
from enclave.session import (
    Busy,
    LimitReached,
    Limits,
    NoSuchSession,
    NotAParty,
    Sessions,
    SessionError,
    State,
)
from sealing import keywrap
from sealing.identity import Identity
from sealing.stream import SealedReader, read_key_file, seal
from verifier.binding import create_message, job_message, join_message, upload_message, wrap_info
from verifier.manifest import approval_message


@dataclass
class Header:
    """One captured upload: everything an attacker on the network path sees."""

    session_id: str
    kind: str
    digest: str
    wrapped_key: bytes
    stream_header: bytes
    party_key: bytes
    attest_nonce: bytes
    signature: bytes
    chunks: list[bytes]


def _identity() -> Identity:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return Identity(ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("assets")
    build_tiny_model(root / "model", seed=7)
    write_demo_data(root / "data")
    (root / "audit.toml").write_text(demo_spec_toml(samples_recipient=_recipient()))
    return {"model": seal(root / "model", root / "sealed", "model"),
            "dataset": seal(root / "data", root / "sealed", "dataset"),
            "spec": seal(root / "audit.toml", root / "sealed", "spec")}


def _recipient() -> str:
    import base64

    return base64.b64encode(keywrap.HpkeKeyPair.generate().public_bytes()).decode()


class World:
    """An enclave's sessions and two honest parties, as the enclave service would drive them."""

    def __init__(self, tmp_path: Path, sealed: dict, limits: Limits | None = None) -> None:
        self.keys = BootKeys.generate()
        work = tmp_path / "work"
        work.mkdir()
        self.sessions = Sessions(self.keys, "sim", "00" * 32, work, limits)
        self.sealed = sealed
        self.provider, self.auditor = _identity(), _identity()

    def attest(self) -> bytes:
        nonce = os.urandom(32)
        self.sessions.note_attestation(nonce)
        return nonce

    def create(self, creator: Identity, provider: Identity, auditor: Identity, role: str = "auditor") -> str:
        nonce = self.attest()
        p, a = provider.public_raw(), auditor.public_raw()
        sig = creator.sign(create_message(self.keys.signing_public, nonce, p, a))
        return self.sessions.create(nonce, p, a, role, sig).id

    def join(self, sid: str, who: Identity, role: str) -> None:
        session = self.sessions.get(sid)
        self.sessions.join(sid, role, who.sign(join_message(self.keys.signing_public, sid, session.nonce, role)))

    def open(self) -> str:
        sid = self.create(self.auditor, self.provider, self.auditor)
        self.join(sid, self.provider, "provider")
        return sid

    def capture(self, sid: str, kind: str, who: Identity) -> Header:
        """What an honest party sends for one upload (and an eavesdropper records)."""
        asset, nonce = self.sealed[kind], self.attest()
        party = who.public_raw()
        wrapped = keywrap.wrap(read_key_file(asset.key_path), self.keys.hpke.public_bytes(), self.keys.hpke.suite,
                               wrap_info(kind, asset.digest, self.keys.signing_public, party, sid, nonce))
        reader = SealedReader(asset.sealed_path)
        sig = who.sign(upload_message(self.keys.signing_public, sid, kind, asset.digest, reader.header, wrapped, nonce))
        return Header(sid, kind, asset.digest, wrapped, reader.header, party, nonce, sig, list(reader))

    def send(self, h: Header) -> str:
        up = self.sessions.begin_upload(h.session_id, h.kind, h.digest, h.wrapped_key, h.stream_header, h.party_key,
                                        h.attest_nonce, h.signature)
        for c in h.chunks:
            up.feed(c)
        return self.sessions.finish_upload(up)[1]

    def provision(self, sid: str) -> dict[str, Header]:
        sent = {}
        for kind in ("model", "dataset", "spec"):
            sent[kind] = self.capture(sid, kind, self.provider if kind == "model" else self.auditor)
            self.send(sent[kind])
        return sent

    def approve_both(self, sid: str) -> str:
        manifest, _, problems, _ = self.sessions.manifest(sid)
        assert not problems, problems
        digest = manifest.digest()
        for role, who in (("provider", self.provider), ("auditor", self.auditor)):
            self.sessions.approve(sid, role, digest, who.sign(approval_message(digest)))
        return digest


@pytest.fixture()
def world(tmp_path: Path, sealed: dict) -> World:
    return World(tmp_path, sealed)


def test_replayed_upload_under_another_key_or_into_another_session_is_refused(world: World) -> None:
    """Review finding (a)/(b): a captured upload re-sent under the attacker's key, or into the
    attacker's own session, never lands."""
    sid = world.open()
    captured = world.capture(sid, "dataset", world.auditor)
    world.send(captured)
    attacker = _identity()
    # (1) same session, the attacker's key in the header: not the session's auditor key.
    with pytest.raises(NotAParty, match="only session .* auditor key"):
        world.send(replace(captured, party_key=attacker.public_raw(), attest_nonce=world.attest()))
    # (2) the attacker's own session, the victim's key and signature: the signature binds the session id.
    own = world.create(attacker, _identity(), attacker)
    with pytest.raises(NotAParty):
        world.send(replace(captured, session_id=own, attest_nonce=world.attest()))
    # (3) a session naming the victim auditor, created by the attacker as "provider": the victim
    #     never joined, and the signature still names the other session.
    trap = world.create(attacker, attacker, world.auditor, role="provider")
    with pytest.raises(NotAParty, match="does not verify"):
        world.send(replace(captured, session_id=trap, attest_nonce=world.attest()))
    # (4) the same bytes again in the same session: the attestation nonce served this kind already.
    with pytest.raises(SessionError, match="already used for a dataset upload"):
        world.send(captured)
    # (5) a fresh nonce pasted in: the signature covers the nonce, and the wrap info binds it.
    with pytest.raises(NotAParty, match="does not verify"):
        world.send(replace(captured, attest_nonce=world.attest()))


def test_wrapped_key_is_bound_to_party_session_and_nonce(world: World) -> None:
    """Even with a valid signature, a key wrapped for another context does not open."""
    sid = world.open()
    h = world.capture(sid, "spec", world.auditor)
    other_nonce = world.attest()
    asset = world.sealed["spec"]
    wrapped = keywrap.wrap(read_key_file(asset.key_path), world.keys.hpke.public_bytes(), world.keys.hpke.suite,
                           wrap_info("spec", asset.digest, world.keys.signing_public, h.party_key, sid, h.attest_nonce))
    sig = world.auditor.sign(upload_message(world.keys.signing_public, sid, "spec", asset.digest, h.stream_header,
                                            wrapped, other_nonce))
    with pytest.raises(SessionError, match="does not open"):
        world.send(replace(h, wrapped_key=wrapped, attest_nonce=other_nonce, signature=sig))


def test_after_a_job_nothing_replays(world: World) -> None:
    """Review finding (c): after a job ends, the same uploads and approvals cannot rebuild a run.
    The assets stay for the next job, but its manifest has the next number: job 1's approvals
    neither approve nor run job 2."""
    sid = world.open()
    sent = world.provision(sid)
    old_digest = world.approve_both(sid)
    old_approvals = {r: s for r, s in world.sessions.get(sid).approvals.items()}
    job = world.sessions.queue_job(sid, "auditor", old_digest, bytes(32), _run_sig(world, sid, old_digest), 0)
    assert world.sessions.job_running(sid, job.manifest.session.job)
    world.sessions.end_job(sid, job.manifest.session.job, (b"{}", None))
    assert job.manifest.session.job == 1
    for h in sent.values():
        with pytest.raises(SessionError, match="already used"):
            world.send(h)
    manifest, approved, problems, _ = world.sessions.manifest(sid)
    assert manifest.session.job == 2 and manifest.digest() != old_digest
    assert manifest.assets == job.manifest.assets and not problems, "the assets stay for the next job"
    assert approved == [], "job 1's approvals do not carry over"
    for role, sig in old_approvals.items():
        with pytest.raises(SessionError, match="current manifest is"):
            world.sessions.approve(sid, role, old_digest, sig)
        with pytest.raises(NotAParty, match="does not verify"):  # a job-1 signature over the job-2 digest
            world.sessions.approve(sid, role, manifest.digest(), sig)
    with pytest.raises(SessionError, match="not session .* current one"):
        world.sessions.queue_job(sid, "auditor", old_digest, bytes(32), _run_sig(world, sid, old_digest), 0)
    with pytest.raises(SessionError, match="no approval from provider and auditor"):
        world.sessions.queue_job(sid, "auditor", manifest.digest(), bytes(32),
                                 _run_sig(world, sid, manifest.digest()), 0)


def test_assets_stay_across_jobs_until_close(tmp_path: Path, sealed: dict) -> None:
    """One upload, many audits: a job's end keeps every asset and its reserved bytes; a new spec
    replaces only the spec and voids the approvals; closing the session wipes the plaintext and
    frees the budgets."""
    (tmp_path / "seed.toml").write_text(demo_spec_toml(seed=99, samples_recipient=_recipient()))
    spec2 = seal(tmp_path / "seed.toml", tmp_path / "sealed2", "spec")
    world = World(tmp_path, sealed)
    sid = world.open()
    world.provision(sid)
    digest = world.approve_both(sid)
    model = world.sessions.get(sid).assets["model"]
    memory, tmpfs = world.sessions.memory.used, world.sessions.tmpfs.used
    assert memory > 0 and tmpfs > 0 and model.folder is not None and model.folder.is_dir()
    job = world.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(world, sid, digest), 0)
    assert world.sessions.job_running(sid, 1)
    world.sessions.end_job(sid, 1, (b"{}", None))
    session = world.sessions.get(sid)
    assert session.state is State.OPEN and session.assets["model"] is model and model.folder.is_dir()
    assert (world.sessions.memory.used, world.sessions.tmpfs.used) == (memory, tmpfs), "held until close"
    assert session.assets["dataset"].files == job.datasets and job.datasets, "the dataset bytes stay"
    digest2 = world.approve_both(sid)  # job 2 on the same assets
    old_spec_bytes = world.sessions.get(sid).assets["spec"].reserved
    world.sealed = {**sealed, "spec": spec2}
    world.send(world.capture(sid, "spec", world.auditor))  # a new spec voids job 2's approvals
    manifest, approved, _, _ = world.sessions.manifest(sid)
    assert approved == [] and manifest.digest() != digest2 and manifest.session.job == 2
    assert manifest.assets["spec"].digest == spec2.digest != sealed["spec"].digest
    assert world.sessions.get(sid).assets["model"] is model, "a spec upload replaces only the spec"
    assert world.sessions.tmpfs.used == tmpfs and world.sessions.memory.used == memory + (
        world.sessions.get(sid).assets["spec"].reserved - old_spec_bytes), "the old spec's bytes are released"
    close = world.provider.sign(job_message("close", world.keys.signing_public, sid, manifest.digest()))
    world.sessions.close(sid, "provider", manifest.digest(), close)
    assert not model.folder.exists() and job.datasets == {}, "closing wipes the plaintext"
    assert (world.sessions.memory.used, world.sessions.tmpfs.used) == (0, 0)


def test_cancel_while_queued_keeps_the_assets(world: World) -> None:
    sid = world.open()
    world.provision(sid)
    digest = world.approve_both(sid)
    world.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(world, sid, digest), 0)
    cancel = world.auditor.sign(job_message("cancel", world.keys.signing_public, sid, digest))
    world.sessions.cancel(sid, "auditor", digest, cancel)
    manifest, approved, problems, session = world.sessions.manifest(sid)
    assert session.state is State.OPEN and manifest.session.job == 2 and approved == [] and not problems
    assert set(manifest.assets) == {"model", "dataset", "spec"}


def _run_sig(world: World, sid: str, digest: str, nonce: bytes | None = None) -> bytes:
    from verifier.binding import run_message

    return world.auditor.sign(run_message(world.keys.signing_public, sid, digest, nonce or bytes(32)))


def test_strangers_cannot_lock_out_or_touch_a_session(world: World) -> None:
    """Review finding "role lock-out": a stranger's sessions never block the real parties, and it
    cannot join, upload to, approve, run, cancel or close theirs."""
    stranger = _identity()
    for _ in range(3):
        world.create(stranger, _identity(), stranger)  # its own sessions: allowed, and irrelevant
    sid = world.open()
    world.provision(sid)
    digest = world.approve_both(sid)
    session = world.sessions.get(sid)
    with pytest.raises(NotAParty):
        world.sessions.join(sid, "auditor", stranger.sign(join_message(world.keys.signing_public, sid, session.nonce,
                                                                       "auditor")))
    with pytest.raises(NotAParty):
        world.sessions.approve(sid, "auditor", digest, stranger.sign(approval_message(digest)))
    with pytest.raises(NotAParty):
        world.sessions.cancel(sid, "provider", digest, stranger.sign(job_message("cancel", world.keys.signing_public,
                                                                                 sid, digest)))
    with pytest.raises(NotAParty):
        world.sessions.close(sid, "auditor", digest, stranger.sign(job_message("close", world.keys.signing_public,
                                                                               sid, digest)))
    from verifier.binding import run_message

    with pytest.raises(NotAParty):
        world.sessions.queue_job(sid, "auditor", digest, bytes(32),
                                 stranger.sign(run_message(world.keys.signing_public, sid, digest, bytes(32))), 0)
    world.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(world, sid, digest), 0)  # the parties can


def test_creation_is_signed_single_use_and_needs_the_join(world: World) -> None:
    nonce = world.attest()
    p, a = world.provider.public_raw(), world.auditor.public_raw()
    sig = world.auditor.sign(create_message(world.keys.signing_public, nonce, p, a))
    with pytest.raises(NotAParty, match="not signed by the provider"):
        world.sessions.create(nonce, p, a, "provider", sig)
    sid = world.sessions.create(nonce, p, a, "auditor", sig).id
    with pytest.raises(SessionError, match="already used"):
        world.sessions.create(nonce, p, a, "auditor", sig)
    with pytest.raises(SessionError, match="provider has not joined"):
        world.send(world.capture(sid, "spec", world.auditor))
    other = world.open()  # a join signature names its session and nonce: it cannot be moved
    other_session = world.sessions.get(other)
    moved = world.provider.sign(join_message(world.keys.signing_public, other, other_session.nonce, "provider"))
    with pytest.raises(NotAParty):
        world.sessions.join(sid, "provider", moved)
    world.join(sid, world.provider, "provider")
    assert world.sessions.get(sid).state is State.OPEN


def test_manifest_names_session_tasks_and_limits(world: World) -> None:
    sid = world.open()
    world.provision(sid)
    manifest, _, problems, _ = world.sessions.manifest(sid)
    assert not problems
    session = world.sessions.get(sid)
    assert manifest.session.id == sid and manifest.session.nonce == session.nonce and manifest.session.job == 1
    assert manifest.parties.provider == world.provider.public_raw()
    assert {t.name: t.documents for t in manifest.tasks} == {"aa_demo_mc": 48, "aa_demo_gen": 18}
    assert manifest.limits is not None and manifest.limits.deadline_seconds > 0


def test_busy_session_refuses_changes_and_cancel_needs_a_job(world: World) -> None:
    sid = world.open()
    world.provision(sid)
    digest = world.approve_both(sid)
    cancel = world.auditor.sign(job_message("cancel", world.keys.signing_public, sid, digest))
    with pytest.raises(SessionError, match="no queued or running job"):
        world.sessions.cancel(sid, "auditor", digest, cancel)
    inputs = world.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(world, sid, digest), 0)
    with pytest.raises(Busy):
        world.send(world.capture(sid, "spec", world.auditor))
    world.sessions.cancel(sid, "auditor", digest, cancel)
    assert inputs.cancel.is_set() and not world.sessions.job_running(sid, inputs.manifest.session.job)
    assert world.sessions.get(sid).state is State.OPEN, "a job cancelled while queued ends at once"


def test_limits_on_sessions_queue_and_bytes(tmp_path: Path, sealed: dict) -> None:
    w = World(tmp_path, sealed, Limits(max_sessions=2, max_memory_bytes=600, max_queued_jobs=0))
    sid = w.open()
    w.create(w.auditor, w.provider, w.auditor)
    with pytest.raises(LimitReached, match="limit of 2 sessions"):
        w.create(w.auditor, w.provider, w.auditor)
    with pytest.raises(LimitReached, match="dataset and spec bytes"):
        w.send(w.capture(sid, "dataset", w.auditor))
    assert w.sessions.memory.used == 0, "an aborted upload releases what it reserved"
    assert w.sessions.manifest(sid)[0].assets == {}


def test_per_kind_upload_cap_and_closed_sessions(tmp_path: Path, sealed: dict) -> None:
    w = World(tmp_path, sealed, Limits(max_bytes={"model": 1 << 30, "dataset": 100, "spec": 1 << 20}))
    sid = w.open()
    with pytest.raises(LimitReached, match="exceeds this enclave's limit of 100 bytes"):
        w.send(w.capture(sid, "dataset", w.auditor))
    w.send(w.capture(sid, "spec", w.auditor))
    digest = w.sessions.manifest(sid)[0].digest()
    w.sessions.close(sid, "provider", digest, w.provider.sign(job_message("close", w.keys.signing_public, sid, digest)))
    assert w.sessions.memory.used == 0
    with pytest.raises(NoSuchSession, match="create a session and upload again"):
        w.sessions.manifest(sid)


def test_idle_sessions_are_reaped(tmp_path: Path, sealed: dict) -> None:
    w = World(tmp_path, sealed, Limits(session_idle_s=3600.0))
    sid = w.open()
    w.provision(sid)
    digest = w.approve_both(sid)
    w.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(w, sid, digest), 0)
    assert w.sessions.job_running(sid, 1)
    folder = w.sessions.get(sid).assets["model"].folder
    w.sessions.end_job(sid, 1, (b"{}", None))
    w.sessions.limits = replace(w.sessions.limits, session_idle_s=0.0)
    w.sessions.reap()  # nobody used the session since its job: its kept assets go with it
    with pytest.raises(NoSuchSession):
        w.sessions.get(sid)
    assert folder is not None and not folder.exists()
    assert (w.sessions.memory.used, w.sessions.tmpfs.used) == (0, 0)


def test_an_approval_must_name_every_asset_digest() -> None:
    from aaudit.client import ExpectedRun
    from verifier.errors import UnusableInput

    with pytest.raises(UnusableInput, match="missing spec"):
        ExpectedRun({"model": "sha256:" + "0" * 64, "dataset": "sha256:" + "1" * 64}, {})


def test_aggregate_output_refuses_tasks_of_too_few_documents(tmp_path: Path, sealed: dict) -> None:
    """Review finding "aggregate is not aggregate": a one-document task's public byte_perplexity is
    that document's exact log-likelihood. The manifest shows each task's document count, and an
    aggregate-only run of a task below the minimum cannot be approved."""
    (tmp_path / "agg.toml").write_text(demo_spec_toml())  # output = "aggregate"; aa_demo_gen has 18 documents
    w = World(tmp_path, {**sealed, "spec": seal(tmp_path / "agg.toml", tmp_path / "sealed-agg", "spec")})
    sid = w.open()
    w.provision(sid)
    manifest, _, problems, _ = w.sessions.manifest(sid)
    assert {t.name: t.documents for t in manifest.tasks}["aa_demo_gen"] == 18
    assert manifest.limits is not None and manifest.limits.min_documents == 20
    assert any("aa_demo_gen" in p and "18" in p for p in problems), problems
    digest = manifest.digest()
    with pytest.raises(SessionError, match="cannot be approved yet"):
        w.sessions.approve(sid, "provider", digest, w.provider.sign(approval_message(digest)))
    (tmp_path / "low.toml").write_text("min_documents = 5\n" + demo_spec_toml())
    low = seal(tmp_path / "low.toml", tmp_path / "sealed-low", "spec")
    for floor, refused in ((10, False), (40, True)):  # the auditor may lower the minimum, never below the floor
        (tmp_path / str(floor)).mkdir()
        w = World(tmp_path / str(floor), {**sealed, "spec": low}, Limits(min_documents_floor=floor))
        sid = w.open()
        w.provision(sid)
        manifest, _, problems, _ = w.sessions.manifest(sid)
        assert manifest.limits is not None and manifest.limits.min_documents == max(5, floor)
        assert bool(problems) is refused, problems


def test_reupload_holds_the_plaintext_once(tmp_path: Path, sealed: dict) -> None:
    """A model or dataset re-upload drops the old plaintext when it starts, so tmpfs and memory never
    hold two copies; a second upload of the same kind meanwhile is refused; a spec is kept until its
    replacement parses."""
    world = World(tmp_path, sealed)
    sid = world.open()
    world.provision(sid)
    work = world.sessions.workdir
    old_model = world.sessions.get(sid).assets["model"]
    model_bytes, data_bytes = world.sessions.tmpfs.used, world.sessions.get(sid).assets["dataset"].reserved
    assert model_bytes > 0 and list(work.iterdir()) == [old_model.folder]

    for kind, budget, size in (("model", world.sessions.tmpfs, model_bytes),
                               ("dataset", world.sessions.memory, data_bytes)):
        h = world.capture(sid, kind, world.provider if kind == "model" else world.auditor)
        before = budget.used
        up = world.sessions.begin_upload(h.session_id, h.kind, h.digest, h.wrapped_key, h.stream_header,
                                         h.party_key, h.attest_nonce, h.signature)
        assert kind not in world.sessions.get(sid).assets and budget.used == before - size, "old copy dropped"
        if kind == "model":
            assert not old_model.folder.exists()
        second = world.capture(sid, kind, world.provider if kind == "model" else world.auditor)
        with pytest.raises(Busy, match=f"another {kind} upload into session .* is in progress"):
            world.send(second)
        peak = before - size
        for c in h.chunks:
            up.feed(c)
            peak = max(peak, budget.used)
        assert peak <= before, f"{kind}: never two plaintext copies"
        world.sessions.finish_upload(up)
        assert world.sessions.get(sid).assets[kind].digest == sealed[kind].digest

    _, _, problems, _ = world.sessions.manifest(sid)
    assert problems == [], problems  # the task summary came back with the new dataset
    h = world.capture(sid, "model", world.provider)
    up = world.sessions.begin_upload(h.session_id, h.kind, h.digest, h.wrapped_key, h.stream_header,
                                     h.party_key, h.attest_nonce, h.signature)
    up.abort()  # a re-upload that fails leaves the model missing, and says so
    _, _, problems, _ = world.sessions.manifest(sid)
    assert problems and "missing asset(s): model" in problems[0]
    world.send(world.capture(sid, "model", world.provider))  # and the kind is free to upload again
    assert "model" in world.sessions.get(sid).assets and world.sessions.tmpfs.used == model_bytes
