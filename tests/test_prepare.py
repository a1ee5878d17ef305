"""Step B over real gRPC: the provider turns M into Mq in the enclave, audits Mq, and a verifier
checks the chain M -> Mq -> R; every way of breaking the chain is refused.

One enclave boot (module fixture) prepares the demo's tiny Llama with int8 weight-only
quantisation (torchao, CPU) and with int4, then audits the int8 Mq with its prepare bundle attached.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import grpc
import pytest
from e2e_helpers import RunningEnclave, make_parties, nonce, open_session, provision

from aaudit.client import EnclaveError, ExpectedRun
from enclave.measure import code_identity
from enclave.prepare import CASTS
from enclave.workdir import RAM_FILESYSTEMS, filesystem_of
from protos import enclave_pb2 as pb
from sealing.keywrap import HpkeKeyPair
from sealing.stream import MemorySink, SealedReader, Unsealer, read_key_file
from verifier import policy
from verifier.binding import prepare_message
from verifier.bundle import verify_bundle
from verifier.errors import PolicyError, VerificationError
from verifier.models import Verdict, canonical_json
from verifier.prepare import METHODS, PrepareBundle, check_chain, parse_prepare_statement, verify_prepare
from verifier.statement import parse_statement

REPO = Path(__file__).resolve().parents[1]
def _now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory):
    return make_parties(tmp_path_factory.mktemp("prepare-parties"))


@pytest.fixture(scope="module")
def enclave():
    e = RunningEnclave()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def prepared(enclave: RunningEnclave, parties) -> dict:
    """M uploaded into a session; int8 and int4 prepare jobs; the sealed Mq and bundles they returned."""
    out = {}
    with enclave.client() as c:
        sid = open_session(c, parties)
        provision(c, parties, sid, kinds=("model",))
        e = c.attest(parties.enclave_policy)
        for method in ("int8-weight-only", "int4-weight-only"):
            stages: list[str] = []
            asset, bundle = c.prepare(e, sid, parties.provider, method, parties.root / method,
                                      on_progress=lambda p: stages.append(p.stage))
            assert {"prepare", "seal", "report"} <= set(stages), stages
            out[method] = (asset, bundle)
        out["session"] = sid
    return out


@pytest.fixture(scope="module")
def audit(enclave: RunningEnclave, parties, prepared: dict) -> dict:
    """An audit of the int8 Mq carrying its prepare bundle: both parties approve a manifest naming it."""
    mq, bundle = prepared["int8-weight-only"]
    with enclave.client() as c:
        sid = open_session(c, parties)
        e = c.attest(parties.enclave_policy)
        c.upload(e, sid, mq, parties.provider)
        provision(c, parties, sid, kinds=("dataset", "spec"))
        result = c.attach_prepared(e, sid, parties.provider, bundle)
        assert c.manifest(sid).manifest.prepared_from.statement_digest == result.statement_digest
        digests = {"model": mq.digest, "dataset": parties.sealed["dataset"].digest,
                   "spec": parties.sealed["spec"].digest}
        c.approve(e, sid, "provider", parties.provider,
                  ExpectedRun(digests, {"auditor": parties.auditor.public_raw()}, True))
        auditor = ExpectedRun(digests, {"provider": parties.provider.public_raw()}, True,
                              original_model=parties.sealed["model"].digest)
        other = "sha256:" + "0" * 64
        with pytest.raises(VerificationError, match=f"prepared from {parties.sealed['model'].digest}, expected a "
                                                    f"prepare statement from {other}"):
            c.approve(e, sid, "auditor", parties.auditor, dataclasses.replace(auditor, original_model=other))
        c.approve(e, sid, "auditor", parties.auditor, auditor)  # the auditor insists on the chain from M
        return c.run(e, sid, "auditor", parties.auditor, nonce())


def _policy(parties, *, methods: list[str] | None = None, original: str | None = None) -> policy.Policy:
    data = {"allow_simulated": True, "sim": {"measurements": [code_identity()]},
            "expect": {"dataset_digest": parties.sealed["dataset"].digest,
                       "spec_digest": parties.sealed["spec"].digest, "code_identity": [code_identity()]},
            "prepare": {"original_model_digest": original or parties.sealed["model"].digest,
                        "methods": methods or ["int8-weight-only"]}}
    return policy.parse(data, "prepare-policy")


def _failed(verdict) -> set[str]:
    return {s.name for s in verdict.failures}


def test_chain_verifies_under_a_policy_pinning_the_original(audit: dict, parties, prepared: dict) -> None:
    verdict = verify_bundle(audit, _policy(parties), at=_now())
    assert verdict.verified, [f"{s.name}: {s.reason}" for s in verdict.failures]
    ok = {s.name for s in verdict.steps if s.status.value == "ok"}
    for step in ("prepare: evidence: report data", "prepare: report signature", "prepare: final evidence: report data",
                 "prepare: provider request", "prepare: original model digest", "prepare: prepare method",
                 "prepare: code identity", "prepare statement approved", "prepare chain", "prepare provider"):
        assert step in ok, step
    assert "model digest" not in verdict.unpinned, "the pinned original pins the audited model through the chain"
    assert verdict.unpinned == ["log"] and verdict.accepted(allow_unpinned=True)
    # The audit really ran on the quantised Mq (lm-eval's HFLM loaded the torchao safetensors).
    st = parse_statement(base64.b64decode(audit["envelope"]["payload"]))
    assert st.digest_of("model") == prepared["int8-weight-only"][0].digest != parties.sealed["model"].digest
    assert set(st.results) == {"aa_demo_mc", "aa_demo_gen"}


def test_prepare_statement_links_m_and_mq(prepared: dict, parties) -> None:
    mq, raw = prepared["int8-weight-only"]
    bundle = PrepareBundle.from_json(json.loads(raw))
    assert canonical_json(bundle.to_json()) == raw, "one model builds and parses the prepare bundle"
    p = parse_prepare_statement(bundle.envelope.payload).predicate
    assert (p.original.digest, p.prepared.digest, p.method.name) == (parties.sealed["model"].digest, mq.digest,
                                                                      "int8-weight-only")
    assert p.method.library == "torchao" and p.method.version == p.versions["torchao"] != "not installed"
    assert p.method.config["quant_type"]["default"]["_type"] == "Int8WeightOnlyConfig"
    assert p.request.provider == parties.provider.public_raw() and p.platform.name == "sim"
    # The sealed Mq opens with the key the client unwrapped, to exactly the files the subjects name.
    assert stat.S_IMODE(mq.key_path.stat().st_mode) == 0o600
    sink = MemorySink()
    reader = SealedReader(mq.sealed_path)
    unsealer = Unsealer(reader.header, read_key_file(mq.key_path), "model", sink, expected_kind="model")
    for chunk in reader:
        unsealer.feed(chunk)
    assert unsealer.finish(expected_digest=mq.digest) == mq.digest
    files = sink.files
    assert "tokenizer.json" in files, "M's tokenizer travels with Mq"
    assert json.loads(files["config.json"])["quantization_config"]["quant_method"] == "torchao"


def test_prepare_bundle_alone_verifies_and_the_cli_says_so(prepared: dict, parties, tmp_path: Path) -> None:
    raw = prepared["int8-weight-only"][1]
    verdict, st = verify_prepare(json.loads(raw), _policy(parties), at=_now())
    assert verdict.verified and verdict.accepted() and st is not None, verdict.failures
    path = tmp_path / "prepare.json"
    path.write_bytes(raw)
    pol = tmp_path / "policy.toml"
    pol.write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n'
                   f'[expect]\ncode_identity = ["{code_identity()}"]\n'
                   f'[prepare]\noriginal_model_digest = "{parties.sealed["model"].digest}"\n'
                   'methods = ["int4-weight-only"]\n')
    cli = [sys.executable, "-m", "verifier.cli", "prepare", str(path), "--policy", str(pol)]
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "prepare method" in proc.stdout, proc.stdout + proc.stderr
    pol.write_text(pol.read_text().replace("int4-weight-only", "int8-weight-only"))
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _with_payload(bundle: dict, edit) -> dict:  # noqa: ANN001
    prep = json.loads(json.dumps(bundle["prepare"]))
    payload = json.loads(base64.b64decode(prep["envelope"]["payload"]))
    edit(payload)
    prep["envelope"]["payload"] = base64.b64encode(canonical_json(payload)).decode()
    return {**bundle, "prepare": prep}


def test_altered_prepare_statement_fails(audit: dict, parties) -> None:
    def claim_other_original(payload: dict) -> None:
        payload["predicate"]["method"]["name"] = "cast:bfloat16"

    failed = _failed(verify_bundle(_with_payload(audit, claim_other_original), _policy(parties), at=_now()))
    assert {"prepare: report signature", "prepare: final evidence: report data", "prepare statement approved",
            "prepare: prepare method"} <= failed, failed


def test_missing_prepare_statement_fails(audit: dict, parties) -> None:
    without = {k: v for k, v in audit.items() if k != "prepare"}
    assert "prepare chain" in _failed(verify_bundle(without, _policy(parties), at=_now()))
    # An audit whose manifest names no prepare statement at all (Mq uploaded as is) fails the pin too.
    st = parse_statement(base64.b64decode(audit["envelope"]["payload"]))
    plain = dataclasses.replace(st, predicate=dataclasses.replace(
        st.predicate, manifest=dataclasses.replace(st.manifest, prepared_from=None)))
    verdict = Verdict(subject="audit bundle")
    check_chain(None, plain, _policy(parties), at=_now(), verdict=verdict)
    assert [s.name for s in verdict.failures] == ["prepare chain"]
    assert "pins the original model" in verdict.failures[0].reason


def test_prepare_bundle_of_another_mq_fails(audit: dict, parties, prepared: dict) -> None:
    other = {**audit, "prepare": json.loads(prepared["int4-weight-only"][1])}
    failed = _failed(verify_bundle(other, _policy(parties, methods=["int8-weight-only", "int4-weight-only"]), at=_now()))
    assert {"prepare statement approved", "prepare chain"} <= failed, failed


def test_method_not_accepted_and_other_original_fail(audit: dict, parties) -> None:
    failed = _failed(verify_bundle(audit, _policy(parties, methods=["int4-weight-only"]), at=_now()))
    assert failed == {"prepare: prepare method"}, failed
    failed = _failed(verify_bundle(audit, _policy(parties, original="sha256:" + "ab" * 32), at=_now()))
    assert failed == {"prepare: original model digest"}, failed


def test_enclave_refuses_to_attach_the_bundle_of_another_mq(enclave: RunningEnclave, parties, prepared: dict) -> None:
    mq, _ = prepared["int8-weight-only"]
    with enclave.client() as c:
        sid = open_session(c, parties)
        e = c.attest(parties.enclave_policy)
        c.upload(e, sid, mq, parties.provider)
        with pytest.raises(EnclaveError, match="session's model is"):
            c.attach_prepared(e, sid, parties.provider, prepared["int4-weight-only"][1])
        with pytest.raises(EnclaveError, match="signature does not verify"):
            c.attach_prepared(e, sid, parties.provider, _tampered(prepared["int8-weight-only"][1]))
        with pytest.raises(EnclaveError, match="not signed by this session's provider key"):
            c.attach_prepared(e, sid, parties.auditor, prepared["int8-weight-only"][1])
        assert c.manifest(sid).manifest.prepared_from is None


def _tampered(raw: bytes) -> bytes:
    obj = json.loads(raw)
    payload = json.loads(base64.b64decode(obj["envelope"]["payload"]))
    payload["predicate"]["device"] = "elsewhere"
    obj["envelope"]["payload"] = base64.b64encode(canonical_json(payload)).decode()
    return canonical_json(obj)


def _request(enclave: RunningEnclave, sid: str, identity, role: str = "provider",
             method: str = "cast:bfloat16") -> pb.PrepareRequest:
    """A prepare request signed by `identity` for the session's current job."""
    view = enclave.service.sessions.manifest(sid)[0]
    recipient, n = HpkeKeyPair.generate(), nonce()
    signature = identity.sign(prepare_message(enclave.service.keys.signing_public, sid, view.session.nonce,
                                              view.session.job, view.digest_of("model"), method, recipient.suite,
                                              recipient.public_bytes(), n))
    return pb.PrepareRequest(session_id=sid, role=role, method=method, recipient_suite=recipient.suite,
                             recipient_public_key=recipient.public_bytes(), nonce=n, signature=signature)


