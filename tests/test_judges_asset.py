"""The auditor's judge models as a sealed asset (issue 10, deliverable 1): attacked like the other kinds.

A judges asset is one folder with a `<name>/` model folder per `[[judge]]` of the spec, sealed and
uploaded by the auditor, unsealed to tmpfs like the model, approved by both parties through its
digest in the manifest, handed to the job as `judges_dir`, and named file by file in the statement
(`judge/<name>/<path>` subjects) where the verifier holds it to the manifest's judges digest.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import threading
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import RunningEnclave, approve_both, expected, make_parties, open_session, provision, run
from test_session import World, _recipient, _run_sig

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from benchmarks.spec import parse_spec
from enclave import jobs
from enclave.session import LimitReached, Limits, NotAParty, SessionError, judges_problems
from sealing import keywrap
from sealing.digest import file_listing
from sealing.stream import SealedReader, read_key_file, seal
from tests.bundle_factory import Made, make_bundle
from verifier import policy
from verifier.binding import job_message, upload_message, wrap_info
from verifier.bundle import verify_bundle
from verifier.errors import AAuditError, ParseError, PolicyError, VerificationError
from verifier.statement import parse_statement

JUDGE = "tox"


_METRIC = {"classifier": 'metric = "judge_toxicity", label = "toxic"',
           "causal_lm": 'metric = "judge_rubric", template = "Answer: {{ prediction }}\\nGood?", choices = ["no", "yes"]'}


def _judge_table(name: str = JUDGE, kind: str = "classifier") -> str:
    """A [[judge]] and a generation task on the demo's questions that it scores."""
    return (f'\n[[judge]]\nname = "{name}"\nkind = "{kind}"\n\n[[task]]\nname = "aa_judged"\ndataset = "gen.jsonl"\n'
            '\n[task.config]\noutput_type = "generate_until"\ndoc_to_text = "Question: {{question}}\\nAnswer:"\n'
            'doc_to_target = "{{answer}}"\ngeneration_kwargs = { until = ["\\n"], max_gen_toks = 8 }\n'
            f'metric_list = [{{ {_METRIC[kind]}, judge = "{name}" }}]\n')


