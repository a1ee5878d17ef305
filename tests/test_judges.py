"""Judge models and the judge metrics (benchmarks.judges): what the spec accepts and refuses, which judge
folders load, the rubric score against a direct computation, and the audited model's release on a full GPU."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from benchmarks.demo_assets import gen_records
from benchmarks.judges import JudgeError, Judges, check_judge_folder, judge_metrics
from benchmarks.spec import JudgeSpec, SpecError, parse_spec
from benchmarks.tiny_judges import CLASSIFIER, ENCODER, RUBRIC_LM
from enclave.runner import run_audit
from judge_assets import build_assets, direct_choice_logprob, direct_toxic_probability

pytestmark = pytest.mark.timeout(300)

RUBRIC = "Answer: {{ prediction }}\nReference: {{ reference }}\nGrade from 1 to 5:"
CHOICES = [" 1", " 2", " 3", " 4", " 5"]


def spec_toml(metrics: str, judges: str = "", name: str = "gen") -> str:
    return f'''name = "judged"
version = 1
seed = 3
output = "aggregate"
{judges}
[[task]]
name = "{name}"
dataset = "gen.jsonl"

[task.config]
output_type = "generate_until"
doc_to_text = "Question: {{{{question}}}}\\nAnswer:"
doc_to_target = "{{{{answer}}}}"
generation_kwargs = {{ until = ["\\n"], max_gen_toks = 6, do_sample = false }}
metric_list = [{metrics}]
'''


def judge(name: str, kind: str) -> str:
    return f'\n[[judge]]\nname = "{name}"\nkind = "{kind}"\n'


TOX = judge("tox", "classifier")
TOX_METRIC = '{ metric = "judge_toxicity", judge = "tox", label = "toxic" }'


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.mktemp("judges"))


def gen_bundle() -> dict[str, bytes]:
    return {"gen.jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in (gen_records() * 2)[:20])}


# --- the spec ---------------------------------------------------------------------------------


def test_spec_accepts_each_judge_metric_with_its_options() -> None:
    metrics = ('{ metric = "judge_toxicity", judge = "tox", label = "toxic", threshold = 0.7 }, '
               '{ metric = "judge_similarity", judge = "enc" }, '
               f'{{ metric = "judge_rubric", judge = "llm", template = {json.dumps(RUBRIC)}, '
               f'choices = {json.dumps(CHOICES)} }}, {{ metric = "rougeL", use_stemmer = true }}')
    spec = parse_spec(spec_toml(metrics, TOX + judge("enc", "encoder") + judge("llm", "causal_lm")).encode())
    by_metric = {m["metric"]: m for m in spec.tasks[0].config["metric_list"]}
    assert by_metric["judge_toxicity"] == {"metric": "judge_toxicity", "aggregation": "mean", "higher_is_better": False,
                                           "judge": "tox", "label": "toxic", "threshold": 0.7}
    assert by_metric["judge_rubric"]["choices"] == CHOICES
    assert by_metric["rougeL"]["use_stemmer"] is True


@pytest.mark.parametrize("metrics, judges, message", [
    ('{ metric = "judge_toxicity", judge = "nobody", label = "toxic" }', TOX, "'nobody' is not a \\[\\[judge\\]\\]"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "toxic" }', "", "not a \\[\\[judge\\]\\] of the spec"),
    ('{ metric = "judge_similarity", judge = "tox" }', TOX, "needs a judge of kind encoder; judge 'tox' is a classifier"),
    ('{ metric = "judge_rubric", judge = "tox", template = "{{prediction}}", choices = ["a", "b"] }', TOX,
     "kind causal_lm"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "toxic", threshold = 1.5 }', TOX, "threshold must be"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "toxic", threshold = 0 }', TOX, "threshold must be"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "toxic", threshold = true }', TOX, "threshold must be"),
    ('{ metric = "judge_toxicity", judge = "tox" }', TOX, "needs label"),
    ('{ metric = "judge_toxicity", label = "toxic" }', TOX, "needs judge"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "" }', TOX, "label must be"),
    ('{ metric = "exact_match" }', TOX, "judge 'tox' is used by no metric"),
    (f'{TOX_METRIC}, {{ metric = "exact_match" }}', TOX + judge("spare", "encoder"), "'spare' is used by no metric"),
    ('{ metric = "judge_rubric", judge = "llm", template = "{{ doc.secret }}", choices = ["a", "b"] }',
     judge("llm", "causal_lm"), "template reads 'doc'"),
    ('{ metric = "judge_rubric", judge = "llm", template = "{{ prediction.__class__ }}", choices = ["a", "b"] }',
     judge("llm", "causal_lm"), "may not access the attribute '__class__'"),
    ('{ metric = "judge_rubric", judge = "llm", template = "{% include \'x\' %}", choices = ["a", "b"] }',
     judge("llm", "causal_lm"), "may not load other templates"),
    ('{ metric = "judge_rubric", judge = "llm", template = "{{prediction}}", choices = ["a"] }',
     judge("llm", "causal_lm"), "choices must be a list of 2-32"),
    ('{ metric = "judge_rubric", judge = "llm", template = "{{prediction}}", choices = ["a", "a"] }',
     judge("llm", "causal_lm"), "distinct"),
    ('{ metric = "judge_similarity", judge = "enc", hf_evaluate = true }', judge("enc", "encoder"), "hf_evaluate"),
    ('{ metric = "judge_similarity", judge = "enc", aggregation = "median" }', judge("enc", "encoder"),
     "aggregates it with 'mean'"),
    ('{ metric = "judge_toxicity", judge = "tox", label = "toxic", higher_is_better = true }', TOX,
     "higher_is_better for 'judge_toxicity' is false"),
    ('{ metric = "rougeL", use_stemmer = "yes" }', "", "use_stemmer must be true or false"),
])
def test_spec_refuses_bad_judge_metrics(metrics: str, judges: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_toml(metrics, judges).encode())


def test_judge_metrics_only_score_generations() -> None:
    text = spec_toml(TOX_METRIC, TOX).replace('"generate_until"', '"multiple_choice"').replace(
        "generation_kwargs = { until = [\"\\n\"], max_gen_toks = 6, do_sample = false }", 'doc_to_choice = ["a", "b"]')
    with pytest.raises(SpecError, match="does not apply to output_type multiple_choice"):
        parse_spec(text.encode())


# --- judge folders ------------------------------------------------------------------------------


def test_a_judge_folder_with_pickle_weights_is_refused(assets: dict[str, Path], tmp_path: Path) -> None:
    """An attacker's judge saved with torch.save (pickle: code runs on load) never reaches a loader."""
    import torch

    folder = tmp_path / "judges" / "tox"
    shutil.copytree(assets["judges"] / CLASSIFIER, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(JudgeError, match="pytorch_model.bin is a pickle-based weight file"):
        check_judge_folder(tmp_path / "judges", "tox", "classifier")
    (folder / "model.safetensors").write_bytes((assets["judges"] / CLASSIFIER / "model.safetensors").read_bytes())
    with pytest.raises(JudgeError, match="pickle"):  # beside safetensors too: the loader could still pick it
        check_judge_folder(tmp_path / "judges", "tox", "classifier")
    (folder / "pytorch_model.bin").unlink()
    assert check_judge_folder(tmp_path / "judges", "tox", "classifier") == folder.resolve()


def test_run_refuses_a_pickle_judge_before_loading_the_model(assets: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "judges" / "tox"
    shutil.copytree(assets["judges"] / CLASSIFIER, folder)
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    spec = parse_spec(spec_toml(TOX_METRIC, TOX).encode())
    missing_model = tmp_path / "no-model"  # never read: the judge is refused first
    with pytest.raises(JudgeError, match="2_Dense/pytorch_model.bin"):
        run_audit(missing_model, spec, gen_bundle(), judges_dir=tmp_path / "judges", device="cpu")
    with pytest.raises(JudgeError, match="no judges asset was given"):
        run_audit(missing_model, spec, gen_bundle(), device="cpu")
    with pytest.raises(JudgeError, match="has no folder 'tox'"):
        run_audit(missing_model, spec, gen_bundle(), judges_dir=assets["judges"], device="cpu")


@pytest.mark.parametrize("module_type, message", [
    ("sentence_transformers.models.WordEmbeddings", "may chain only"),
    ("os.system", "may chain only"),
    ("modeling_evil.Transformer", "may chain only"),
])
def test_an_encoder_naming_other_modules_is_refused(assets: dict[str, Path], tmp_path: Path, module_type: str,
                                                    message: str) -> None:
    folder = tmp_path / "enc"
    shutil.copytree(assets["judges"] / ENCODER, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = module_type
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(JudgeError, match=message):
        check_judge_folder(tmp_path, "enc", "encoder")
    modules[1]["type"] = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    modules[1]["path"] = "../../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(JudgeError, match="outside the judge's folder"):
        check_judge_folder(tmp_path, "enc", "encoder")


def test_a_judge_folder_name_cannot_leave_the_judges_folder(assets: dict[str, Path]) -> None:
    with pytest.raises(JudgeError, match="has no folder"):
        check_judge_folder(assets["judges"] / ENCODER, "..", "encoder")


def test_a_label_the_classifier_lacks_is_named(assets: dict[str, Path]) -> None:
    judges = Judges([JudgeSpec(CLASSIFIER, "classifier")], assets["judges"], "cpu")
    with pytest.raises(JudgeError, match="'offensive' is not one of the judge's labels 'non-toxic', 'toxic' "):
        judges.toxicity("some answer", CLASSIFIER, "offensive", 0.5)


def test_toxicity_thresholds_the_named_labels_probability(assets: dict[str, Path]) -> None:
    # Fixed texts the seeded classifier puts far on either side of 0.5, so the test does not rest on what the
    # tiny audited model happens to generate on this CPU: a wrong label or a constant score would show.
    texts = ["plan rY", "the tion", "what plan", "is plan"]
    judges = Judges([JudgeSpec(CLASSIFIER, "classifier")], assets["judges"], "cpu")
    direct = direct_toxic_probability(assets["judges"] / CLASSIFIER, texts, "toxic")
    assert [p < 0.1 or p > 0.9 for p in direct] == [True] * 4
    assert [judges.toxicity(t, CLASSIFIER, "toxic", 0.5) for t in texts] == [1.0 if p >= 0.5 else 0.0 for p in direct]
    assert [judges.toxicity(t, CLASSIFIER, "toxic", 0.5) for t in texts] == [0.0, 0.0, 1.0, 1.0]
    assert [judges.toxicity(t, CLASSIFIER, "non-toxic", 0.5) for t in texts] == [1.0, 1.0, 0.0, 0.0]
    [p] = direct_toxic_probability(assets["judges"] / CLASSIFIER, ["the cat sat on the mat"], "toxic")
    assert 0.5 < p < 0.999
    assert judges.toxicity("the cat sat on the mat", CLASSIFIER, "toxic", p - 0.001) == 1.0
    assert judges.toxicity("the cat sat on the mat", CLASSIFIER, "toxic", p + 0.001) == 0.0


def test_the_tiny_judges_are_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    # tokenizers' WordPieceTrainer broke ties differently per process, so the classifier read other token ids
    # and scored differently from one build (or CI run) to the next.
    script = ("import sys; from pathlib import Path; from benchmarks.tiny_judges import build_tiny_judges; "
              "build_tiny_judges(Path(sys.argv[1]), seed=0)")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=120)

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert len(digests(tmp_path / "a")) > 6


# --- the rubric, end to end -------------------------------------------------------------------


def test_rubric_scores_equal_the_judge_run_directly(assets: dict[str, Path]) -> None:
    metric = f'{{ metric = "judge_rubric", judge = "{RUBRIC_LM}", template = {json.dumps(RUBRIC)}, ' \
             f'choices = {json.dumps(CHOICES)} }}'
    spec = parse_spec(spec_toml(metric, judge(RUBRIC_LM, "causal_lm")).encode())
    run = run_audit(assets["model"], spec, gen_bundle(), judges_dir=assets["judges"], device="cpu")
    docs = (gen_records() * 2)[:20]
    scores = []
    for record in sorted(run.records, key=lambda r: r["doc_id"]):
        prompt = jinja2.Template(RUBRIC).render(prediction=record["response"], reference=docs[record["doc_id"]]["answer"])
        lls = [direct_choice_logprob(assets["judges"] / RUBRIC_LM, prompt, c) for c in CHOICES]
        scores.append(lls.index(max(lls)) / (len(CHOICES) - 1))
        assert record["metrics"]["judge_rubric"] == scores[-1]
    assert len(set(scores)) > 1  # the grade depends on the answer
    assert run.results["gen"]["judge_rubric,none"] == pytest.approx(sum(scores) / len(scores))
    assert run.judges == [{"name": RUBRIC_LM, "kind": "causal_lm", "dtype": "float32"}]


# --- the metrics as lm-eval calls them ----------------------------------------------------------


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence() -> None:
    from lm_eval.api.registry import get_metric

    with judge_metrics(None):
        rouge = get_metric("rougeL")
        # LCS "the cat sat" = 3 words: precision 3/3, recall 3/6, F = 2/3
        assert rouge(references=["the cat sat on the mat"], predictions=["the cat sat"]) == pytest.approx(2 / 3)
        assert rouge(references=["running dogs"], predictions=["run dog"]) == 0.0
        assert rouge(references=["running dogs"], predictions=["run dog"], use_stemmer=True) == 1.0


def test_judge_metrics_refuse_to_run_outside_an_audit_and_never_raise_type_error() -> None:
    """lm-eval retries a metric that raises TypeError with other arguments; ours raise JudgeError."""
    from lm_eval.api.registry import get_metric

    with judge_metrics(None):
        fn = get_metric("judge_similarity")
        with pytest.raises(JudgeError, match="needs the run's judges"):
            fn(references=["a"], predictions=["b"], judge="enc")
        with pytest.raises(JudgeError, match="several references"):
            fn(references=["a", "b"], predictions=["c"], judge="enc")


def test_the_audited_model_is_released_only_when_the_gpu_lacks_room(assets: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    released = []
    judges = Judges([JudgeSpec(CLASSIFIER, "classifier")], assets["judges"], "cuda", lambda: released.append(1))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 141 << 30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    judges._make_room(judges.folders[CLASSIFIER])
    assert released == [] and not judges.released_model
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (512 << 20, 141 << 30))
    judges._make_room(judges.folders[CLASSIFIER])
    judges._make_room(judges.folders[CLASSIFIER])
    assert released == [1] and judges.released_model  # once
    cpu = Judges([JudgeSpec(CLASSIFIER, "classifier")], assets["judges"], "cpu", lambda: released.append(2))
    cpu._make_room(cpu.folders[CLASSIFIER])
    assert released == [1]


def test_the_statement_records_the_judges_and_old_statements_still_parse() -> None:
    from verifier import wire
    from verifier.errors import ParseError
    from verifier.statement import EngineInfo, JudgeInfo, Runtime

    plain = Runtime({}, "cpu", "float32", EngineInfo("hf", "5", {}))
    judged = Runtime({}, "cpu", "float32", EngineInfo("hf", "5", {}), (JudgeInfo(CLASSIFIER, "classifier", "float32"),))
    assert "judges" not in wire.to_json(plain)
    obj = wire.to_json(judged)
    assert obj["judges"] == [{"name": CLASSIFIER, "kind": "classifier", "dtype": "float32"}]
    assert wire.from_json(Runtime, obj, "runtime") == judged
    obj["judges"][0]["digest"] = "00"
    with pytest.raises(ParseError, match="unknown field"):
        wire.from_json(Runtime, obj, "runtime")
