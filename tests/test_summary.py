"""Task summaries for the manifest, and "aggregate" refusing tasks small enough to leak one document."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.dataset import DatasetError
from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, gen_records, mc_records
from benchmarks.spec import DEFAULT_MIN_DOCUMENTS, SpecError, parse_spec
from benchmarks.summary import TaskSummary, check_aggregate, summarize_tasks

SECRET = "TOP-SECRET-ITEM"


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


DEMO = parse_spec(demo_spec_toml().encode())
DEMO_DATA = {"mc.jsonl": jsonl(mc_records()), "gen.jsonl": jsonl(gen_records())}

# The attack: one document, a metric that reports its exact log-likelihood, output "aggregate".
ONE_DOC_TOML = '''name = "one-doc"
version = 1
seed = 1
output = "aggregate"

[[task]]
name = "probe"
dataset = "one.jsonl"

[task.config]
output_type = "loglikelihood_rolling"
doc_to_text = ""
doc_to_target = "{{text}}"
metric_list = [{ metric = "byte_perplexity" }]
'''


def test_demo_summary_counts_documents_and_names_result_keys():
    summaries = summarize_tasks(DEMO, DEMO_DATA)
    assert summaries == (
        TaskSummary("aa_demo_mc", len(mc_records()), len(mc_records()), ("acc,none", "acc_norm,none")),
        TaskSummary("aa_demo_gen", len(gen_records()), len(gen_records()), ("exact_match,strip",)),
    )
    assert [s.to_json() for s in summaries] == [
        {"name": "aa_demo_mc", "documents": 48, "distinct": 48, "metrics": ["acc,none", "acc_norm,none"]},
        {"name": "aa_demo_gen", "documents": 18, "distinct": 18, "metrics": ["exact_match,strip"]},
    ]
    json.dumps([s.to_json() for s in summaries])  # goes into the manifest as is


def test_every_filter_reports_every_metric():
    toml = demo_spec_toml().replace(
        '{ name = "strip", filter = [{ function = "remove_whitespace" }, { function = "take_first" }] },',
        '{ name = "strip", filter = [{ function = "remove_whitespace" }] },\n'
        '  { name = "low", filter = [{ function = "lowercase" }] },')
    toml = toml.replace("ignore_punctuation = true }", 'ignore_punctuation = true }, { metric = "chrf" }')
    spec = parse_spec(toml.encode())
    assert summarize_tasks(spec, DEMO_DATA)[1].metrics == (
        "exact_match,strip", "chrf,strip", "exact_match,low", "chrf,low")


def test_missing_or_bad_files_name_task_and_file_never_content():
    with pytest.raises(DatasetError, match=r"task 'aa_demo_gen': the spec reads 'gen.jsonl', which is not in"):
        summarize_tasks(DEMO, {"mc.jsonl": DEMO_DATA["mc.jsonl"]})
    bad = {**DEMO_DATA, "mc.jsonl": DEMO_DATA["mc.jsonl"] + b'{"question": "' + SECRET.encode() + b'\n'}
    with pytest.raises(DatasetError) as info:
        summarize_tasks(DEMO, bad)
    assert str(info.value).startswith("task 'aa_demo_mc': mc.jsonl: line 49: not JSON")
    assert SECRET not in str(info.value)


def test_a_bad_fewshot_file_is_refused_before_approval():
    toml = demo_spec_toml().replace('dataset = "mc.jsonl"', 'dataset = "mc.jsonl"\nfewshot_dataset = "dev.jsonl"')
    spec = parse_spec(toml.encode())
    with pytest.raises(DatasetError, match=r"task 'aa_demo_mc': dev.jsonl: line 1: each line must be a JSON object"):
        summarize_tasks(spec, {**DEMO_DATA, "dev.jsonl": b'["' + SECRET.encode() + b'"]\n'})
    summaries = summarize_tasks(spec, {**DEMO_DATA, "dev.jsonl": jsonl(mc_records()[:3])})
    assert summaries[0].documents == 48  # few-shot examples are not scored


def test_one_document_aggregate_is_refused():
    spec = parse_spec(ONE_DOC_TOML.encode())
    summaries = summarize_tasks(spec, {"one.jsonl": jsonl([{"text": "a prompt of the auditor's choosing"}])})
    assert summaries == (TaskSummary("probe", 1, 1, ("byte_perplexity,none",)),)
    with pytest.raises(SpecError) as info:
        check_aggregate(spec, summaries, floor=1)
    assert str(info.value) == (
        "task 'probe' has 1 distinct documents (1 rows); output = \"aggregate\" needs at least 20 (spec min_documents 20 / "
        "operator floor 1) so that no result is one document's score")


def test_min_documents_and_operator_floor():
    summaries = summarize_tasks(DEMO, DEMO_DATA)  # mc 48, gen 18
    assert DEMO.min_documents == DEFAULT_MIN_DOCUMENTS == 20
    with pytest.raises(SpecError, match=r"task 'aa_demo_gen' has 18 distinct documents .* needs at least 20"):
        check_aggregate(DEMO, summaries, floor=1)
    lowered = parse_spec(demo_spec_toml().replace('output = "aggregate"', 'min_documents = 18\noutput = "aggregate"')
                         .encode())
    assert lowered.min_documents == 18
    check_aggregate(lowered, summaries, floor=18)
    with pytest.raises(SpecError, match=r"'aa_demo_gen' has 18 distinct documents .* at least 19 \(spec min_documents 18 "
                                        r"/ operator floor 19\)"):
        check_aggregate(lowered, summaries, floor=19)  # the operator's floor wins over a lower spec value
    with pytest.raises(SpecError, match=r"'aa_demo_mc' has 48 distinct documents .* at least 49"):
        check_aggregate(replace(lowered, min_documents=49), summaries, floor=1)


def test_aggregate_plus_samples_is_not_count_checked():
    spec = replace(DEMO, output="aggregate+samples")
    check_aggregate(spec, summarize_tasks(spec, DEMO_DATA), floor=1000)


def test_summaries_of_another_spec_are_misuse():
    summaries = summarize_tasks(DEMO, DEMO_DATA)
    with pytest.raises(ValueError, match="summaries of this spec's tasks"):
        check_aggregate(DEMO, summaries[:1], floor=1)


# --- the keys agree with what lm-eval reports --------------------------------------------------

# Every output type, and metrics of each kind of aggregation, on small files so the run stays short.
# f1, mcc and perplexity are left out only because lm-eval bootstraps their stderr 100,000 times;
# their keys are built the same way as these.
ALL_KINDS = '''
[[task]]
name = "aa_ll"
dataset = "mc5.jsonl"

[task.config]
output_type = "loglikelihood"
doc_to_text = "Question: {{question}}\\nAnswer:"
doc_to_target = " {{choices[answer]}}"
metric_list = [{ metric = "acc" }]

[[task]]
name = "aa_roll"
dataset = "mc5.jsonl"

[task.config]
output_type = "loglikelihood_rolling"
doc_to_text = ""
doc_to_target = "{{question}}"
metric_list = [{ metric = "word_perplexity" }, { metric = "byte_perplexity" }, { metric = "bits_per_byte" }]

[[task]]
name = "aa_mc_all"
dataset = "mc5.jsonl"

[task.config]
output_type = "multiple_choice"
doc_to_text = "Question: {{question}}\\nAnswer:"
doc_to_choice = "{{choices}}"
doc_to_target = "answer"
metric_list = [{ metric = "acc" }, { metric = "acc_norm" }, { metric = "acc_bytes" }, { metric = "acc_mutual_info" },
               { metric = "exact_match" }, { metric = "brier_score" }]

[[task]]
name = "aa_gen_all"
dataset = "gen3.jsonl"

[task.config]
output_type = "generate_until"
doc_to_text = "Question: {{question}}\\nAnswer:"
doc_to_target = "{{answer}}"
generation_kwargs = { until = ["\\n"], max_gen_toks = 4, do_sample = false }
filter_list = [
  { name = "raw", filter = [{ function = "take_first" }] },
  { name = "low", filter = [{ function = "lowercase" }, { function = "take_first" }] },
]
metric_list = [{ metric = "exact_match" }, { metric = "bleu" }, { metric = "chrf" }, { metric = "chrf++" },
               { metric = "ter" }]
'''
RESULT_FIELDS = {"alias", "name", "sample_len"}  # what lm-eval 0.4.13 puts beside the metrics


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, bytes]]:
    from enclave.runner import run_audit

    model = build_tiny_model(tmp_path_factory.mktemp("summary") / "model")
    spec = parse_spec((demo_spec_toml() + ALL_KINDS).encode())
    data = {**DEMO_DATA, "mc5.jsonl": jsonl(mc_records()[:5]), "gen3.jsonl": jsonl(gen_records()[:3])}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISABLE_MULTIPROC", "1")  # lm-eval bootstraps bleu's stderr in-process, no fork
        run = run_audit(model, spec, data, device="cpu")
    return spec, run, data


def test_summary_metrics_are_the_keys_lm_eval_reports(lm_eval_run: tuple[Any, Any, dict[str, bytes]]):
    spec, run, data = lm_eval_run
    summaries = summarize_tasks(spec, data)
    assert [s.name for s in summaries] == spec.task_names == list(run.results)
    for s in summaries:
        results = run.results[s.name]
        metrics = {k for k in results if k not in RESULT_FIELDS and "_stderr," not in k}
        assert metrics == set(s.metrics) and len(s.metrics) == len(metrics), s.name
        assert {k for k in results if "_stderr," in k} == {k.replace(",", "_stderr,", 1) for k in s.metrics}
        assert set(results) - metrics - {k.replace(",", "_stderr,", 1) for k in s.metrics} == RESULT_FIELDS
        assert run.n_samples[s.name]["original"] == s.documents == results["sample_len"]
