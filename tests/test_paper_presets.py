"""The paper's three audits (benchmarks.paper_presets) run end to end by the enclave's runner on the tiny
Llama with the tiny judges, and their numbers equal a direct computation outside lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.paper_presets import CLASSIFIER_JUDGE, ENCODER_JUDGE, PAPER_PRESETS, paper_spec, sample_rows
from benchmarks.spec import SpecError, parse_spec
from enclave.runner import TemplateUndefined, run_audit
from judge_assets import (
    build_assets,
    bundle,
    direct_cosine,
    direct_toxic_probability,
    mean_and_stderr,
    rows,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.mktemp("paper"))


def _run(assets: dict[str, Path], name: str, datasets: dict[str, bytes] | None = None):
    spec = parse_spec(paper_spec([name], batch_size=8, max_gen_toks=8).encode())
    return run_audit(assets["model"], spec, datasets or bundle(assets["data"]), judges_dir=assets["judges"],
                     device="cpu")


def _per_sample(run, task: str, metric: str) -> list[float]:
    return [r["metrics"][metric] for r in sorted((r for r in run.records if r["task"] == task),
                                                 key=lambda r: r["doc_id"])]


def test_toxicchat_rate_equals_the_classifier_run_directly(assets: dict[str, Path]) -> None:
    run = _run(assets, "paper_toxicchat")
    records = sorted(run.records, key=lambda r: r["doc_id"])
    probabilities = direct_toxic_probability(assets["judges"] / CLASSIFIER_JUDGE, [r["response"] for r in records],
                                             "toxic")
    expected = [1.0 if p >= 0.5 else 0.0 for p in probabilities]
    assert _per_sample(run, "paper_toxicchat", "judge_toxicity") == expected
    # Which label the metric reads is checked on fixed texts in tests/test_judges.py: what the tiny random model
    # generates here can differ between CPUs (near-tied logits), and on some it is the same text for every prompt.
    mean, stderr = mean_and_stderr(expected)
    result = run.results["paper_toxicchat"]
    assert result["judge_toxicity,none"] == pytest.approx(mean)
    assert result["judge_toxicity_stderr,none"] == pytest.approx(stderr)
    assert run.judges == [{"name": CLASSIFIER_JUDGE, "kind": "classifier", "dtype": "float32"}]


def test_xsum_similarity_and_rouge_equal_a_direct_computation(assets: dict[str, Path]) -> None:
    from rouge_score import rouge_scorer

    run = _run(assets, "paper_xsum")
    references = [r["summary"] for r in rows(assets["data"] / "xsum.jsonl")]
    records = sorted(run.records, key=lambda r: r["doc_id"])
    assert {r["filter"] for r in records} == {"first_line"}
    cosines = [direct_cosine(assets["judges"] / ENCODER_JUDGE, r["response"], references[r["doc_id"]])
               for r in records]
    assert _per_sample(run, "paper_xsum", "judge_similarity") == pytest.approx(cosines, abs=1e-5)
    assert len({round(c, 4) for c in cosines}) > 1
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(references[r["doc_id"]], r["response"])["rougeL"].fmeasure for r in records]
    assert _per_sample(run, "paper_xsum", "rougeL") == pytest.approx(rouge)
    result = run.results["paper_xsum"]
    for metric, values in (("judge_similarity", cosines), ("rougeL", rouge)):
        mean, stderr = mean_and_stderr(values)
        assert result[f"{metric},first_line"] == pytest.approx(mean, abs=1e-6)
        assert result[f"{metric}_stderr,first_line"] == pytest.approx(stderr, abs=1e-6)
    assert run.judges == [{"name": ENCODER_JUDGE, "kind": "encoder", "dtype": "float32"}]


def test_mmlu_runs_five_shot_on_its_sample(assets: dict[str, Path]) -> None:
    run = _run(assets, "paper_mmlu")
    assert run.n_samples["paper_mmlu"] == {"original": 20, "effective": 20}
    assert run.configs["paper_mmlu"]["num_fewshot"] == 5
    acc = _per_sample(run, "paper_mmlu", "acc")
    assert run.results["paper_mmlu"]["acc,none"] == pytest.approx(mean_and_stderr(acc)[0])
    assert run.judges == []


def test_a_missing_column_is_named_not_scored_against_its_name(assets: dict[str, Path]) -> None:
    """doc_to_target is a template, so a bundle without `summary` fails instead of scoring the word "summary"."""
    data = bundle(assets["data"])
    data["data/xsum.jsonl"] = b"".join(json.dumps({"document": r["document"]}).encode() + b"\n"
                                       for r in rows(assets["data"] / "xsum.jsonl"))
    with pytest.raises(TemplateUndefined, match="summary"):
        _run(assets, "paper_xsum", data)


def test_preset_records_name_the_files_columns_and_judges_their_specs_use() -> None:
    for name, preset in PAPER_PRESETS.items():
        spec = parse_spec(paper_spec([name], data_dir="d").encode())
        assert spec.datasets == [f"d/{f}" for f in preset.files]
        assert spec.judges == preset.judges
        assert preset.summary and all(preset.files.values())
        config = json.dumps([t.config for t in spec.tasks])
        for columns in preset.files.values():
            assert all(c in config for c in columns), name
    both = parse_spec(paper_spec(list(PAPER_PRESETS)).encode())
    assert [j.name for j in both.judges] == [ENCODER_JUDGE, CLASSIFIER_JUDGE]
    assert both.task_names == list(PAPER_PRESETS)


def test_unknown_preset_and_bad_options_are_refused() -> None:
    with pytest.raises(SpecError, match="paper_mmlu"):
        paper_spec(["paper_gsm8k"])
    with pytest.raises(SpecError, match="threshold"):
        paper_spec(["paper_toxicchat"], threshold=1.5)


def test_mmlu_sample_is_seeded_distinct_and_in_order() -> None:
    population = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(2000)]
    first = sample_rows(population, 500, seed=7)
    assert first == sample_rows(population, 500, seed=7)
    assert first != sample_rows(population, 500, seed=8)
    indices = [int(r["question"][1:]) for r in first]
    assert len(set(indices)) == 500 and indices == sorted(indices)
    with pytest.raises(SpecError, match="at least 500"):
        sample_rows(population[:100], 500)
