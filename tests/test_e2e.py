"""The whole protocol over real gRPC on loopback: attest, upload sealed assets, approve, run, verify.

One enclave boot runs one complete audit (module fixture); the negative tests each use the same
service between jobs, as a real enclave would be used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from e2e_helpers import (
    KINDS,
    RunningEnclave,
    approve_both,
    expected,
    make_parties,
    nonce,
    open_session,
    provision,
    run,
)

from aaudit.client import AttestationRefused, EnclaveError, ExpectedRun
from enclave.measure import code_identity
from verifier import policy
from verifier.bundle import verify_bundle
from verifier.errors import ParseError
from verifier.models import canonical_json
from verifier.statement import parse_statement

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory):
    return make_parties(tmp_path_factory.mktemp("parties"))


@pytest.fixture(scope="module")
def enclave():
    e = RunningEnclave()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def job(enclave: RunningEnclave, parties) -> tuple[dict, bytes]:
    """One complete audit: its bundle and the per-sample records encrypted to the auditor."""
    with enclave.client() as c:
        sid = open_session(c, parties)
        provision(c, parties, sid)
        approve_both(c, parties, sid)
        stages = []
        result = run(c, parties, sid, on_progress=lambda p: stages.append((p.stage, p.fraction)))
    assert stages and stages[-1][1] == 1.0, stages
    assert any(s == "evaluating" for s, _ in stages), stages
    assert c.samples, "output aggregate+samples must deliver the encrypted records"
    return result, c.samples


@pytest.fixture(scope="module")
def bundle(job: tuple[dict, bytes]) -> dict:
    return job[0]


def _third_party_policy(parties, **extra) -> policy.Policy:
    data = {"allow_simulated": True, "sim": {"measurements": [code_identity()]},
            "expect": {**{f"{k}_digest": parties.sealed[k].digest for k in KINDS}, "code_identity": [code_identity()]}}
    data.update(extra)
    return policy.parse(data, "test-policy")


def test_bundle_verifies_with_expected_digests(bundle: dict, parties) -> None:
    verdict = verify_bundle(bundle, _third_party_policy(parties), at=datetime.now(timezone.utc))
    assert verdict.verified, [f"{s.name}: {s.reason}" for s in verdict.failures]
    names = {s.name for s in verdict.steps if s.status.value == "ok"}
    for required in ("report signature", "provider approval", "auditor approval", "model subjects", "model digest",
                     "dataset digest", "spec digest", "statement nonce", "evidence: report data",
                     "final evidence: report data"):
        assert required in names, required
    st = parse_statement(base64.b64decode(bundle["envelope"]["payload"]))
    assert set(st.results) == {"aa_demo_mc", "aa_demo_gen"}
    assert st.to_json()["predicate"]["platform"] == {"name": "sim", "simulated": True, "codeIdentity": code_identity()}
    assert len(st.predicate.samples.merkle_root) == 64
    runtime = st.to_json()["predicate"]["runtime"]  # the demo's tiny float32 checkpoint, dtype "auto", on CPU
    assert (runtime["device"], runtime["dtype"]) == ("cpu", "float32")
    assert runtime["engine"] == {"name": "hf", "version": runtime["versions"]["transformers"],
                                 "settings": {"batch_size": 1, "dtype": "auto", "parallelize": False}}
    assert canonical_json(st.to_json()) == base64.b64decode(bundle["envelope"]["payload"]), "one model builds and parses"
    from verifier.bundle import AuditBundle

    assert AuditBundle.from_json(bundle).to_json() == bundle, "the bundle too"
    with pytest.raises(ParseError, match="unknown field"):
        AuditBundle.from_json({**bundle, "extra": 1})


def test_subjects_are_the_plaintext_model_files(bundle: dict, parties) -> None:
    """One in-toto subject per file of the provider's folder, with that file's sha256 and size."""
    folder = parties.root / "model"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    expected_subjects = [{"name": "model/" + p.relative_to(folder).as_posix(),
                          "digest": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()},
                          "annotations": {"size": p.stat().st_size}} for p in files]
    st = parse_statement(base64.b64decode(bundle["envelope"]["payload"]))
    assert len(files) > 1 and sorted(st.to_json()["subject"], key=lambda s: s["name"]) == \
        sorted(expected_subjects, key=lambda s: s["name"])
    assert st.subject_digest == st.digest_of("model") == parties.sealed["model"].digest


@pytest.mark.skipif(not (shutil.which("jq") and shutil.which("sha256sum")), reason="needs jq and sha256sum")
def test_documented_sha256sum_check_passes_and_names_a_changed_file(bundle: dict, parties) -> None:
    """docs/FORMATS.md's shell check, run as written on the real bundle and a copy of the model (on
    the provider's side of the test, where the plaintext search below does not look)."""
    tmp_path = Path(tempfile.mkdtemp(dir=parties.root))
    docs = (REPO / "docs" / "FORMATS.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", docs, flags=re.S) if "sha256sum" in b]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    shutil.copytree(parties.root / "model", tmp_path / "model")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True)
    files = sum(1 for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert proc.returncode == 0 and proc.stdout.count(": OK") == files, proc.stdout + proc.stderr
    weights = tmp_path / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "model.safetensors: FAILED" in proc.stdout, proc.stdout + proc.stderr


def test_auditor_opens_samples_checked_against_the_root(job: tuple[dict, bytes], parties) -> None:
    from aaudit.samples import open_samples
    from sealing.identity import load_samples_key
    from sealing.keywrap import HpkeKeyPair
    from verifier.errors import VerificationError

    bundle, ciphertext = job
    key = load_samples_key(parties.samples_key)
    records = open_samples(ciphertext, bundle, key)
    st = parse_statement(base64.b64decode(bundle["envelope"]["payload"]))
    assert len(records) == st.predicate.samples.count == 49 + 18
    assert {r["task"] for r in records} == {"aa_demo_mc", "aa_demo_gen"}
    assert any(parties.marker.decode() in json.dumps(r) for r in records) is False, "records carry hashes, not documents"
    flipped = bytearray(ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(VerificationError, match="sha256 differs"):
        open_samples(bytes(flipped), bundle, key)
    with pytest.raises(VerificationError, match="another samples key"):
        open_samples(ciphertext, bundle, HpkeKeyPair.generate())


def test_open_samples_writes_leaves_an_independent_implementation_reproduces(job: tuple[dict, bytes], parties,
                                                                            tmp_path: Path, capsys) -> None:
    """Issue 11: each line of samples.jsonl is a leaf, and RFC 8785 + RFC 9162 written from the documents
    alone (tests/test_samples.py, no project code) give the root the enclave signed."""
    import re

    from test_samples import jcs, mth

    from aaudit.cli import main as aaudit_main

    bundle, ciphertext = job
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "bundle.samples.enc").write_bytes(ciphertext)
    assert aaudit_main(["auditor", "open-samples", str(tmp_path / "bundle.samples.enc"), "--bundle",
                        str(tmp_path / "bundle.json"), "--key", str(parties.samples_key), "--out",
                        str(tmp_path / "samples.jsonl")]) == 0
    lines = (tmp_path / "samples.jsonl").read_bytes().split(b"\n")
    assert lines.pop() == b""
    assert [jcs(json.loads(line)) for line in lines] == lines
    assert re.search(rb'"acc":[01][,}]', b"\n".join(lines)), "integral metrics are written as JavaScript does"
    samples = parse_statement(base64.b64decode(bundle["envelope"]["payload"])).predicate.samples
    assert (mth(lines).hex(), len(lines)) == (samples.merkle_root, samples.count)

    # disclose one record of this real run; a third party verifies it, and not a changed copy
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n[expect]\n'
                           + "".join(f'{k}_digest = "{parties.sealed[k].digest}"\n' for k in KINDS))
    from verifier.cli import main as verify_main

    capsys.readouterr()
    index = len(lines) - 1
    assert aaudit_main(["auditor", "disclose-sample", str(index), "--samples", str(tmp_path / "samples.jsonl"),
                        "--bundle", str(tmp_path / "bundle.json"), "--out", str(tmp_path / "sample.json")]) == 0
    argv = ["sample", str(tmp_path / "sample.json"), "--bundle", str(tmp_path / "bundle.json"), "--policy",
            str(policy_file), "--allow-unpinned", "--json"]
    capsys.readouterr()
    assert verify_main(argv) == 0
    claims = json.loads(capsys.readouterr().out)["claims"]["sample"]
    record = json.loads(lines[index])
    assert claims == {"index": index, "task": record["task"], "doc_id": record["doc_id"], "filter": record["filter"],
                      "metrics": record["metrics"]}
    disclosure = json.loads((tmp_path / "sample.json").read_text())
    disclosure["record"]["response"] = "a better answer"
    (tmp_path / "sample.json").write_text(json.dumps(disclosure))
    assert verify_main(argv) == 1
    failed = [s["step"] for s in json.loads(capsys.readouterr().out)["steps"] if s["result"] == "failed"]
    assert failed == ["sample: inclusion"]