def _call(enclave: RunningEnclave, request: pb.PrepareRequest) -> list:
    with enclave.client() as c:
        return list(c._stub.Prepare(request))


def test_the_auditor_cannot_request_a_prepare(enclave: RunningEnclave, parties, prepared: dict) -> None:
    sid = prepared["session"]
    for role in ("auditor", "provider"):  # as itself, or claiming the provider's role
        with pytest.raises(grpc.RpcError) as err:
            _call(enclave, _request(enclave, sid, parties.auditor, role=role))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()


def test_a_prepare_request_cannot_be_replayed(enclave: RunningEnclave, parties, prepared: dict) -> None:
    sid = prepared["session"]
    request = _request(enclave, sid, parties.provider)
    events = _call(enclave, request)
    assert events[-1].WhichOneof("event") == "prepared"
    assert any(e.WhichOneof("event") == "sealed_chunk" for e in events)
    with pytest.raises(grpc.RpcError) as err:  # the same session: its job number has moved on
        _call(enclave, request)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    with enclave.client() as c:
        other = open_session(c, parties)
        provision(c, parties, other, kinds=("model",))
    replayed = pb.PrepareRequest()
    replayed.CopyFrom(request)
    replayed.session_id = other
    with pytest.raises(grpc.RpcError) as err:  # another session holding the same model
        _call(enclave, replayed)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    unknown = _request(enclave, sid, parties.provider, method="int3-magic")
    with pytest.raises(grpc.RpcError) as err:
        _call(enclave, unknown)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown prepare method" in err.value.details()


