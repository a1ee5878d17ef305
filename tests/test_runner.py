"""The in-enclave runner on the tiny demo model: same numbers as stock lm_eval, nothing on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.demo_assets import (
    build_tiny_model,
    demo_spec_toml,
    gen_records,
    mc_records,
    write_demo_data,
)
from benchmarks.spec import parse_spec, spec_to_lm_eval_yaml
from enclave.runner import DatasetError, run_audit
from verifier.merkle import root_hash
from verifier.models import canonical_json

# The demo's two tasks plus two few-shot variants: examples from a separate file picked by lm-eval's
# first_n sampler, and examples drawn at random (seeded) from the evaluated split itself.
FEWSHOT_TASKS = """
[[task]]
name = "aa_fs_first_n"
dataset = "mc.jsonl"
fewshot_dataset = "mc_dev.jsonl"
fewshot_split = "dev"

[task.config]
output_type = "multiple_choice"
doc_to_text = "Question: {{question}}\\nAnswer:"
doc_to_choice = "{{choices}}"
doc_to_target = "answer"
num_fewshot = 3
fewshot_config = { sampler = "first_n" }
metric_list = [{ metric = "acc" }, { metric = "acc_norm" }]

[[task]]
name = "aa_fs_random"
dataset = "mc.jsonl"