def _judge_folder(root: Path, names: tuple[str, ...], weights: bytes = b"weights") -> Path:
    """A judges folder with a made-up model per name: the session never loads them."""
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps({"model_type": "distilbert", "name": name}))
        (root / name / "model.safetensors").write_bytes(weights)
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Sealed assets: the model, the data, a spec with and one without a judge, and judges folders
    that fit the spec, miss its judge, hold another, or carry other weights."""
    root = tmp_path_factory.mktemp("judges")
    build_tiny_model(root / "model", seed=11)
    write_demo_data(root / "data")
    plain = demo_spec_toml(samples_recipient=_recipient())
    (root / "plain.toml").write_text(plain)
    (root / "judged.toml").write_text(plain + _judge_table())
    out = root / "sealed"
    return {
        "model": seal(root / "model", out / "model", "model"),
        "dataset": seal(root / "data", out / "data", "dataset"),
        "spec": seal(root / "judged.toml", out / "judged", "spec"),
        "plain-spec": seal(root / "plain.toml", out / "plain", "spec"),
        "judges": seal(_judge_folder(root / "j-good", (JUDGE,)), out / "good", "judges"),
        "judges-other-weights": seal(_judge_folder(root / "j-new", (JUDGE,), b"retrained"), out / "new", "judges"),
        "judges-wrong-name": seal(_judge_folder(root / "j-wrong", ("toxic",)), out / "wrong", "judges"),
        "judges-extra": seal(_judge_folder(root / "j-extra", (JUDGE, "spare")), out / "extra", "judges"),
    }


def _world(tmp_path: Path, assets: dict[str, Any], limits: Limits | None = None, **kinds: str) -> World:
    """A World whose sealed kinds are `assets` entries: `spec="plain-spec"` swaps the spec."""
    return World(tmp_path, {k: assets[kinds.get(k, k)] for k in ("model", "dataset", "spec", "judges")}, limits)


def _provision(w: World, sid: str, judges: bool = True) -> None:
    w.provision(sid)
    if judges:
        w.send(w.capture(sid, "judges", w.auditor))


def _problems(w: World, sid: str) -> list[str]:
    return w.sessions.manifest(sid)[2]


# --- the enclave's session rules ---------------------------------------------------------------

def test_spec_with_judges_needs_the_judges_asset_whose_digest_both_approve(tmp_path: Path, assets) -> None:
    w = _world(tmp_path, assets)
    sid = w.open()
    _provision(w, sid, judges=False)
    problems = _problems(w, sid)
    assert problems == ["the spec names judge(s) 'tox' but no judges asset was uploaded; seal their folders with "
                        "`aaudit seal judges FOLDER` and upload it with `aaudit auditor upload`"]
    manifest = w.sessions.manifest(sid)[0]
    with pytest.raises(SessionError, match="cannot be approved yet: the spec names judge"):
        w.sessions.approve(sid, "provider", manifest.digest(), b"\0" * 64)
    w.send(w.capture(sid, "judges", w.auditor))
    digest = w.approve_both(sid)
    manifest = w.sessions.manifest(sid)[0]
    assert manifest.assets["judges"].digest == assets["judges"].digest and manifest.digest() == digest
    assert manifest.assets["judges"].bytes == assets["judges"].plaintext_size
    job = w.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(w, sid, digest), 0)
    folder = w.sessions.get(sid).assets["judges"].folder
    assert job.judges_dir == folder and folder.parent == w.sessions.workdir
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["tox/config.json", "tox/model.safetensors"]
    assert [e["path"] for e in job.judges_listing] == ["tox/config.json", "tox/model.safetensors"]


def test_without_judges_everything_is_as_before(tmp_path: Path, assets) -> None:
    w = _world(tmp_path, assets, spec="plain-spec")
    sid = w.open()
    _provision(w, sid, judges=False)
    digest = w.approve_both(sid)
    manifest = w.sessions.manifest(sid)[0]
    assert set(manifest.assets) == {"model", "dataset", "spec"} and manifest.complete
    job = w.sessions.queue_job(sid, "auditor", digest, bytes(32), _run_sig(w, sid, digest), 0)
    assert job.judges_dir is None and job.judges_listing == []


@pytest.mark.parametrize(("spec", "judges", "want"), [
    ("spec", "judges-wrong-name", ["the judges asset has no folder for judge(s) 'tox' named by the spec",
                                   "the judges asset holds folder(s) 'toxic' that no [[judge]] of the spec names"]),
    ("spec", "judges-extra", ["the judges asset holds folder(s) 'spare' that no [[judge]] of the spec names"]),
    ("plain-spec", "judges", ["the judges asset holds folder(s) 'tox' that no [[judge]] of the spec names"]),
])
def test_judges_that_do_not_fit_the_spec_block_approval(tmp_path: Path, assets, spec: str, judges: str,
                                                       want: list[str]) -> None:
    """A judge the spec names without its folder could not run; a folder no judge names would be
    weights both parties approve and the job never loads. Either blocks approval, naming the judge."""
    w = _world(tmp_path, assets, spec=spec, judges=judges)
    sid = w.open()
    _provision(w, sid)
    problems = _problems(w, sid)
    assert len(problems) == len(want) and all(p.startswith(x) for p, x in zip(problems, want)), problems
    manifest = w.sessions.manifest(sid)[0]
    with pytest.raises(SessionError, match="cannot be approved yet"):
        w.sessions.approve(sid, "auditor", manifest.digest(), b"\0" * 64)
    w.sealed = {**w.sealed, "spec": assets["spec"], "judges": assets["judges"]}  # the auditor fixes both
    w.send(w.capture(sid, "spec", w.auditor))
    w.send(w.capture(sid, "judges", w.auditor))
    assert _problems(w, sid) == []


def test_loose_files_beside_the_judge_folders_are_a_problem() -> None:
    spec = parse_spec((demo_spec_toml() + _judge_table()).encode())
    fake = type("Judges", (), {"listing": [{"path": "tox/config.json"}, {"path": "README.md"}]})()
    assert judges_problems(spec, fake) == [  # type: ignore[arg-type]
        "the judges asset holds 1 file(s) outside any judge folder; seal a folder holding only one <name>/ folder "
        "per [[judge]] of the spec"]


def test_the_provider_key_cannot_upload_judges(world_factory: Callable[..., World]) -> None:
    w = world_factory()
    sid = w.open()
    with pytest.raises(NotAParty, match="only session .* auditor key may upload a judges"):
        w.send(w.capture(sid, "judges", w.provider))
    assert "judges" not in w.sessions.get(sid).assets


def test_a_judges_upload_cannot_be_replayed_into_another_session(world_factory: Callable[..., World]) -> None:
    """The same binding as every kind: the signed header names the session, the wrap `info` binds
    party key, session and nonce, and a nonce serves one judges upload."""
    w = world_factory()
    first, second = w.open(), w.open()  # two sessions of the same two parties
    captured = w.capture(first, "judges", w.auditor)
    w.send(captured)
    with pytest.raises(NotAParty, match="does not verify"):  # the signature names the first session
        w.send(replace(captured, session_id=second, attest_nonce=w.attest()))
    # The auditor's own fresh signature for the second session, over the key wrapped for the first.
    nonce = w.attest()
    sig = w.auditor.sign(upload_message(w.keys.signing_public, second, "judges", captured.digest,
                                        captured.stream_header, captured.wrapped_key, nonce))
    with pytest.raises(SessionError, match="does not open"):
        w.send(replace(captured, session_id=second, attest_nonce=nonce, signature=sig))
    with pytest.raises(SessionError, match="already used for a judges upload"):
        w.send(captured)
    assert "judges" not in w.sessions.get(second).assets


def test_another_kind_sealed_stream_is_not_accepted_as_judges(world_factory: Callable[..., World]) -> None:
    """The sealed header names its kind: a dataset stream relabelled as judges does not unseal."""
    w = world_factory()
    sid = w.open()
    asset, nonce = w.sealed["dataset"], w.attest()
    party = w.auditor.public_raw()
    wrapped = keywrap.wrap(read_key_file(asset.key_path), w.keys.hpke.public_bytes(), w.keys.hpke.suite,
                           wrap_info("judges", asset.digest, w.keys.signing_public, party, sid, nonce))
    reader = SealedReader(asset.sealed_path)
    sig = w.auditor.sign(upload_message(w.keys.signing_public, sid, "judges", asset.digest, reader.header, wrapped,
                                        nonce))
    with pytest.raises(AAuditError, match="sealed as a dataset, expected a judges"):
        w.sessions.begin_upload(sid, "judges", asset.digest, wrapped, reader.header, party, nonce, sig)


def test_replacing_the_judges_voids_every_approval(tmp_path: Path, assets) -> None:
    w = _world(tmp_path, assets)
    sid = w.open()
    _provision(w, sid)
    old = w.approve_both(sid)
    w.sealed = {**w.sealed, "judges": assets["judges-other-weights"]}
    w.send(w.capture(sid, "judges", w.auditor))
    manifest, approved, problems, _ = w.sessions.manifest(sid)
    assert approved == [] and problems == [] and manifest.digest() != old
    assert manifest.assets["judges"].digest == assets["judges-other-weights"].digest
    with pytest.raises(SessionError, match="approval is for manifest"):
        from verifier.manifest import approval_message

        w.sessions.approve(sid, "provider", old, w.provider.sign(approval_message(old)))
    with pytest.raises(SessionError, match="not session .* current one"):
        w.sessions.queue_job(sid, "auditor", old, bytes(32), _run_sig(w, sid, old), 0)


def test_judges_live_on_tmpfs_within_its_budget_and_close_wipes_them(tmp_path: Path, assets) -> None:
    w = _world(tmp_path, assets)
    sid = w.open()
    _provision(w, sid)
    judges = w.sessions.get(sid).assets["judges"]
    model = w.sessions.get(sid).assets["model"]
    assert judges.folder is not None and judges.folder.is_dir() and judges.files is None
    assert w.sessions.tmpfs.used == model.reserved + judges.reserved and judges.reserved > 0
    digest = w.sessions.manifest(sid)[0].digest()
    w.sessions.close(sid, "auditor", digest, w.auditor.sign(job_message("close", w.keys.signing_public, sid, digest)))
    assert not judges.folder.exists() and not model.folder.exists()
    assert (w.sessions.memory.used, w.sessions.tmpfs.used) == (0, 0)
    assert list(w.sessions.workdir.iterdir()) == []


def test_the_judges_byte_cap_and_a_partial_cap_map(tmp_path: Path, assets) -> None:
    """`max_bytes` caps judges like any kind; a map that leaves judges out keeps the default."""
    w = _world(tmp_path, assets, Limits(max_bytes={"judges": 64}))
    sid = w.open()
    with pytest.raises(LimitReached, match="judges: upload exceeds this enclave's limit of 64 bytes"):
        w.send(w.capture(sid, "judges", w.auditor))
    assert w.sessions.tmpfs.used == 0 and list(w.sessions.workdir.iterdir()) == []
    (tmp_path / "2").mkdir()
    w2 = _world(tmp_path / "2", assets, Limits(max_bytes={"model": 1 << 30, "dataset": 1 << 20, "spec": 1 << 20}))
    sid2 = w2.open()
    w2.send(w2.capture(sid2, "judges", w2.auditor))
    assert "judges" in w2.sessions.get(sid2).assets


@pytest.fixture()
def world_factory(tmp_path: Path, assets) -> Callable[..., World]:
    def make(**kinds: str) -> World:
        path = tmp_path / os.urandom(4).hex()
        path.mkdir()
        return _world(path, assets, **kinds)
    return make


# --- the job process receives the folder -------------------------------------------------------

def test_run_job_hands_the_judges_folder_to_run_audit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Over the job's pipe: the child's `run_audit` gets `judges_dir`, here a fake that reports
    what it found there (a forked child inherits the fake; the enclave's fork server would not)."""
    import enclave.runner

    judges = _judge_folder(tmp_path / "judges", (JUDGE,))

    def fake_run_audit(model_dir: Path, spec: Any, datasets: dict, **kwargs: Any) -> Any:
        found = sorted(p.relative_to(kwargs["judges_dir"]).as_posix() for p in kwargs["judges_dir"].rglob("*")
                       if p.is_file())
        raise AAuditError(f"judges_dir {kwargs['judges_dir']} holds {found}")

    monkeypatch.setattr(enclave.runner, "run_audit", fake_run_audit)
    monkeypatch.setattr(jobs, "_context", lambda: multiprocessing.get_context("fork"))
    spec = parse_spec((demo_spec_toml() + _judge_table()).encode())
    with pytest.raises(jobs.JobFailed) as failed:
        jobs.run_job(tmp_path / "model", spec, {}, device="cpu", deadline_s=60, progress=lambda *a: None,
                     cancel=threading.Event(), judges_dir=judges)
    assert str(failed.value) == f"AAuditError: judges_dir {judges} holds ['tox/config.json', 'tox/model.safetensors']"