def test_a_stock_dsse_library_verifies_the_real_envelope(bundle: dict) -> None:
    """securesystemslib, unchanged and told nothing but the enclave's public key, verifies the report."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    key = SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(
        base64.b64decode(bundle["enclave"]["signingKey"]["public"])))
    envelope = Envelope.from_dict(json.loads(json.dumps(bundle["envelope"])))  # from_dict rewrites its argument
    assert set(envelope.verify([key], 1)) == {key.keyid}


def test_thresholds_pass_and_fail_with_reasons(bundle: dict, parties) -> None:
    st = parse_statement(base64.b64decode(bundle["envelope"]["payload"]))
    acc = st.results["aa_demo_mc"]["acc,none"]
    ok = _third_party_policy(parties, threshold=[{"task": "aa_demo_mc", "metric": "acc", "min": acc}])
    assert verify_bundle(bundle, ok, at=datetime.now(timezone.utc)).verified
    bad = _third_party_policy(parties, threshold=[{"task": "aa_demo_mc", "metric": "acc", "min": acc + 0.01}])
    v = verify_bundle(bundle, bad, at=datetime.now(timezone.utc))
    assert not v.verified and "violates" in v.failures[0].reason


def test_wrong_expected_digest_or_code_identity_fails(bundle: dict, parties) -> None:
    pol = _third_party_policy(parties)
    pol.expect["model_digest"] = "sha256:" + "0" * 64
    v = verify_bundle(bundle, pol, at=datetime.now(timezone.utc))
    assert [s.name for s in v.failures] == ["model digest"]
    other = _third_party_policy(parties, expect={"code_identity": ["ab" * 32]})
    v = verify_bundle(bundle, other, at=datetime.now(timezone.utc))
    assert [s.name for s in v.failures] == ["code identity"]
    assert "not in the policy's allow-list" in v.failures[0].reason


def test_flipped_statement_byte_fails_through_cli(bundle: dict, parties, tmp_path: Path) -> None:
    payload = bytearray(base64.b64decode(bundle["envelope"]["payload"]))
    i = payload.index(b'"acc,none":') + len(b'"acc,none":')
    payload[i] = ord("1") if payload[i] != ord("1") else ord("2")
    tampered = json.loads(json.dumps(bundle))
    tampered["envelope"]["payload"] = base64.b64encode(bytes(payload)).decode()
    (tmp_path / "b.json").write_text(json.dumps(tampered))
    (tmp_path / "p.toml").write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n')
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "bundle", str(tmp_path / "b.json"),
                           "--policy", str(tmp_path / "p.toml")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "report signature" in proc.stdout and "FAILED" in proc.stdout
    assert "final evidence: report data" in proc.stdout


def test_any_statement_byte_change_exits_1(bundle: dict, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Issue 2's promise, swept: whatever byte of the payload changes, exit 1 with reasons, no traceback."""
    import random

    from verifier.cli import main

    payload = base64.b64decode(bundle["envelope"]["payload"])
    policy_file = tmp_path / "p.toml"
    policy_file.write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n')
    rng = random.Random(2506)
    for position in rng.sample(range(len(payload)), 150):
        changed = bytearray(payload)
        changed[position] = rng.choice([b for b in range(256) if b != payload[position]])
        tampered = json.loads(json.dumps(bundle))
        tampered["envelope"]["payload"] = base64.b64encode(bytes(changed)).decode()
        (tmp_path / "b.json").write_text(json.dumps(tampered))
        assert main(["bundle", str(tmp_path / "b.json"), "--policy", str(policy_file)]) == 1, position
        assert "report signature  " in capsys.readouterr().out


