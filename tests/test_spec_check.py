"""`aaudit auditor check`, `aaudit seal spec` and `aaudit auditor export-lm-eval`: a spec checked on the
auditor's machine before sealing, every failure located by task, file, line and template key or column
without ever showing the row, and a stock lm-eval reproduction that gives the enclave's numbers."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aaudit.cli import main
from benchmarks.check import check_data, check_spec
from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, gen_records, mc_records
from benchmarks.spec import parse_spec
from helpers import step

SECRET = "zq-secret-7781"  # in every row: no message may show it
SPEC = demo_spec_toml().replace('output = "aggregate"\n', 'output = "aggregate"\nmin_documents = 10\n')


def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "question": f"{r['question']} {SECRET}"} for r in records]


def _write(path: Path, rows: list[Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """The demo's data with a secret in every question, and the spec beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "mc.jsonl", _rows(mc_records()))
    _write(folder / "gen.jsonl", _rows(gen_records()))
    (tmp_path / "audit.toml").write_text(SPEC)
    return folder


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and everything printed; with --json, stdout must be one JSON object (returned as
    its text) and a failure still says so in one line on stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert SECRET not in out + err, "a message showed the row's content"
    if code:
        assert err.strip().splitlines()[-1].startswith("aaudit "), err
    if "--json" in argv:
        json.loads(out)
        return code, out
    return code, out + err


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str = SPEC, *extra: str) -> tuple[int, str]:
    (tmp_path / "audit.toml").write_text(spec)
    return run_cli(["auditor", "check", str(tmp_path / "audit.toml"), "--data", str(tmp_path / "data"), *extra], capsys)


def verdict_of(spec: str, data: Path, floor: int = 10):  # noqa: ANN201
    verdict, parsed = check_spec(spec.encode(), "test")
    assert parsed is not None, verdict.steps
    check_data(verdict, parsed, data, floor=floor)
    for s in verdict.steps:
        assert SECRET not in s.reason
    return verdict


def failed(verdict, name: str) -> str:  # noqa: ANN001
    s = step(verdict, name)
    assert s.status.value == "failed", (s, verdict.steps)
    return s.reason


# --- passing -----------------------------------------------------------------------------------


