"""The paper's three audits end to end in a real enclave (sim TEE, attested TLS, gRPC): the auditor
seals the presets' spec, their data and its two judges, the provider the tiny Llama; both approve;
the job runs them; and the bundle's numbers equal a direct computation outside the enclave: the
judges run with plain transformers on the answers the auditor opens from its per-sample records,
ROUGE-L with rouge_score, and MMLU accuracy with stock lm-eval on the exported task YAML."""

from __future__ import annotations

import base64
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aaudit.samples import open_samples
from benchmarks.paper_presets import CLASSIFIER_JUDGE, ENCODER_JUDGE, paper_spec
from benchmarks.spec import parse_spec, spec_to_lm_eval_yaml
from e2e_helpers import Parties, RunningEnclave, approve_both, open_session, provision, run
from enclave.measure import code_identity
from judge_assets import build_assets, direct_cosine, direct_toxic_probability, mean_and_stderr, rows
from sealing.identity import generate_identity, generate_samples_key, load_samples_key
from sealing.stream import seal
from verifier import policy
from verifier.bundle import verify_bundle
from verifier.statement import parse_statement

pytestmark = pytest.mark.timeout(600)
PRESETS = ["paper_mmlu", "paper_xsum", "paper_toxicchat"]


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("paper-e2e")
    assets = build_assets(root / "plain")
    shutil.rmtree(assets["judges"] / "rubric-llm")  # the presets name two judges: a third folder blocks approval
    (root / "dataset").mkdir()
    shutil.copytree(assets["data"], root / "dataset" / "data")  # the specs read data/<file>
    recipient, samples_key, _ = generate_samples_key(root / "keys", "auditor")
    spec_text = paper_spec(PRESETS, output="aggregate+samples", samples_recipient=recipient, batch_size=8,
                           max_gen_toks=8)
    (root / "spec").mkdir()
    (root / "spec" / "paper.toml").write_text(spec_text)
    sealed = {"model": seal(assets["model"], root / "sealed", "model"),
              "dataset": seal(root / "dataset", root / "sealed", "dataset"),
              "spec": seal(root / "spec" / "paper.toml", root / "sealed", "spec"),
              "judges": seal(assets["judges"], root / "sealed", "judges")}
    provider, _, _ = generate_identity(root / "keys", "provider")
    auditor, _, _ = generate_identity(root / "keys", "auditor")
    enclave_policy = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]}}, "enclave")
    parties = Parties(root, b"", sealed, provider, auditor, enclave_policy, samples_key)
    enclave = RunningEnclave()
    try:
        with enclave.client() as c:
            sid = open_session(c, parties)
            provision(c, parties, sid, ("model", "dataset", "spec", "judges"))
            assert c.manifest(sid).problems == []
            approve_both(c, parties, sid)
            bundle = run(c, parties, sid)
            ciphertext = c.samples
    finally:
        enclave.stop()
    records = open_samples(ciphertext, bundle, load_samples_key(samples_key))
    return {"assets": assets, "bundle": bundle, "records": records, "sealed": sealed, "spec": spec_text,
            "statement": parse_statement(base64.b64decode(bundle["envelope"]["payload"]))}


def _per_doc(records: list[dict], task: str) -> list[dict]:
    return sorted((r for r in records if r["task"] == task), key=lambda r: r["doc_id"])


def test_the_bundle_verifies_with_every_digest_pinned(audit: dict) -> None:
    st = audit["statement"]
    pol = policy.parse({"allow_simulated": True, "sim": {"measurements": [st.code_identity]},
                        "expect": {f"{k}_digest": a.digest for k, a in audit["sealed"].items()}})
    verdict = verify_bundle(audit["bundle"], pol, at=datetime.now(timezone.utc))
    assert verdict.verified, [(s.name, s.reason) for s in verdict.failures]
    assert [j.name for j in st.predicate.runtime.judges] == [ENCODER_JUDGE, CLASSIFIER_JUDGE]


def test_toxicchat_rate_equals_the_classifier_run_outside(audit: dict) -> None:
    records = _per_doc(audit["records"], "paper_toxicchat")
    probabilities = direct_toxic_probability(audit["assets"]["judges"] / CLASSIFIER_JUDGE,
                                             [r["response"] for r in records], "toxic")
    expected = [1.0 if p >= 0.5 else 0.0 for p in probabilities]
    assert [r["metrics"]["judge_toxicity"] for r in records] == expected
    mean, stderr = mean_and_stderr(expected)
    result = audit["statement"].results["paper_toxicchat"]
    assert result["judge_toxicity,none"] == pytest.approx(mean)
    assert result["judge_toxicity_stderr,none"] == pytest.approx(stderr)


def test_xsum_similarity_and_rouge_equal_a_computation_outside(audit: dict) -> None:
    from rouge_score import rouge_scorer

    references = [r["summary"] for r in rows(audit["assets"]["data"] / "xsum.jsonl")]
    records = _per_doc(audit["records"], "paper_xsum")
    cosines = [direct_cosine(audit["assets"]["judges"] / ENCODER_JUDGE, r["response"], references[r["doc_id"]])
               for r in records]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(references[r["doc_id"]], r["response"])["rougeL"].fmeasure for r in records]
    result = audit["statement"].results["paper_xsum"]
    for metric, values in (("judge_similarity", cosines), ("rougeL", rouge)):
        assert [r["metrics"][metric] for r in records] == pytest.approx(values, abs=1e-5), metric
        assert result[f"{metric},first_line"] == pytest.approx(mean_and_stderr(values)[0], abs=1e-5), metric


def test_mmlu_accuracy_equals_stock_lm_eval_on_the_exported_yaml(audit: dict, tmp_path: Path) -> None:
    """Plain lm-eval (its HFLM, its task loader reading the JSONL) on the same model, data and seed."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    spec = parse_spec(audit["spec"].encode())
    mmlu = next(t for t in spec.tasks if t.name == "paper_mmlu")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    single = spec.__class__(**{**spec.__dict__, "tasks": (mmlu,), "judges": ()})
    for name, text in spec_to_lm_eval_yaml(single, str(audit["assets"]["data"].parent)).items():
        (tasks / f"{name}.yaml").write_text(text)
    lm = HFLM(pretrained=str(audit["assets"]["model"]), batch_size=8, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["paper_mmlu"],
                                  task_manager=TaskManager(include_defaults=False, include_path=str(tasks)),
                                  random_seed=spec.seed, numpy_random_seed=spec.seed, torch_random_seed=spec.seed,
                                  fewshot_random_seed=spec.seed)
    enclave = audit["statement"].results["paper_mmlu"]
    assert out["results"]["paper_mmlu"]["acc,none"] == pytest.approx(enclave["acc,none"])