@pytest.mark.parametrize("mutate, code", [
    (lambda b: b["enclave"].__setitem__("signingKey", "x"), 2),
    (lambda b: b["enclave"].__setitem__("hpke", []), 2),
    (lambda b: b["envelope"].__setitem__("payloadType", "\ud800"), 2),
    (lambda b: b.__setitem__("evidence", {"platform": "sim", "blob": "@@"}), 2),
    (lambda b: b.__setitem__("nonce", "zz"), 2),
    (lambda b: b.pop("finalEvidence"), 2),
    (lambda b: b["envelope"].__setitem__("signatures", [{"keyid": "", "sig": base64.b64encode(bytes(64)).decode()}]), 1),
])
def test_crafted_bundles_give_exit_codes_not_tracebacks(bundle: dict, tmp_path: Path, mutate, code, capsys) -> None:  # noqa: ANN001
    from verifier.cli import main

    tampered = json.loads(json.dumps(bundle))
    mutate(tampered)
    (tmp_path / "b.json").write_text(json.dumps(tampered))
    (tmp_path / "p.toml").write_text("allow_simulated = true\n")
    assert main(["bundle", str(tmp_path / "b.json"), "--policy", str(tmp_path / "p.toml")]) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_deeply_nested_bundle_is_unusable_input(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from verifier.cli import main

    (tmp_path / "b.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "p.toml").write_text("allow_simulated = true\n")
    assert main(["bundle", str(tmp_path / "b.json"), "--policy", str(tmp_path / "p.toml")]) == 2


def test_wrong_nonce_and_other_keys_are_refused(enclave: RunningEnclave, parties) -> None:
    from protos import enclave_pb2 as pb
    from verifier.binding import key_binding
    from verifier.evidence import verify_evidence
    from verifier.models import Evidence

    with enclave.client() as c:
        n = nonce()
        resp = c._stub.Attest(pb.AttestRequest(nonce=n))
    ev = Evidence.from_bytes(resp.evidence)
    now = datetime.now(timezone.utc)
    tls = resp.tls_public_key
    assert tls == c._pinned_tls and len(tls) > 32, "the attestation binds the TLS key the channel is pinned to"
    good, _ = verify_evidence(ev, at=now, policy=parties.enclave_policy, expected_report_data=key_binding(
        resp.signing_public_key, resp.hpke_suite, resp.hpke_public_key, tls, n))
    assert good.verified
    wrong_nonce, _ = verify_evidence(ev, at=now, policy=parties.enclave_policy, expected_report_data=key_binding(
        resp.signing_public_key, resp.hpke_suite, resp.hpke_public_key, tls, nonce()))
    other_keys, _ = verify_evidence(ev, at=now, policy=parties.enclave_policy, expected_report_data=key_binding(
        os.urandom(32), resp.hpke_suite, resp.hpke_public_key, tls, n))
    other_tls, _ = verify_evidence(ev, at=now, policy=parties.enclave_policy, expected_report_data=key_binding(
        resp.signing_public_key, resp.hpke_suite, resp.hpke_public_key, b"", n))
    for v in (wrong_nonce, other_keys, other_tls):
        assert [s.name for s in v.failures] == ["report data"]


def test_client_refuses_enclave_outside_its_policy(enclave: RunningEnclave, parties) -> None:
    strict = policy.parse({"allow_simulated": True, "sim": {"measurements": ["ab" * 32]}})
    with enclave.client() as c, pytest.raises(AttestationRefused, match="not in the policy's allow-list"):
        c.attest(strict)


def _upload_tampered(enclave: RunningEnclave, parties, kind: str, mutate, tmp_path: Path) -> str:
    """Upload a copy of a sealed asset changed by `mutate(sealed_bytes, key_bytes)`; return the error."""
    import shutil

    src = parties.sealed[kind]
    folder = tmp_path / f"tampered-{kind}"
    folder.mkdir()
    for p in (src.sealed_path, src.key_path, src.meta_path):
        shutil.copy2(p, folder / p.name)
    sealed_bytes, key_bytes = mutate(bytearray(src.sealed_path.read_bytes()), bytearray(src.key_path.read_bytes()))
    (folder / src.sealed_path.name).write_bytes(sealed_bytes)
    os.chmod(folder / src.key_path.name, 0o600)
    (folder / src.key_path.name).write_bytes(key_bytes)
    from sealing.stream import SealedAsset

    asset = SealedAsset.load(folder / src.meta_path.name)
    with enclave.client() as c:
        sid = open_session(c, parties)
        e = c.attest(parties.enclave_policy)
        with pytest.raises(EnclaveError) as exc:
            c.upload(e, sid, asset, parties.provider if kind == "model" else parties.auditor)
        assert kind not in c.manifest(sid).manifest.assets, "a refused asset must not enter the manifest"
    return str(exc.value)


def test_tampered_chunk_is_refused_naming_the_chunk(enclave: RunningEnclave, parties, tmp_path: Path) -> None:
    def flip(sealed: bytearray, key: bytearray):
        sealed[-20] ^= 1
        return sealed, key

    msg = _upload_tampered(enclave, parties, "dataset", flip, tmp_path)
    assert "dataset" in msg and "chunk" in msg


def test_wrong_data_key_is_refused(enclave: RunningEnclave, parties, tmp_path: Path) -> None:
    msg = _upload_tampered(enclave, parties, "spec", lambda s, k: (s, bytearray(os.urandom(32))), tmp_path)
    assert "spec" in msg and "key" in msg


def test_malformed_spec_is_refused(enclave: RunningEnclave, parties, tmp_path: Path) -> None:
    from sealing.stream import seal

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = 1\nseed = 1\noutput = "aggregate"\n[[task]]\nname = "t"\ndataset = "mc.jsonl"\n'
                   '[task.config]\noutput_type = "multiple_choice"\nprocess_results = "!function evil.run"\n')
    asset = seal(bad, tmp_path / "sealed-bad", "spec")
    with enclave.client() as c:
        sid = open_session(c, parties)
        e = c.attest(parties.enclave_policy)
        with pytest.raises(EnclaveError, match="process_results"):
            c.upload(e, sid, asset, parties.auditor)


def test_oversized_message_is_refused(enclave: RunningEnclave, parties) -> None:
    import grpc

    from protos import enclave_pb2 as pb

    def parts():
        yield pb.UploadPart(header=pb.UploadHeader(kind="dataset", stream_header=b"\0" * (6 << 20)))

    with enclave.client() as c:
        sid = open_session(c, parties)
        with pytest.raises(grpc.RpcError) as exc:
            c._stub.Upload(parts())
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value
        assert "dataset" not in c.manifest(sid).manifest.assets  # the service is unharmed


def test_published_bundle_needs_its_inclusion_proof(bundle: dict, parties, tmp_path: Path) -> None:
    from tlog.client import publish
    from tlog.log import SQLiteLog
    from tlog.server import serve as serve_log

    log = SQLiteLog(tmp_path / "log.db")
    for i in range(5):  # other audits came first, so the proof has hashes to remove
        log.append(f"earlier entry {i}".encode())
    server, port = serve_log(log, "127.0.0.1:0")
    try:
        published = publish(bundle, f"127.0.0.1:{port}", log_key=log.signer.verifier_key)
    finally:
        server.stop(grace=None).wait()
        log.close()
    pol = _third_party_policy(parties, log={"public_key": log.signer.verifier_key, "require_inclusion": True})
    now = datetime.now(timezone.utc)
    assert verify_bundle(published, pol, at=now).verified
    unpublished = verify_bundle(bundle, pol, at=now)
    assert [s.name for s in unpublished.failures] == ["log entry"]
    assert published["logEntry"]["index"] == 5 and published["logEntry"]["inclusionProof"]
    for tamper in ("proof", "checkpoint", "entry"):
        broken = json.loads(json.dumps(published))
        if tamper == "proof":
            broken["logEntry"]["inclusionProof"] = []
        elif tamper == "checkpoint":
            broken["logEntry"]["checkpoint"] = broken["logEntry"]["checkpoint"].replace("\n6\n", "\n7\n")
        else:
            broken["nonce"] = "00" * 32
        failed = {s.name for s in verify_bundle(broken, pol, at=now).failures}
        assert failed & {"log inclusion", "log checkpoint"}, (tamper, failed)


def test_no_plaintext_left_on_disk(enclave: RunningEnclave, parties, bundle: dict) -> None:
    """A finished job's session keeps its model on the enclave's tmpfs for its next job; once the
    parties close their sessions, the service's work folder, the temp dir and HF caches hold none
    of the plaintext."""
    needles = [parties.marker]
    weights = next((parties.root / "model").glob("*.safetensors")).read_bytes()
    needles.append(weights[len(weights) // 2: len(weights) // 2 + 256])
    held = [p for p in enclave.workdir.rglob("*.safetensors") if needles[1] in p.read_bytes()]
    assert held, "the session keeps its decrypted model on tmpfs until it is closed"
    with enclave.client() as c:
        e = c.attest(parties.enclave_policy)
        for sid in list(enclave.service.sessions._sessions):  # the test's view of every session it opened
            c.session_action(e, "close", sid, "provider", parties.provider)
    assert not enclave.service.sessions._sessions and not any(p.exists() for p in held)
    roots = [enclave.workdir.parent, Path(tempfile.gettempdir()), Path.home() / ".cache" / "huggingface"]
    roots += [Path(os.environ[v]) for v in ("HF_HOME", "HF_DATASETS_CACHE") if v in os.environ]
    pytest_tmp = parties.root
    hits = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            if Path(dirpath).is_relative_to(pytest_tmp):
                continue  # the parties' own plaintext, outside the enclave
            for name in files:
                p = Path(dirpath, name)
                try:
                    if p.is_symlink() or not p.is_file() or p.stat().st_size > 256 << 20:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                hits += [str(p) for n in needles if n in data]
    assert not hits, f"plaintext found in {sorted(set(hits))}"


def test_missing_approval_and_reupload_void(enclave: RunningEnclave, parties, bundle: dict) -> None:
    with enclave.client() as c:
        sid = open_session(c, parties)
        provision(c, parties, sid)
        e = c.attest(parties.enclave_policy)
        c.approve(e, sid, "provider", parties.provider, expected(parties, "provider"))
        with pytest.raises(EnclaveError, match="no approval from auditor"):
            run(c, parties, sid)
        c.approve(e, sid, "auditor", parties.auditor, expected(parties, "auditor"))
        assert c.manifest(sid).approved_by == ["auditor", "provider"]
        provision(c, parties, sid, kinds=("dataset",))  # re-upload voids both approvals
        assert c.manifest(sid).approved_by == []
        with pytest.raises(EnclaveError, match="no approval from provider and auditor"):
            run(c, parties, sid)


def test_jobs_queue_and_the_other_party_fetches_the_result(enclave: RunningEnclave, parties) -> None:
    """Two sessions' jobs: one runs, the other waits its turn (its queue position is reported); a
    running session accepts no upload; afterwards its assets stay for the next job, whose number moves on."""
    from verifier.binding import run_message

    with enclave.client() as c:
        sids = [open_session(c, parties) for _ in range(2)]
        for sid in sids:
            provision(c, parties, sid)
            approve_both(c, parties, sid)
        e = c.attest(parties.enclave_policy)
        streams = []
        for sid in sids:
            view = c.manifest(sid)
            sig = parties.auditor.sign(run_message(e.signing_public, sid, view.digest, n := nonce()))
            from protos import enclave_pb2 as pb

            streams.append(c._stub.RunAudit(pb.RunRequest(session_id=sid, role="auditor", nonce=n,
                                                          manifest_digest=view.digest, signature=sig)))
        assert next(streams[0]).WhichOneof("event") == "progress"
        first_of_second = next(streams[1])
        assert first_of_second.progress.stage in ("queued", "run"), first_of_second
        with pytest.raises(EnclaveError, match="queued|running"):
            provision(c, parties, sids[1], kinds=("spec",))
        for stream in streams:
            events = list(stream)
            assert events[-1].WhichOneof("event") == "bundle"
        stages = [ev.progress.stage for ev in [first_of_second]]
        assert stages
        assert json.loads(events[-1].bundle) == c.result(sids[1])  # anyone in the session can fetch it
        view = c.manifest(sids[1])
    assert set(view.manifest.assets) == set(KINDS) and view.complete, "the assets stay for the session's next job"
    assert view.approved_by == [] and view.manifest.session.job == 2, \
        "the next job has its own manifest, so old approvals never carry over"


def test_provider_refuses_to_join_a_session_with_another_auditor(enclave: RunningEnclave, parties,
                                                                 tmp_path: Path) -> None:
    from sealing.identity import generate_identity
    from verifier.errors import VerificationError

    intruder, _, _ = generate_identity(tmp_path, "auditor")
    with enclave.client() as c:
        e = c.attest(parties.enclave_policy)
        info = c.create_session(e, "auditor", intruder, parties.provider.public_raw())
        with pytest.raises(VerificationError, match="session's auditor key"):
            c.join_session(e, info.session_id, "provider", parties.provider, parties.auditor.public_raw())
        assert c.manifest(info.session_id).manifest.session.id == info.session_id
    with enclave.client() as c:  # and an auditor refuses per-sample output it did not agree to
        sid = open_session(c, parties)
        provision(c, parties, sid)
        e = c.attest(parties.enclave_policy)
        with pytest.raises(VerificationError, match="per-sample records"):
            c.approve(e, sid, "auditor", parties.auditor, ExpectedRun({k: a.digest for k, a in parties.sealed.items()},
                                                                      {"provider": parties.provider.public_raw()}))


def test_two_audits_on_one_upload_each_with_its_own_approvals(enclave: RunningEnclave, parties,
                                                                tmp_path: Path) -> None:
    """One upload, many audits: model and dataset are sent once; job 1 runs the first spec, then the
    auditor uploads only a second spec and both parties approve job 2's manifest. Each bundle
    verifies on its own and names its own job and spec; job 1's approvals neither approve nor run
    job 2 (its manifest has the next job number)."""
    import grpc

    from benchmarks.demo_assets import demo_spec_toml
    from protos import enclave_pb2 as pb
    from sealing.stream import seal
    from verifier.binding import run_message
    from verifier.manifest import approval_message

    recipient = (parties.root / "keys" / "auditor.samples.pub").read_text().strip()
    (tmp_path / "second.toml").write_text(demo_spec_toml(seed=4321, samples_recipient=recipient))
    spec2 = seal(tmp_path / "second.toml", tmp_path / "sealed", "spec")
    assert spec2.digest != parties.sealed["spec"].digest
    with enclave.client() as c:
        sid = open_session(c, parties)
        provision(c, parties, sid)
        approve_both(c, parties, sid)
        digest1 = c.manifest(sid).digest
        first = run(c, parties, sid)

        view = c.manifest(sid)
        assert view.manifest.session.job == 2 and view.approved_by == [] and view.complete
        assert {k: a.digest for k, a in view.manifest.assets.items()} == {k: parties.sealed[k].digest for k in KINDS}
        e = c.attest(parties.enclave_policy)
        for role, who in (("provider", parties.provider), ("auditor", parties.auditor)):
            old = who.sign(approval_message(digest1))  # what each party sent for job 1 (Ed25519 is deterministic)
            for digest, refusal in ((digest1, "FAILED_PRECONDITION.*current manifest is"),
                                    (view.digest, "PERMISSION_DENIED.*does not verify")):
                with pytest.raises(EnclaveError, match=refusal):
                    c._call(c._stub.Approve, pb.Approval(session_id=sid, role=role, manifest_digest=digest,
                                                       signature=old), timeout=30)
        with pytest.raises(EnclaveError, match="no approval from provider and auditor"):
            run(c, parties, sid)
        n = nonce()  # a run request signed for job 1's manifest
        with pytest.raises(grpc.RpcError) as refused:
            list(c._stub.RunAudit(pb.RunRequest(
                session_id=sid, role="auditor", nonce=n, manifest_digest=digest1,
                signature=parties.auditor.sign(run_message(e.signing_public, sid, digest1, n)))))
        assert "not session" in refused.value.details() and "current one" in refused.value.details()

        c.upload(e, sid, spec2, parties.auditor)  # only the spec: model and dataset stay
        digests2 = {**{k: parties.sealed[k].digest for k in KINDS}, "spec": spec2.digest}
        for role, who, other in (("provider", parties.provider, parties.auditor),
                                 ("auditor", parties.auditor, parties.provider)):
            c.approve(e, sid, role, who, ExpectedRun(digests2, {"auditor" if role == "provider" else "provider":
                                                                other.public_raw()}, True))
        second = run(c, parties, sid)
        assert c.manifest(sid).manifest.session.job == 3

    statements = []
    for bundle, spec_digest in ((first, parties.sealed["spec"].digest), (second, spec2.digest)):
        pol = _third_party_policy(parties, expect={"model_digest": parties.sealed["model"].digest,
                                                   "dataset_digest": parties.sealed["dataset"].digest,
                                                   "spec_digest": spec_digest, "code_identity": [code_identity()]})
        verdict = verify_bundle(bundle, pol, at=datetime.now(timezone.utc))
        assert verdict.verified, [f"{s.name}: {s.reason}" for s in verdict.failures]
        statements.append(parse_statement(base64.b64decode(bundle["envelope"]["payload"])).predicate)
    one, two = statements
    assert (one.manifest.session.job, two.manifest.session.job) == (1, 2)
    assert one.manifest.session.id == two.manifest.session.id == sid
    assert one.manifest.assets["model"] == two.manifest.assets["model"]
    assert one.manifest.assets["dataset"] == two.manifest.assets["dataset"]
    assert one.manifest.assets["spec"].digest != two.manifest.assets["spec"].digest
    assert one.party_nonces["provider"] == two.party_nonces["provider"], "the model was uploaded once"
    assert one.party_nonces["auditor"] != two.party_nonces["auditor"], "the spec was uploaded again"
    assert {a.signature for a in one.approvals}.isdisjoint({a.signature for a in two.approvals})
    wrong = _third_party_policy(parties, expect={"spec_digest": parties.sealed["spec"].digest,
                                                 "code_identity": [code_identity()]})
    assert "spec digest" in {s.name for s in verify_bundle(second, wrong, at=datetime.now(timezone.utc)).failures}
