"""Presets reproduce lm-eval's own task configs, run on local copies, and refuse Python tasks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from benchmarks.demo_assets import build_tiny_model
from benchmarks.presets import available_presets, preset_spec
from benchmarks.spec import SpecError, lm_eval_task_config, parse_spec
from enclave.runner import run_audit
from verifier.models import canonical_json

PROMPT_KEYS = ("doc_to_text", "doc_to_choice", "doc_to_target", "description", "metric_list", "output_type",
               "target_delimiter", "fewshot_delimiter")


def lm_eval_config(name: str) -> dict:
    """lm-eval's resolved config for a built-in task, via lm-eval's own YAML loader."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(available_presets()[name], resolve_func=False, recursive=True)


def test_presets_cover_mmlu_wmdp_truthfulqa():
    names = available_presets()
    assert {"truthfulqa_mc1", "wmdp_bio", "mmlu_anatomy"} <= set(names)
    assert sum(n.startswith("mmlu_") for n in names) == 57


@pytest.mark.parametrize("name", ["mmlu_anatomy", "wmdp_cyber", "truthfulqa_mc1"])
def test_preset_matches_lm_eval_task(name: str):
    spec = parse_spec(preset_spec([name], num_fewshot=5 if name.startswith("mmlu") else None).encode())
    (task,) = spec.tasks
    ours = lm_eval_task_config(task)
    theirs = lm_eval_config(name)
    for key in PROMPT_KEYS:
        assert ours.get(key) == theirs.get(key), key
    assert task.split == (theirs.get("test_split") or theirs.get("validation_split"))
    if name.startswith("mmlu"):
        assert task.files == {"test": "data/mmlu_anatomy.jsonl", "dev": "data/mmlu_anatomy.dev.jsonl"}
        assert ours["fewshot_config"] == {"sampler": "first_n"} and ours["num_fewshot"] == 5


def test_unknown_names_refused(monkeypatch: pytest.MonkeyPatch):
    import lm_eval.tasks

    toxigen = Path(lm_eval.tasks.__file__).parent / "toxigen" / "toxigen.yaml"
    monkeypatch.setattr("benchmarks.presets.available_presets", lambda: {"toxigen": toxigen})
    assert 'lm_eval_function = "toxigen/utils.py:doc_to_target"' in preset_spec(["toxigen"])
    with pytest.raises(SpecError, match="preset 'mmlu_anatomy' is unknown"):
        preset_spec(["mmlu_anatomy"])


def test_mmlu_preset_runs_on_a_local_copy(tmp_path: Path):
    """Five-shot MMLU-format rows through the runner: the template's `question.strip()` call works
    in the sandbox and few-shot examples come from the dev file in order (first_n)."""
    model = build_tiny_model(tmp_path / "model")
    spec = parse_spec(preset_spec(["mmlu_anatomy"], num_fewshot=5).encode())
    rows = [{"question": f" Which organ is number {i}? ", "subject": "anatomy",
             "choices": ["heart", "lung", "liver", "kidney"], "answer": i % 4} for i in range(6)]
    dev = [{**r, "question": f"Dev question {i}"} for i, r in enumerate(rows)]
    data = {"data/mmlu_anatomy.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
            "data/mmlu_anatomy.dev.jsonl": "".join(json.dumps(r) + "\n" for r in dev).encode()}
    run = run_audit(model, spec, data, device="cpu")
    assert run.n_samples["mmlu_anatomy"]["effective"] == 6
    assert 0.0 <= run.results["mmlu_anatomy"]["acc,none"] <= 1.0
    assert run.configs["mmlu_anatomy"]["num_fewshot"] == 5

    def text(r: dict) -> str:
        c = r["choices"]
        return f"{r['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"

    shots = "\n\n".join(f"{text(r)} {'ABCD'[r['answer']]}" for r in dev[:5])
    context = "The following are multiple choice questions (with answers) about anatomy.\n\n" + shots + \
        "\n\n" + text(rows[0])
    arguments = [[context, f" {letter}"] for letter in "ABCD"]
    assert run.records[0]["prompt_hash"] == hashlib.sha256(canonical_json(arguments)).hexdigest()