def test_the_demo_spec_passes_against_its_data(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out = check(tmp_path, capsys)
    assert code == 0, out
    for name in ("spec parses", "task aa_demo_mc: data files", "task aa_demo_mc: columns",
                 "task aa_demo_mc: templates render", "task aa_demo_mc: targets", "task aa_demo_mc: documents",
                 "task aa_demo_gen: templates render", "task aa_demo_gen: documents"):
        assert f"{name} " in out
    assert "FAILED" not in out
    assert out.rstrip().endswith(f"SPEC CHECK PASSED ({tmp_path / 'audit.toml'} against {data})")


def test_json_output_shape(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out = check(tmp_path, capsys, SPEC, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["passed"] is True and doc["summary"].startswith("SPEC CHECK PASSED")
    assert all(set(s) == {"step", "result", "reason"} for s in doc["steps"])
    assert {s["result"] for s in doc["steps"]} == {"ok"}
    assert doc["claims"]["documents"] == {"aa_demo_mc": {"documents": 48, "distinct": 48},
                                          "aa_demo_gen": {"documents": 18, "distinct": 18}}
    assert doc["claims"]["spec"]["tasks"]["aa_demo_gen"]["results"] == ["exact_match,strip"]

    code, out = check(tmp_path, capsys, SPEC.replace("min_documents = 10", "min_documents = 30"), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["passed"] is False
    assert [s["step"] for s in doc["steps"] if s["result"] == "failed"] == ["task aa_demo_gen: documents"]


def test_without_data_only_the_spec_is_checked(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out = run_cli(["auditor", "check", str(tmp_path / "audit.toml")], capsys)
    assert code == 0 and "not checked: give --data DIR" in out


# --- exit codes: unusable input ------------------------------------------------------------------


def test_unreadable_input_exits_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out = run_cli(["auditor", "check", str(tmp_path / "missing.toml"), "--data", str(data)], capsys)
    assert code == 2 and "no such file" in out
    code, out = run_cli(["auditor", "check", str(tmp_path / "audit.toml"), "--data", str(tmp_path / "nodata")], capsys)
    assert code == 2 and "--data" in out
    code, out = run_cli(["auditor", "check", str(tmp_path / "audit.toml"), "--data", str(tmp_path / "nodata"),
                         "--json"], capsys)
    assert code == 2 and json.loads(out) == {"passed": False, "unusable_input": True, "error": json.loads(out)["error"]}
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.toml").write_text(SPEC)
    (two / "b.toml").write_text(SPEC)
    code, out = run_cli(["auditor", "check", str(two)], capsys)
    assert code == 2 and "one TOML file" in out


# --- each failure kind, located, without the row -------------------------------------------------


def test_a_spec_the_enclave_refuses_fails_the_first_step(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    code, out = check(tmp_path, capsys, SPEC.replace('metric = "acc_norm"', 'metric = "rouge"'))
    assert code == 1
    assert "spec parses" in out and "metric 'rouge' is not allowed" in out


def test_missing_and_malformed_files(data: Path):
    (data / "gen.jsonl").unlink()
    v = verdict_of(SPEC, data)
    assert "'gen.jsonl' is not in" in failed(v, "task aa_demo_gen: data files")
    assert step(v, "task aa_demo_gen: columns").status.value == "skipped"
    assert step(v, "task aa_demo_mc: data files").status.value == "ok"

    lines = (data / "mc.jsonl").read_text().splitlines()
    lines[6] = lines[6][:-1] + f' "{SECRET}'  # line 7 broken JSON
    (data / "mc.jsonl").write_text("\n".join(lines) + "\n")
    reason = failed(verdict_of(SPEC, data), "task aa_demo_mc: data files")
    assert "mc.jsonl: line 7: not JSON" in reason

    _write(data / "mc.jsonl", [*_rows(mc_records())[:3], ["not", "an", "object"]])
    assert "mc.jsonl: line 4: each line must be a JSON object" in failed(verdict_of(SPEC, data),
                                                                        "task aa_demo_mc: data files")


def test_a_row_lacking_a_column_is_named_by_file_line_and_column(data: Path):
    rows = _rows(mc_records())
    del rows[4]["choices"]
    del rows[9]["question"]
    _write(data / "mc.jsonl", rows)
    v = verdict_of(SPEC, data)
    reason = failed(v, "task aa_demo_mc: columns")
    assert "mc.jsonl line 5: no column 'choices' (doc_to_choice reads it)" in reason
    assert "mc.jsonl line 10: no column 'question' (doc_to_text reads it)" in reason
    # The other rows still render; the two that lack a column are left to the columns step.
    assert "46 row(s)" in step(v, "task aa_demo_mc: templates render").reason
    assert step(v, "task aa_demo_mc: targets").status.value == "skipped"


def test_a_template_that_fails_on_a_row_names_key_and_error_type_only(data: Path):
    rows = _rows(gen_records())
    rows[2]["answer"] = 42  # `{{ answer + '!' }}` fails on this row only, with a message quoting nothing
    _write(data / "gen.jsonl", rows)
    spec = SPEC.replace('doc_to_target = "{{answer}}"', "doc_to_target = \"{{ answer + '!' }}\"")
    reason = failed(verdict_of(spec, data), "task aa_demo_gen: templates render")
    assert reason.startswith("gen.jsonl line 3: doc_to_target: rendering raised TypeError (its message is not shown")
    assert "and" not in reason.split("shown")[1]  # one row only


def test_a_variable_no_row_has_is_named(data: Path):
    spec = SPEC.replace('doc_to_text = "Question: {{question}}\\nAnswer:"', 'doc_to_text = "Q: {{ questoin }}"', 1)
    v = verdict_of(spec, data)
    reason = failed(v, "task aa_demo_mc: columns")
    assert reason == "mc.jsonl lines 1, 2, 3 and 45 more: no column 'questoin' (doc_to_text reads it)"


def test_template_limits_and_the_sandbox_apply_as_in_the_enclave(data: Path):
    spec = SPEC.replace('doc_to_text = "Question: {{question}}\\nAnswer:"', 'doc_to_text = "{{ question * 100000 }}"', 1)
    assert "mc.jsonl lines 1, 2, 3 and 45 more: doc_to_text: str * 100000 would exceed" in failed(verdict_of(spec, data),
                                                                    "task aa_demo_mc: templates render")
    # A template that reaches for Python internals through a value of the data: the sandbox refuses it.
    _write(data / "mc.jsonl", [{**r, "key": "__class__"} for r in _rows(mc_records())])
    spec = SPEC.replace('doc_to_text = "Question: {{question}}\\nAnswer:"', 'doc_to_text = "{{ question[key] }}"', 1)
    assert "doc_to_text: rendering raised SecurityError" in failed(verdict_of(spec, data),
                                                                   "task aa_demo_mc: templates render")


def test_lm_evals_regex_replace_filter_renders(data: Path):
    """The runner's environment has lm-eval's own `regex_replace` (the spec parser's has a placeholder)."""
    spec = SPEC.replace('doc_to_text = "Question: {{question}}\\nAnswer:"',
                        "doc_to_text = \"Q: {{ question | regex_replace('[0-9]+', '#') }}\"", 1)
    v = verdict_of(spec, data)
    assert step(v, "task aa_demo_mc: templates render").status.value == "ok"


def test_choices_that_are_not_a_list(data: Path):
    spec = SPEC.replace('doc_to_choice = "{{choices}}"', 'doc_to_choice = "{{question}}"')
    reason = failed(verdict_of(spec, data), "task aa_demo_mc: templates render")
    assert reason.startswith("mc.jsonl lines 1, 2, 3 and 45 more: doc_to_choice: does not render to a Python list "
                             "literal")
    rows = _rows(mc_records())
    rows[3]["choices"] = [1, 2, 3]
    _write(data / "mc.jsonl", rows)
    reason = failed(verdict_of(SPEC, data), "task aa_demo_mc: targets")
    assert reason == "mc.jsonl line 4: doc_to_choice gives a list, not a non-empty list of strings"


def test_multiple_choice_targets_must_be_valid_choices(data: Path):
    rows = _rows(mc_records())
    rows[0]["answer"] = 4       # index out of range
    rows[1]["answer"] = -1      # lm-eval would silently score it 0
    _write(data / "mc.jsonl", rows)
    reason = failed(verdict_of(SPEC, data), "task aa_demo_mc: targets")
    assert reason == "mc.jsonl lines 1, 2: doc_to_target gives an index outside the row's choices"

    rows = [{**r, "label": r["choices"][r["answer"]]} for r in _rows(mc_records())]
    rows[7]["label"] = "not a choice"
    _write(data / "mc.jsonl", rows)
    reason = failed(verdict_of(SPEC.replace('doc_to_target = "answer"', 'doc_to_target = "label"'), data),
                    "task aa_demo_mc: targets")
    assert reason == "mc.jsonl line 8: doc_to_target gives a label that is not one of the row's choices"

    # A misspelt column is literal text to lm-eval: a warning, and a label that is no choice.
    v = verdict_of(SPEC.replace('doc_to_target = "answer"', 'doc_to_target = "answr"'), data)
    assert any("doc_to_target 'answr' is not a column of mc.jsonl" in w for w in v.warnings)
    assert failed(v, "task aa_demo_mc: targets") == ("mc.jsonl lines 1, 2, 3 and 45 more: doc_to_target gives a "
                                                     "label that is not one of the row's choices")


def test_fewshot_source_needs_num_fewshot_rows(data: Path):
    spec = SPEC + '''
[[task]]
name = "fs"
dataset = "mc.jsonl"
fewshot_dataset = "dev.jsonl"

[task.config]
output_type = "multiple_choice"
doc_to_text = "{{question}}"
doc_to_choice = "{{choices}}"
doc_to_target = "answer"
num_fewshot = 5
metric_list = [{ metric = "acc" }]
'''
    dev = _rows(mc_records())[:3]
    dev[1]["answer"] = 9  # an example's target is checked too (lm-eval indexes the choices with it)
    _write(data / "dev.jsonl", dev)
    v = verdict_of(spec, data)
    assert failed(v, "task fs: few-shot examples") == "num_fewshot is 5 but dev.jsonl has 3 row(s)"
    assert failed(v, "task fs: targets") == "dev.jsonl line 2: doc_to_target gives an index outside the row's choices"
    _write(data / "dev.jsonl", _rows(mc_records())[:5])
    v = verdict_of(spec, data)
    assert step(v, "task fs: few-shot examples").status.value == "ok"
    # Without a few-shot file the examples come from the evaluated file itself: said as a warning.
    v = verdict_of(spec.replace('fewshot_dataset = "dev.jsonl"\n', ""), data)
    assert step(v, "task fs: few-shot examples").status.value == "ok"
    assert any("a document can be its own example" in w for w in v.warnings)


def test_document_counts_against_min_documents_and_the_floor(data: Path):
    reason = failed(verdict_of(SPEC.replace("min_documents = 10", "min_documents = 19"), data),
                    "task aa_demo_gen: documents")
    assert "task 'aa_demo_gen' has 18 distinct documents" in reason
    rows = _rows(gen_records())
    _write(data / "gen.jsonl", rows + rows)  # copies are not documents
    reason = failed(verdict_of(SPEC.replace("min_documents = 10", "min_documents = 19"), data),
                    "task aa_demo_gen: documents")
    assert "18 distinct documents (36 rows)" in reason
    # The operator's floor applies when it is higher than the spec's minimum.
    assert "operator floor 50" in failed(verdict_of(SPEC, data, floor=50), "task aa_demo_mc: documents")


def test_lm_eval_functions_are_noted_not_rendered(data: Path):
    """Built-in tasks may name functions of lm-eval's own package: the check says it does not render them."""
    _, spec = check_spec(SPEC.encode(), "t")
    task = spec.tasks[1]
    task = dataclasses.replace(task, config={**task.config, "doc_to_text": "!function utils.doc_to_text"})
    spec = dataclasses.replace(spec, tasks=(spec.tasks[0], task))
    v, _ = check_spec(SPEC.encode(), "t")
    check_data(v, spec, data, floor=10)
    s = step(v, "task aa_demo_gen: lm-eval functions")
    assert s.status.value == "skipped" and "not checked: lm-eval function utils.doc_to_text (doc_to_text)" in s.reason
    assert step(v, "task aa_demo_gen: templates render").reason.startswith("doc_to_target resolve")
    assert v.verified


def test_the_paper_presets_pass_on_their_data_and_judge_references_are_one_text(tmp_path: Path):
    """The paper's three audits (judges included) against the tiny data of their columns; a judge metric
    with a list of references per document is caught here, not after the run."""
    from benchmarks.paper_presets import PAPER_PRESETS, paper_spec
    from benchmarks.tiny_judges import write_tiny_paper_data

    write_tiny_paper_data(tmp_path / "data")
    spec = paper_spec(list(PAPER_PRESETS)).replace('output = "aggregate"', 'output = "aggregate"\nmin_documents = 10')
    v = verdict_of(spec, tmp_path)  # the spec names data/<file>: the bundle is the folder holding data/
    assert v.verified, [s for s in v.steps if s.status.value == "failed"]
    assert step(v, "task paper_xsum: targets").reason == ("every reference is one text, as judge_similarity, "
                                                          "rougeL needs")
    rows = [json.loads(line) for line in (tmp_path / "data" / "xsum.jsonl").read_text().splitlines()]
    rows[2]["summary"] = ["one", "two"]
    _write(tmp_path / "data" / "xsum.jsonl", rows)
    xsum = paper_spec(["paper_xsum"]).replace('output = "aggregate"', 'output = "aggregate"\nmin_documents = 10')
    xsum = xsum.replace('doc_to_target = "{{summary}}"', 'doc_to_target = "summary"')
    assert failed(verdict_of(xsum, tmp_path), "task paper_xsum: targets") == (
        "data/xsum.jsonl line 3: doc_to_target gives a list; judge_similarity, rougeL scores one reference per document")


def test_no_message_shows_row_content(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Every failure kind at once, through the command line, in text and JSON: the secret never shows."""
    rows = _rows(mc_records())
    del rows[0]["answer"]
    rows[1]["answer"] = SECRET
    rows[2]["choices"] = SECRET
    _write(data / "mc.jsonl", rows)
    spec = SPEC.replace('doc_to_target = "{{answer}}"', "doc_to_target = \"{{ answer | int + question }}\"")
    code, out = check(tmp_path, capsys, spec)  # run_cli asserts the secret is absent
    assert code == 1 and "SPEC CHECK FAILED" in out and out.count("  FAILED  ") == 4
    code, out = check(tmp_path, capsys, spec, "--json")
    reasons = {s["step"]: s["reason"] for s in json.loads(out)["steps"] if s["result"] == "failed"}
    assert code == 1 and reasons == {
        "task aa_demo_mc: columns": "mc.jsonl line 1: no column 'answer' (doc_to_target reads it)",
        "task aa_demo_mc: templates render": "mc.jsonl line 3: doc_to_choice: does not render to a Python list "
        "literal (lm-eval reads it with ast.literal_eval) (1 row(s) lacking a column not rendered)",
        "task aa_demo_mc: targets": "mc.jsonl line 2: doc_to_target gives a label that is not one of the row's "
        "choices",
        "task aa_demo_gen: templates render": "gen.jsonl lines 1, 2, 3 and 15 more: doc_to_target: rendering raised "
        "TypeError (its message is not shown: it may quote the row)",
    }


def test_100k_rows_in_seconds(tmp_path: Path):
    """The whole check of a 100,000-row multiple-choice file: parse, columns, three templates per row,
    targets, distinct documents. Measured 3 s of CPU time (6-7 s wall on a 2-core machine shared with
    other jobs); the bound leaves room for a busy machine while still catching anything worse than linear."""
    folder = tmp_path / "data"
    folder.mkdir()
    mc = mc_records()
    rows = [{**mc[i % len(mc)], "question": f"{mc[i % len(mc)]['question']} ({i})"} for i in range(100_000)]
    _write(folder / "mc.jsonl", rows)
    spec = SPEC.split("[[task]]\nname = \"aa_demo_gen\"")[0]
    t0 = time.perf_counter()
    v = verdict_of(spec, folder)
    elapsed = time.perf_counter() - t0
    assert v.verified, v.steps
    assert "100000 row(s)" in step(v, "task aa_demo_mc: templates render").reason
    print(f"100k-row check: {elapsed:.2f} s")
    assert elapsed < 30


# --- aaudit seal spec -----------------------------------------------------------------------------


def test_seal_spec_refuses_what_the_enclave_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('metric = "acc_norm"', 'metric = "rouge"'))
    code, out = run_cli(["seal", "spec", str(bad), "--out", str(tmp_path / "sealed")], capsys)
    assert code == 1
    assert "spec parses" in out and "FAILED" in out and "metric 'rouge' is not allowed" in out
    assert "nothing was sealed" in out
    assert not (tmp_path / "sealed").exists()

    good = tmp_path / "audit.toml"
    good.write_text(SPEC)
    code, out = run_cli(["seal", "spec", str(good), "--out", str(tmp_path / "sealed")], capsys)
    assert code == 0 and "spec check: 'demo-audit' version 1, 2 task(s)" in out
    assert (tmp_path / "sealed" / "spec.sealed").exists()

    two = tmp_path / "two"
    two.mkdir()
    (two / "a.toml").write_text(SPEC)
    (two / "b.toml").write_text(SPEC)
    code, out = run_cli(["seal", "spec", str(two), "--out", str(tmp_path / "sealed2")], capsys)
    assert code == 2 and "one TOML file" in out and not (tmp_path / "sealed2").exists()


# --- export-lm-eval -------------------------------------------------------------------------------


def test_export_refuses_to_overwrite_and_bad_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "audit.toml").write_text(SPEC)
    argv = ["auditor", "export-lm-eval", str(tmp_path / "audit.toml"), "--out", str(tmp_path / "tasks")]
    assert run_cli(argv, capsys)[0] == 0
    code, out = run_cli(argv, capsys)
    assert code == 2 and "already holds README.md, aa_demo_gen.yaml, aa_demo_mc.yaml" in out
    (tmp_path / "audit.toml").write_text(SPEC.replace('metric = "acc_norm"', 'metric = "rouge"'))
    code, out = run_cli(argv[:3] + ["--out", str(tmp_path / "t2")], capsys)
    assert code == 2 and "rouge" in out and not (tmp_path / "t2").exists()


def test_exported_yaml_reproduces_the_enclave_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch):
    """The exported folder loads in lm-eval's TaskManager, and the command its README gives, run as
    written through lm-eval's own command line, gives the same aggregates as the enclave runner on the
    same model and data (a few documents each, to stay quick)."""
    import datasets
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.tasks import TaskManager

    from enclave.runner import run_audit

    build_tiny_model(tmp_path / "model")
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "mc.jsonl", mc_records()[:8])
    _write(tmp_path / "data" / "gen.jsonl", gen_records()[:4])
    spec_text = SPEC.replace("max_gen_toks = 16", "max_gen_toks = 4")
    (tmp_path / "audit.toml").write_text(spec_text)
    monkeypatch.chdir(tmp_path)  # as a reader runs it: the command's paths are relative to this folder
    code, out = run_cli(["auditor", "export-lm-eval", "audit.toml", "--out", "tasks", "--data-dir", "data",
                         "--model-dir", "model"], capsys)
    assert code == 0, out
    spec = parse_spec(spec_text.encode())
    manager = TaskManager(include_defaults=False, include_path=str(tmp_path / "tasks"))
    assert set(spec.task_names) <= set(manager.all_tasks)

    readme = (tmp_path / "tasks" / "README.md").read_text()
    (command,) = [line.strip() for line in readme.splitlines() if line.strip().startswith("lm_eval ")]
    assert command in out  # printed as well
    assert "project's own metrics" not in readme  # this spec uses lm-eval's metrics only
    # lm-eval's json loader keeps an Arrow copy of the data: in this test's folder, not the user's cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(sys, "argv", [*shlex.split(command), "--device", "cpu", "--output_path", "out"])
    cli_evaluate()
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    stock = json.loads(results_file.read_text())

    files = {name: (tmp_path / "data" / name).read_bytes() for name in spec.datasets}
    run = run_audit(tmp_path / "model", spec, files, device="cpu")
    for task in spec.task_names:
        assert stock["results"][task] == run.results[task], task
        assert stock["n-samples"][task] == run.n_samples[task], task
    assert run.n_samples["aa_demo_mc"]["effective"] == 8 and run.n_samples["aa_demo_gen"]["effective"] == 4