# --- the statement and the verifier ------------------------------------------------------------

JUDGES_LISTING = [{"path": "tox/config.json", "sha256": "11" * 32, "size": 300},
                  {"path": "tox/model.safetensors", "sha256": "22" * 32, "size": 4096}]


def _steps(made: Made, toml: str | None = None) -> tuple[dict[str, tuple[str, str]], Any]:
    pol = policy.parse(tomllib.loads(made.policy_toml() if toml is None else toml))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    return {s.name: (s.status.value, s.reason) for s in verdict.steps}, verdict


def _edit_subjects(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Callable[[bytes], bytes]:
    def edit(payload: bytes) -> bytes:
        statement = json.loads(payload)
        statement["subject"] = change(statement["subject"])
        return json.dumps(statement).encode()
    return edit


def test_statement_names_each_judge_file_and_verifies_pinned() -> None:
    made = make_bundle(judges_listing=JUDGES_LISTING)
    statement = parse_statement(base64.b64decode(made.bundle["envelope"]["payload"]))
    assert [s.name for s in statement.subject][-2:] == ["judge/tox/config.json", "judge/tox/model.safetensors"]
    assert statement.subject[0].name.startswith("model/") and statement.model_listing == made.model_listing
    assert statement.judges_listing == JUDGES_LISTING
    steps, verdict = _steps(made)
    assert steps["judge subjects"] == ("ok", "the subjects name 2 judge files whose listing hashes to the "
                                             "manifest's judges digest")
    assert steps["judges digest"][0] == "ok" and verdict.verified and verdict.unpinned == ["log"]
    assert verdict.claims["judges_digest"] == made.digests["judges"]


def test_unpinned_judges_are_named_and_a_pin_on_a_judgeless_bundle_fails() -> None:
    made = make_bundle(judges_listing=JUDGES_LISTING)
    toml = made.policy_toml().replace(f'judges_digest = "{made.digests["judges"]}"\n', "")
    steps, verdict = _steps(made, toml)
    assert steps["judges digest"][0] == "skipped" and verdict.unpinned == ["log", "judges digest"]
    plain = make_bundle()
    steps, verdict = _steps(plain, plain.policy_toml() + f'judges_digest = "{made.digests["judges"]}"\n')
    assert steps["judges digest"] == ("failed", f"statement has None, policy expects {made.digests['judges']}")
    assert steps["judge subjects"] == ("skipped", "the audit used no judge models") and not verdict.verified


def test_without_judges_the_verdict_is_as_before() -> None:
    steps, verdict = _steps(make_bundle())
    assert "judges digest" not in steps and steps["judge subjects"][0] == "skipped"
    assert verdict.verified and "judges_digest" not in verdict.claims


def _other_judge_sha(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subjects[-1]["digest"]["sha256"] = "33" * 32
    return subjects


@pytest.mark.parametrize(("change", "reason"), [
    (_other_judge_sha, "the judge subjects (2 judge files) hash to sha256:"),
    (lambda s: s[:-1], "the judge subjects (1 judge file) hash to sha256:"),
    (lambda s: [x for x in s if not x["name"].startswith("judge/")],
     "the manifest names judges sha256:"),
])
def test_judge_subjects_that_differ_from_the_approved_judges_fail(change, reason: str) -> None:
    """Signed by the enclave key, yet the subjects name other judge files than the manifest's."""
    made = make_bundle(judges_listing=JUDGES_LISTING, edit_payload=_edit_subjects(change))
    steps, verdict = _steps(made)
    assert steps["judge subjects"][0] == "failed" and steps["judge subjects"][1].startswith(reason), steps
    assert steps["model subjects"][0] == "ok" and not verdict.verified


def test_judge_subjects_without_judges_in_the_manifest_fail() -> None:
    extra = {"name": "judge/tox/config.json", "digest": {"sha256": "11" * 32}, "annotations": {"size": 3}}
    made = make_bundle(edit_payload=_edit_subjects(lambda s: [*s, extra]))
    steps, verdict = _steps(made)
    assert steps["judge subjects"] == ("failed", "the judge subjects (1 judge file) hash to "
                                       f"{_digest([{'path': 'tox/config.json', 'sha256': '11' * 32, 'size': 3}])}, "
                                       "but the manifest's judges are None: subjects and judges digest disagree")
    assert not verdict.verified


def _digest(listing: list[dict[str, Any]]) -> str:
    from verifier.models import digest_of_listing

    return digest_of_listing(listing)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s[-2:] + s[:-2], "subjects must be sorted by name, each file once (the model's files, then the judges')"),
    (lambda s: [*s[:-1], {**s[-1], "name": "judge/loose.bin"}], "name must be model/<path of a model file> or "
                                                              "judge/<judge>/<path of its file>"),
    (lambda s: [*s[:-1], {**s[-1], "name": "judges/tox/x"}], "name must be model/<path of a model file>"),
    (lambda s: s[-2:], "statement: no subject; expected one per model file"),
])
def test_malformed_judge_subjects_do_not_parse(change, message: str) -> None:
    made = make_bundle(judges_listing=JUDGES_LISTING, edit_payload=_edit_subjects(change))
    with pytest.raises(ParseError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_statement(base64.b64decode(made.bundle["envelope"]["payload"]))
    steps, _ = _steps(made)
    assert steps["statement"][0] == "failed"


def test_policy_checks_the_judges_digest_it_pins() -> None:
    with pytest.raises(PolicyError, match="judges_digest must be 'sha256:' and 64 lowercase hex digits"):
        policy.parse({"allow_simulated": True, "expect": {"judges_digest": "sha256:XYZ"}})
    assert policy.parse({"allow_simulated": True, "expect": {"judges_digest": "sha256:" + "ab" * 32}}).expect == {
        "judges_digest": "sha256:" + "ab" * 32}


# --- end to end: a real enclave over gRPC --------------------------------------------------------

def test_enclave_run_with_a_judge_names_its_files_and_wipes_them(tmp_path: Path) -> None:
    """The spec's generation task is scored by a causal-LM judge (a rubric): the auditor seals and
    uploads the judges, both approve their digest, the job runs with them, the bundle's
    `judge/` subjects are the plaintext judge files and verify; closing wipes the tmpfs folder."""
    parties = make_parties(tmp_path / "parties")
    spec = tmp_path / "parties" / "spec" / "audit.toml"
    spec.write_text(spec.read_text() + _judge_table("rubric", "causal_lm"))
    judges = tmp_path / "judges"
    build_tiny_model(judges / "rubric", seed=5)  # a real causal LM, loadable as a judge
    parties.sealed["spec"] = seal(spec, tmp_path / "sealed-j", "spec")
    parties.sealed["judges"] = seal(judges, tmp_path / "sealed-j", "judges")
    enclave = RunningEnclave()
    try:
        with enclave.client() as c:
            sid = open_session(c, parties)
            provision(c, parties, sid, ("model", "dataset", "spec"))
            assert any("names judge(s) 'rubric'" in p for p in c.manifest(sid).problems)
            provision(c, parties, sid, ("judges",))
            view = c.manifest(sid)
            assert view.problems == [] and view.manifest.digest_of("judges") == parties.sealed["judges"].digest
            # A provider told of no judges refuses a manifest that has them.
            unaware = expected(parties, "provider")
            unaware = replace(unaware, digests={k: v for k, v in unaware.digests.items() if k != "judges"})
            with pytest.raises(VerificationError, match="manifest has judges sha256:[0-9a-f]{64}, expected none"):
                c.approve(c.attest(parties.enclave_policy), sid, "provider", parties.provider, unaware)
            approve_both(c, parties, sid)
            bundle = run(c, parties, sid)
            folders = [p.name for p in enclave.workdir.iterdir()]
            assert any(f.startswith("judges-") for f in folders), folders
            enclave_key = c.attest(parties.enclave_policy)
            c.session_action(enclave_key, "close", sid, "auditor", parties.auditor)
        assert not [p for p in enclave.workdir.iterdir() if p.name.startswith(("judges-", "model-"))]
    finally:
        enclave.stop()
    statement = parse_statement(base64.b64decode(bundle["envelope"]["payload"]))
    assert statement.judges_listing == file_listing(judges)
    score = statement.results["aa_judged"]["judge_rubric,none"]
    assert 0.0 <= score <= 1.0, "the judge scored the answers inside the enclave"
    assert [s.name for s in statement.subject if s.name.startswith("judge/")] == \
        ["judge/" + e["path"] for e in file_listing(judges)]
    expect = {f"{k}_digest": a.digest for k, a in parties.sealed.items()}
    pol = policy.parse({**{"allow_simulated": True}, "sim": {"measurements": [statement.code_identity]},
                        "expect": expect})
    verdict = verify_bundle(bundle, pol, at=datetime.now(timezone.utc))
    assert verdict.verified, [(s.name, s.reason) for s in verdict.failures]
    steps = {s.name: s for s in verdict.steps}
    assert steps["judge subjects"].status.value == "ok" and steps["judges digest"].status.value == "ok"


# --- the command line ----------------------------------------------------------------------------

def test_cli_seals_judges_and_the_auditor_uploads_them_when_sealed(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`aaudit seal judges` writes judges.json beside the auditor's other sealed assets; the
    auditor's upload and approval then include it, the provider's never; the provider agrees to
    judges with an optional --expect-judges."""
    from aaudit.cli import build_parser, main
    from aaudit.cmd_parties import _own_kinds
    from sealing.digest import listing_and_digest

    folder = _judge_folder(tmp_path / "judges", (JUDGE,))
    out = tmp_path / "sealed"
    assert _own_kinds("auditor", out) == ("dataset", "spec")
    assert main(["seal", "judges", str(folder), "--out", str(out)]) == 0
    assert f"judges digest: {listing_and_digest(folder)[1]}" in capsys.readouterr().out
    assert _own_kinds("auditor", out) == ("dataset", "spec", "judges")
    assert _own_kinds("provider", out) == ("model",)
    args = build_parser().parse_args(["provider", "approve", str(out), "--session", "s", "--enclave", "h:1",
                                      "--policy", "p.toml", "--identity", "k", "--expect-auditor", "a.pub",
                                      "--expect-dataset", "sha256:" + "0" * 64, "--expect-spec", "sha256:" + "1" * 64])
    assert args.expect_judges is None  # optional: a spec without judges needs none
    with pytest.raises(SystemExit):
        build_parser().parse_args(["auditor", "approve", str(out), "--session", "s", "--enclave", "h:1", "--policy",
                                   "p.toml", "--identity", "k", "--expect-provider", "p.pub", "--expect-model",
                                   "sha256:" + "0" * 64, "--expect-judges", "sha256:" + "2" * 64])