def test_mq_plaintext_lives_only_on_tmpfs(enclave: RunningEnclave, parties, prepared: dict, audit: dict) -> None:
    """The work folder is tmpfs; a finished prepare leaves no Mq folder there, and Mq's plaintext
    weights are on no persistent disk the enclave could have written (temp dir, HF caches). (An
    uploaded Mq stays in its session's tmpfs folder like any model, until the session closes.)"""
    assert filesystem_of(enclave.workdir) in RAM_FILESYSTEMS
    mq = prepared["int4-weight-only"][0]
    sink = MemorySink()
    reader = SealedReader(mq.sealed_path)
    unsealer = Unsealer(reader.header, read_key_file(mq.key_path), "model", sink, expected_kind="model")
    for chunk in reader:
        unsealer.feed(chunk)
    unsealer.finish()
    from safetensors.torch import load

    quantised = [t for name, t in load(sink.files["model.safetensors"]).items() if "qdata" in name]
    needle = quantised[0].numpy().tobytes()[:256]  # int4 values M's file never held
    assert len(needle) == 256 and needle not in next((parties.root / "model").glob("*.safetensors")).read_bytes()
    assert not list(enclave.workdir.glob("prepared-*")), "Mq's plaintext and ciphertext are wiped after the job"
    roots = [Path(tempfile.gettempdir()), Path.home() / ".cache" / "huggingface"]
    roots += [Path(os.environ[v]) for v in ("HF_HOME", "HF_DATASETS_CACHE") if v in os.environ]
    hits = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            if Path(dirpath).is_relative_to(parties.root):
                continue
            for name in files:
                p = Path(dirpath, name)
                try:
                    if p.is_file() and not p.is_symlink() and p.stat().st_size < 256 << 20 and needle in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    continue
    assert not hits, f"Mq plaintext found in {hits}"