[task.config]
output_type = "multiple_choice"
doc_to_text = "Question: {{question}}\\nAnswer:"
doc_to_choice = "{{choices}}"
doc_to_target = "{{answer}}"
num_fewshot = 2
metric_list = [{ metric = "acc_mutual_info" }, { metric = "exact_match" }]
"""
SPEC_TOML = demo_spec_toml() + FEWSHOT_TASKS
SPEC = parse_spec(SPEC_TOML.encode())
DEV = mc_records()[-5:]
MARKER = mc_records()[0]["question"].encode()  # a plaintext string of the auditor's data
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder as `make demo` lays it out: model/, the JSONL files, tasks/*.yaml."""
    root = tmp_path_factory.mktemp("demo")
    build_tiny_model(root / "model")
    write_demo_data(root)
    (root / "mc_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DEV))
    (root / "tasks").mkdir()
    for name, text in spec_to_lm_eval_yaml(SPEC, ".").items():
        (root / "tasks" / f"{name}.yaml").write_text(text)
    return root


def bundle(demo: Path) -> dict[str, bytes]:
    return {name: (demo / name).read_bytes() for name in SPEC.datasets}


@pytest.fixture(scope="module")
def first(demo: Path) -> dict[str, Any]:
    events: list[tuple[str, float, str]] = []
    run = run_audit(demo / "model", SPEC, bundle(demo), progress=lambda s, f, m: events.append((s, f, m)), device="cpu")
    return {"run": run, "events": events}


def test_results_and_records(first: dict[str, Any]):
    run = first["run"]
    assert set(run.results) == set(SPEC.task_names)
    for key in ("acc,none", "acc_stderr,none", "acc_norm,none"):
        assert 0.0 <= run.results["aa_demo_mc"][key] <= 1.0
    assert run.results["aa_demo_gen"]["exact_match,strip"] in [i / 18 for i in range(19)]
    assert run.n_samples["aa_demo_mc"] == {"original": 48, "effective": 48}
    assert run.n_samples["aa_demo_gen"] == {"original": 18, "effective": 18}
    assert (run.device, run.dtype) == ("cpu", "float32")
    assert run.seeds == dict.fromkeys(("random_seed", "numpy_seed", "torch_seed", "fewshot_seed"), 1234)
    assert set(run.versions) >= {"lm_eval", "transformers", "torch", "datasets"}
    assert run.started_at <= run.finished_at
    assert len(run.records) == 48 + 18 + 48 + 48
    rec = run.records[0]
    assert set(rec) == {"task", "doc_id", "filter", "doc_hash", "prompt_hash", "response", "metrics"}
    assert rec["doc_hash"] == hashlib.sha256(canonical_json(mc_records()[0])).hexdigest()
    assert len(rec["response"]) == 4 and set(rec["metrics"]) == {"acc", "acc_norm"}
    assert run.samples_root == root_hash([canonical_json(r) for r in run.records]).hex()
    json.dumps(run.configs, allow_nan=False)  # JSON-safe as the report needs


def test_progress_moves_to_the_end(first: dict[str, Any]):
    events = first["events"]
    stages = list(dict.fromkeys(s for s, _, _ in events))
    # A few named stages (one progress bar each), the counts in the message, never in the name.
    assert stages == ["loading model", "evaluating", "loglikelihood", "generate_until", "done"]
    for stage in stages:
        fractions = [f for s, f, _ in events if s == stage]
        assert fractions == sorted(fractions), stage
    messages = [m for _, _, m in events]
    assert "768/768 requests (phase 1 of 2)" in messages and "18/18 requests (phase 2 of 2)" in messages
    ll = [f for s, f, _ in events if s == "loglikelihood"]
    assert ll[0] == 0.0 and ll[-1] == 1.0 and len(set(ll)) > 10  # moves during the run, not only at the ends


SUBPROCESS_RUN = """
import sys
import time
from pathlib import Path
from benchmarks.spec import parse_spec
from enclave.runner import run_audit
demo, spec = Path(sys.argv[1]), parse_spec(Path(sys.argv[2]).read_bytes())
run = run_audit(demo / "model", spec, {n: (demo / n).read_bytes() for n in spec.datasets}, device="cpu")
print(run.samples_root)
"""


def test_no_plaintext_on_disk_or_in_logs(demo: Path, first: dict[str, Any], tmp_path: Path):
    """A whole run in a process whose HOME, TMPDIR, HF_HOME and working directory are empty folders
    leaves nothing there that holds the dataset (no Arrow cache copy, no temp file), and prints
    none of it."""
    homes = {k: tmp_path / k.lower() for k in ("HOME", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME")}
    for d in homes.values():
        d.mkdir()
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
           **{k: str(v) for k, v in homes.items()}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS_RUN, str(demo), str(tmp_path / "spec.toml")],
                          cwd=homes["TMPDIR"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().split()[-1] == first["run"].samples_root
    assert MARKER not in proc.stdout + proc.stderr
    written = [p for d in homes.values() for p in d.rglob("*") if p.is_file()]
    assert not [p for p in written if MARKER in p.read_bytes()], written
    assert not [p for p in written if "datasets" in p.parts], written


def test_public_parts_do_not_quote_the_data(first: dict[str, Any]):
    run = first["run"]
    public = canonical_json({"results": run.results, "configs": run.configs, "records": run.records})
    assert MARKER not in public
    assert run.configs["aa_demo_mc"]["custom_dataset"] == "in-memory dataset (test: 'mc.jsonl')"


def test_offline_switches_are_on(first: dict[str, Any]):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_same_inputs_same_root_changed_data_other_root(demo: Path, first: dict[str, Any]):
    again = run_audit(demo / "model", SPEC, bundle(demo), device="cpu")
    assert again.samples_root == first["run"].samples_root
    assert again.records == first["run"].records
    assert again.results == first["run"].results
    mc_only = parse_spec("[[task]]".join(demo_spec_toml().split("[[task]]")[:2]).encode())
    data = bundle(demo)
    rows = [json.loads(line) for line in data["mc.jsonl"].splitlines()]
    rows[5]["answer"] = (rows[5]["answer"] + 1) % 4
    data["mc.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    changed = run_audit(demo / "model", mc_only, data, device="cpu")
    before = [r for r in first["run"].records if r["task"] == "aa_demo_mc"]
    assert [r["doc_id"] for r in changed.records] == [r["doc_id"] for r in before]
    diff = [a["doc_id"] for a, b in zip(changed.records, before) if a != b]
    assert diff == [5]
    assert changed.samples_root != root_hash([canonical_json(r) for r in before]).hex()


def stock_record(task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """The runner's record, rebuilt independently from stock lm_eval's --log_samples output
    (which stringifies loglikelihoods and nests the request arguments)."""
    args = [[a["arg_0"], a["arg_1"]] for a in sample["arguments"].values()]
    resps = sample["filtered_resps"]
    if resps and isinstance(resps[0], list):  # loglikelihood pairs: ["-6.19", "False"]
        resps = [[float(ll), greedy == "True"] for ll, greedy in resps]
    return {
        "task": task, "doc_id": sample["doc_id"], "filter": sample["filter"],
        "doc_hash": hashlib.sha256(canonical_json(sample["doc"])).hexdigest(),
        "prompt_hash": hashlib.sha256(canonical_json(args)).hexdigest(),
        "response": resps[0] if len(resps) == 1 else resps,
        "metrics": {m: sample[m] for m in sample["metrics"]},
    }


def test_stock_lm_eval_gives_identical_numbers(demo: Path, first: dict[str, Any], tmp_path: Path):
    """`lm_eval --model hf --model_args pretrained=model --include_path tasks` in the demo folder, on
    the plaintext files, gives the same aggregates and the same per-sample records (hence root)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", "pretrained=model", "--device", "cpu",
           "--include_path", "tasks", "--tasks", ",".join(SPEC.task_names), "--seed", str(SPEC.seed),
           "--batch_size", str(SPEC.batch_size), "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=demo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    stock = json.loads(results_file.read_text())
    run = first["run"]
    for task in SPEC.task_names:
        assert stock["results"][task] == run.results[task], task
        assert stock["n-samples"][task] == run.n_samples[task], task
    records = []
    for task in SPEC.task_names:
        (samples_file,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        records += [stock_record(task, json.loads(line)) for line in samples_file.read_text().splitlines()]
    assert records == run.records
    assert root_hash([canonical_json(r) for r in records]).hex() == run.samples_root


def test_template_sandbox_stops_data_driven_escape(demo: Path, tmp_path: Path):
    """A template that passes the static check but indexes with a dataset value reaching for Python
    internals; lm-eval's own (unsandboxed) Jinja would render `<class 'str'>`."""
    from jinja2.exceptions import SecurityError

    toml = demo_spec_toml().replace('doc_to_text = "Question: {{question}}\\nAnswer:"',
                                    'doc_to_text = "{{ question[key] }}"', 1)
    spec = parse_spec(toml.encode())
    rows = [{**r, "key": "__class__"} for r in mc_records()]
    data = {**bundle(demo), "mc.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()}
    with pytest.raises(SecurityError):
        run_audit(demo / "model", spec, data, device="cpu")


def test_dataset_errors_name_file_and_line_not_content(demo: Path):
    with pytest.raises(DatasetError, match="'gen.jsonl', which is not in the dataset bundle"):
        run_audit(demo / "model", SPEC, {"mc.jsonl": b'{"a": 1}\n'})
    secret = b'{"question": "TOP-SECRET-ITEM", "choices": ["a"], "answer": 0}\n{"question": "TOP-SECRET'
    with pytest.raises(DatasetError) as info:
        run_audit(demo / "model", SPEC, {"mc.jsonl": secret, "gen.jsonl": b'{"a": 1}\n'})
    assert "mc.jsonl: line 2: not JSON" in str(info.value)
    assert "TOP-SECRET" not in str(info.value)
    with pytest.raises(DatasetError, match="line 1: each line must be a JSON object"):
        run_audit(demo / "model", SPEC, {"mc.jsonl": b"[1, 2]\n", "gen.jsonl": b'{"a": 1}\n'})


def test_import_changes_no_environment_and_pulls_no_torch():
    """Importing the runner (as the job server's fork server does) leaves the process as it was:
    the run's settings belong to the process that runs it."""
    code = ("import os, sys\n"
            "before = dict(os.environ)\n"
            "import enclave.runner\n"
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'datasets', 'huggingface_hub') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert dict(os.environ) == before\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def render_all(template: str, doc: dict[str, Any]) -> str:
    """Render one template as lm-eval does during a run of a spec whose first task uses it."""
    import lm_eval.utils

    from enclave.runner import _sandboxed_templates

    toml = demo_spec_toml().replace('doc_to_text = "Question: {{question}}\\nAnswer:"',
                                    "doc_to_text = " + json.dumps(template), 1)
    with _sandboxed_templates(parse_spec(toml.encode())):
        return lm_eval.utils.apply_template(template, doc)


@pytest.mark.parametrize("template, message", [
    ("{{ 'x' * 10**10 }}", r"str \* 10000000000 would exceed 1048576 items"),
    ("{{ [1] * 10**7 }}", r"list \* 10000000 would exceed"),
    ("{{ 10 ** 1000000 }}", "an integer power would exceed 65536 bits"),  # Jinja: 2 ** 10 ** 9 is (2 ** 10) ** 9
    ("{% for i in range(10**9) %}{% endfor %}", "range of 1000000000 items exceeds 10000"),
    ("{{ question.ljust(10**10) }}", "a width argument exceeds 1048576"),
    ("{{ question|center(10**10) }}", "a width argument exceeds 1048576"),
    ("{% set s = question * 1000 %}{{ s + s }}", "the result of '\\+' has more than 1048576 items"),
    ("{% for i in range(10000) %}{{ question }}{% endfor %}", "a rendered prompt has more than 1048576 items"),
])
def test_template_limits_name_the_task(template: str, message: str):
    from benchmarks.templates import TemplateLimit

    started = time.monotonic()
    with pytest.raises(TemplateLimit, match="^task 'aa_demo_mc': " + message):
        render_all(template, {"question": "y" * 1000})
    assert time.monotonic() - started < 5


def test_templates_within_the_limits_render_as_before():
    doc = {"question": "Why?", "choices": ["a", "b"], "n": 10**12}
    template = "{{ question * 3 }} {{ choices + ['c'] }} {{ 2 ** 10 }} {{ n }} {{ '%d'|format(n) }}{% for i in range(3) %}{{ i }}{% endfor %}"
    assert render_all(template, doc) == "Why?Why?Why? ['a', 'b', 'c'] 1024 1000000000000 1000000000000012"
    filters = "{{ choices|join(', ') }} {{ choices|map('upper')|list }} {{ question|center(8) }}|{{ question|regex_replace('W', 'w') }}"
    assert render_all(filters, doc) == "a, b ['A', 'B']   Why?  |why?"


def test_bleu_bootstraps_without_a_process_pool_and_records_hash_references(demo: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    """lm-eval forks a multiprocessing pool to bootstrap a corpus metric's stderr unless told not
    to; the run must not (a fork inside the threaded server once deadlocked). Per-sample bleu items
    keep the model's prediction and only the hash of the dataset's reference."""
    import multiprocessing

    def no_pool(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("lm-eval started a process pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    gen_only = parse_spec(("[[task]]".join(demo_spec_toml().split("[[task]]")[::2])).replace(
        '  { metric = "exact_match",', '  { metric = "bleu" },\n  { metric = "ter" },\n  { metric = "exact_match",').encode())
    assert gen_only.task_names == ["aa_demo_gen"]
    run = run_audit(demo / "model", gen_only, bundle(demo), device="cpu")
    assert isinstance(run.results["aa_demo_gen"]["bleu_stderr,strip"], float)
    assert isinstance(run.results["aa_demo_gen"]["ter_stderr,strip"], float)
    answers = [row["answer"] for row in gen_records()]
    for rec in run.records:
        for metric in ("bleu", "ter"):
            assert rec["metrics"][metric] == [hashlib.sha256(canonical_json(answers[rec["doc_id"]])).hexdigest(),
                                              rec["response"]]


def test_documents_stay_out_of_logs(demo: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture):
    """lm-eval warns with the whole document when a label is out of range; that must not reach
    the enclave's logs, since the documents are the auditor's secret."""
    import logging

    mc_only = parse_spec("[[task]]".join(demo_spec_toml().split("[[task]]")[:2]).encode())
    rows = mc_records()
    rows[1] = {**rows[1], "question": "SECRET-QUESTION-7731", "answer": 9}  # doc 0 is lm-eval's probe
    data = {"mc.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()}
    with caplog.at_level(logging.DEBUG):
        run = run_audit(demo / "model", mc_only, data, device="cpu")
    assert run.records[1]["metrics"]["acc"] == 0.0
    out, err = capfd.readouterr()
    assert "SECRET-QUESTION-7731" not in caplog.text + out + err


def test_offline_even_when_hub_libraries_were_imported_first():
    """The environment switches are read at import; a process that imported huggingface_hub and
    datasets before the runner still ends up offline once a run starts."""
    code = ("import huggingface_hub, datasets\n"
            "assert not huggingface_hub.is_offline_mode()\n"
            "from enclave.runner import _enforce_offline\n"
            "_enforce_offline()\n"
            "assert huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE\n"
            "try:\n"
            "    huggingface_hub.HfApi().model_info('gpt2')\n"
            "except huggingface_hub.errors.OfflineModeIsEnabled:\n"
            "    pass\n"
            "else:\n"
            "    raise AssertionError('reached the hub')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