def test_methods_and_policy_agree() -> None:
    assert set(METHODS) == set(CASTS) | {"int8-weight-only", "int4-weight-only"}
    with pytest.raises(PolicyError, match="unknown method"):
        policy.parse({"allow_simulated": True, "prepare": {"methods": ["int3"]}})
    with pytest.raises(PolicyError, match="original_model_digest"):
        policy.parse({"allow_simulated": True, "prepare": {"original_model_digest": "abc"}})
    with pytest.raises(PolicyError, match="pins nothing"):
        policy.parse({"allow_simulated": True, "prepare": {}})


def test_cli_prepares_then_uploads_mq_with_its_bundle(enclave: RunningEnclave, parties, prepared: dict,
                                                      tmp_path: Path) -> None:
    pol = tmp_path / "enclave-policy.toml"
    pol.write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n')
    common = ["--enclave", enclave.target, "--policy", str(pol), "--identity", str(parties.root / "keys/provider.key")]
    out = tmp_path / "mq"
    proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "provider", "prepare", "cast:float16", "--session",
                           prepared["session"], "--out", str(out), *common], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prepare bundle: verified" in proc.stdout and "prepare" in proc.stderr  # live progress on stderr
    assert {p.name for p in out.iterdir()} == {"model.sealed", "model.key", "model.json", "prepare.json"}
    with enclave.client() as c:
        sid = open_session(c, parties)
    proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "provider", "upload", str(out), "--prepared-from",
                           str(out / "prepare.json"), "--session", sid, *common], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0 and "prepare statement sha256:" in proc.stdout, proc.stdout + proc.stderr
    ref = enclave.service.sessions.manifest(sid)[0].prepared_from
    assert (ref.original_model_digest, ref.method) == (parties.sealed["model"].digest, "cast:float16")
