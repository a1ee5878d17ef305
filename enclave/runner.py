"""Run an audit spec with lm-eval inside the enclave, on decrypted bytes held in memory.

The numbers are stock lm-eval's: the spec's `[engine]` names lm-eval's own model class (`HFLM` for
"hf", `VLLM` for "vllm"), which loads the plaintext model folder with the spec's settings, and
`lm_eval.simple_evaluate` runs the spec's task configs. The statement records the engine, its
version and its settings as applied (the dtype loaded, the batch sizes lm-eval found). Only the data source differs
from `lm_eval --include_path` with `spec_to_lm_eval_yaml`: each task gets a `custom_dataset` that
builds a `datasets.Dataset` in memory from the auditor's JSONL bytes, because `dataset_path: json`
would leave an Arrow copy of the plaintext in the datasets cache. Functions a built-in task names
(`{ lm_eval_function = "dir/file.py:name" }`, see benchmarks.lm_eval_functions) are imported from
the installed lm-eval package and nowhere else.

Settings that change the whole process (offline switches, lm-eval's template environment and log
level, no process pool for bootstrapped stderr) are made by `run_audit` itself, not at import, and
belong to the process that runs it: in the enclave that is one child process per job
(`enclave.jobs`), never the threaded server. Torch, transformers, datasets and lm-eval are imported
lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks.dataset import DatasetError, arrow_dataset, parse_jsonl, record_line
from benchmarks.judges import JudgeError, Judges, judge_metrics, weight_index_escapes
from benchmarks.lm_eval_functions import resolve_functions
from benchmarks.spec import AuditSpec, EngineSpec, lm_eval_task_config
from benchmarks.templates import TemplateUndefined, lm_eval_environment
from verifier.merkle import root_hash
from verifier.errors import UnusableInput
from verifier.models import canonical_json

__all__ = ["AuditRun", "DatasetError", "EngineUnavailable", "InMemoryDataset", "JudgeError", "ProgressFn",
           "TemplateUndefined", "engine_problem", "run_audit"]

# Environment of a run. Hugging Face libraries read their offline switches when imported (and
# `_enforce_offline` covers those imported earlier); lm-eval reads DISABLE_MULTIPROC when it
# bootstraps a stderr (bleu, chrf, ter, f1, mcc, perplexity...): set, it draws the same seeded
# resamples in a loop instead of forking a multiprocessing pool.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
RUN_ENV = {**OFFLINE_ENV, "DISABLE_MULTIPROC": "1"}


ProgressFn = Callable[[str, float, str], None]  # stage, fraction of the stage done, detail

# lm-eval request type each output type produces; the LM runs one phase per request type.
_REQUEST_TYPE = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
                 "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate_until"}
VERSIONED_PACKAGES = ("lm_eval", "transformers", "torch", "datasets", "tokenizers")


@dataclass
class AuditRun:
    """What one run produced. `records` are per-sample and confidential: the caller decides
    whether they leave the enclave; `samples_root` (hex) commits to them either way."""

    results: dict[str, dict[str, Any]]  # lm-eval's aggregates per task, e.g. {"acc,none": 0.25, ...}
    n_samples: dict[str, dict[str, int]]  # lm-eval's "n-samples": {"original": n, "effective": n}
    configs: dict[str, dict[str, Any]]  # task configs as lm-eval resolved them
    versions: dict[str, str]
    seeds: dict[str, int]
    device: str
    dtype: str  # as loaded (the spec's [engine] dtype "auto" is the checkpoint's own)
    engine: dict[str, Any]  # {"name", "version", "settings"}: the statement's runtime.engine
    started_at: str
    finished_at: str
    samples_root: str
    records: list[dict[str, Any]]
    judges: list[dict[str, str]] = field(default_factory=list)  # {"name", "kind", "dtype"}: runtime.judges


def run_audit(model_dir: Path, spec: AuditSpec, datasets: dict[str, bytes], *,
              progress: ProgressFn | None = None, device: str | None = None,
              judges_dir: Path | None = None) -> AuditRun:
    """Evaluate the model in `model_dir` on the spec's tasks; `datasets` maps bundle file -> bytes;
    `judges_dir` holds the spec's judges, judge `j` in `judges_dir / j.name`.

    One run per process at a time: a run sets RUN_ENV and swaps lm-eval's template environment and
    log level, so the enclave calls it in a child process per job (`enclave.jobs.run_job`).
    `progress(stage, fraction)` gets the phase (e.g. "loglikelihood 120/576") and the overall
    fraction of model requests answered. Raises `EngineUnavailable` before reading anything when
    this image lacks the spec's engine, and `JudgeError` before loading the model when a judge
    folder of `judges_dir` (one per [[judge]] of the spec) is missing or unsafe to load. The judge
    metrics (benchmarks.judges) load each judge once, on this run's device, after the model's
    generations; on CUDA the audited model's weights are released first if the judge needs the room."""
    report = progress or (lambda stage, fraction, message: None)
    started = _now()
    problem = engine_problem(spec.engine)
    if problem is not None:
        raise EngineUnavailable(problem)
    _enforce_offline()
    tables = _load_datasets(spec, datasets)  # fail before loading a model

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    applied: list[tuple[str, str, dict[str, Any]]] = []  # filled before the model's weights are released

    def release_model() -> None:
        applied.append(_applied(lm, spec.engine))
        _release_weights(lm, spec.engine)

    judges = Judges(spec.judges, judges_dir, device, release_model)  # checks the folders before any loading
    if spec.chat_template and not _has_chat_template(Path(model_dir)):
        raise UnusableInput("the spec asks for chat_template = true, but the model folder has no chat template (in "
                            "tokenizer_config.json or chat_template.jinja): audit it without chat_template, or "
                            "upload the model with its chat template")
    if (escape := weight_index_escapes(Path(model_dir))) is not None:  # the index would load another asset's weights
        raise UnusableInput(f"the model folder: {escape}; a checkpoint's weight index may name only its own files")
    report("loading model", 0.0, "")
    import lm_eval
    from lm_eval.tasks import TaskManager

    phases = list(dict.fromkeys(_REQUEST_TYPE[t.config["output_type"]] for t in spec.tasks))
    task_dicts = []
    for task in spec.tasks:
        cfg = resolve_functions(lm_eval_task_config(task))  # lm-eval's own task functions, by reference
        cfg["custom_dataset"] = InMemoryDataset({split: (name, tables[name]) for split, name in task.files.items()})
        task_dicts.append(cfg)
    report("evaluating", 0.0, "building requests")
    try:
        with _quiet_lm_eval(), _sandboxed_templates(spec), judge_metrics(judges):
            lm = _engine_lm(Path(model_dir), spec, device, _Counter(phases, report))
            out = lm_eval.simple_evaluate(
                model=lm, tasks=task_dicts, task_manager=TaskManager(include_defaults=False),
                batch_size=spec.engine.batch_size, log_samples=True,
                random_seed=spec.seed, numpy_random_seed=spec.seed, torch_random_seed=spec.seed,
                fewshot_random_seed=spec.seed, apply_chat_template=spec.chat_template,
                fewshot_as_multiturn=spec.fewshot_as_multiturn, system_instruction=spec.system_instruction or None,
            )
    except TemplateUndefined as exc:
        raise TemplateUndefined(_document_at(exc, spec, datasets), exc.reads, exc.owners, {}) from None
    records = [rec for task in spec.tasks for rec in _records(task.name, out["samples"][task.name])]
    report("done", 1.0, "")
    applied_device, applied_dtype, engine = applied[0] if applied else _applied(lm, spec.engine)
    engine_versions = {"vllm": version("vllm")} if spec.engine.name == "vllm" else {}
    return AuditRun(
        results={t: _json_safe(out["results"][t]) for t in spec.task_names},
        n_samples={t: _json_safe(out["n-samples"][t]) for t in spec.task_names},
        configs={t: _json_safe(out["configs"][t]) for t in spec.task_names},
        versions={**{p: version(p) for p in VERSIONED_PACKAGES}, **engine_versions,
                  "python": platform.python_version()},
        seeds={"random_seed": spec.seed, "numpy_seed": spec.seed, "torch_seed": spec.seed,
               "fewshot_seed": spec.seed},
        device=applied_device,
        dtype=applied_dtype,
        engine=engine,
        started_at=started,
        finished_at=_now(),
        samples_root=root_hash([canonical_json(r) for r in records]).hex(),
        records=records,
        judges=[asdict(j) for j in judges.info()],
    )


class EngineUnavailable(UnusableInput):
    """The spec names an engine this enclave image does not carry."""


def engine_problem(engine: EngineSpec) -> str | None:
    """Why this enclave image cannot run `engine`, or None. Cheap (it imports nothing), so that the
    enclave can say so before anyone approves the spec, not after a job has started."""
    if engine.name == "vllm" and find_spec("vllm") is None:
        return ('the spec asks for [engine] name = "vllm", but vLLM is not installed in this enclave image (only '
                "the GPU image carries it, see docs/DEPLOY.md): run the audit on an enclave built from the GPU "
                'image with vLLM, or set [engine] name = "hf" in the spec and upload it again')
    if engine.name == "vllm" and engine.data_parallel_size > 1 and find_spec("ray") is None:
        return ('the spec asks for [engine] data_parallel_size > 1, which lm-eval runs through Ray, and Ray is not '
                "installed in this enclave image: set data_parallel_size = 1 (tensor_parallel_size still splits "
                "the model over GPUs) and upload the spec again")
    return None


def _engine_lm(model_dir: Path, spec: AuditSpec, device: str, counter: Any) -> Any:
    """lm-eval's own model class for the spec's engine, loading the plaintext folder itself.

    Weights come from safetensors only (a pickle could run code) and never with the folder's own
    code. `parallelize` may place layers on GPUs only: no disk offload folder is given, so a model
    that does not fit is an error, never plaintext weights written to disk."""
    engine = spec.engine
    common = {"pretrained": str(model_dir), "dtype": engine.dtype, "batch_size": engine.batch_size,
              "trust_remote_code": False}
    if engine.name == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        lm = type("ProgressVLLM", (_ProgressLM, VLLM), {})(
            **common, tensor_parallel_size=engine.tensor_parallel_size,
            data_parallel_size=engine.data_parallel_size, gpu_memory_utilization=engine.gpu_memory_utilization,
            max_model_len=engine.max_model_len, seed=spec.seed, load_format="safetensors")
    else:
        from lm_eval.models.huggingface import HFLM

        class ProgressHFLM(_ProgressLM, HFLM):
            def _detect_batch_size(self, requests: Any = None, pos: int = 0) -> int:
                size = super()._detect_batch_size(requests, pos)
                self.detected_batch_sizes.append(int(size))
                return size

        lm = ProgressHFLM(**common, device=device, parallelize=engine.parallelize,
                          max_batch_size=engine.max_batch_size, offload_folder=None,
                          use_safetensors=True, local_files_only=True)
        lm.detected_batch_sizes = []
    lm.set_cache_hook(counter)
    return lm


def _release_weights(lm: Any, engine: EngineSpec) -> None:
    """Free the audited model's GPU memory for the judges once its generations are done: hf's
    weights move to the meta device (lm-eval reads only their count and dtype afterwards). vLLM
    keeps the share of the GPU that `gpu_memory_utilization` reserved; a spec with judges leaves
    them room by lowering it."""
    if engine.name == "hf":
        lm.model.to("meta")


def _applied(lm: Any, engine: EngineSpec) -> tuple[str, str, dict[str, Any]]:
    """Device, dtype and the statement's `runtime.engine`, as the engine actually applied them."""
    settings = engine.settings()
    if engine.name == "vllm":
        config = lm.model.llm_engine.model_config if engine.data_parallel_size == 1 else None
        dtype = str(config.dtype) if config is not None else engine.dtype
        settings["max_model_len"] = lm.max_length
        return "cuda", dtype.removeprefix("torch."), {"name": "vllm", "version": version("vllm"),
                                                      "settings": settings}
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    if engine.batch_size == "auto":
        settings["detected_batch_sizes"] = lm.detected_batch_sizes
    device_map = getattr(lm.model, "hf_device_map", None)
    if engine.parallelize and device_map:
        settings["devices"] = sorted({str(d) for d in device_map.values()})
    return str(lm.device), dtype, {"name": "hf", "version": version("transformers"), "settings": settings}


class InMemoryDataset:
    """lm-eval `custom_dataset`: the task's splits as an in-memory `datasets.DatasetDict`.

    A class rather than a closure or partial because lm-eval writes `str(custom_dataset)` into the
    resolved config (which goes into the report): the repr must name the files, never the rows.
    """

    def __init__(self, splits: dict[str, tuple[str, Any]]) -> None:
        self._splits = splits  # split -> (bundle file, its datasets.Dataset, shared by every task reading it)

    def __call__(self, **_lm_eval_metadata: Any) -> Any:
        from datasets import DatasetDict

        return DatasetDict({split: dataset for split, (_, dataset) in self._splits.items()})

    def __repr__(self) -> str:
        files = ", ".join(f"{split}: {name!r}" for split, (name, _) in self._splits.items())
        return f"in-memory dataset ({files})"


def _has_chat_template(model_dir: Path) -> bool:
    """Whether transformers will find a chat template for the folder's tokenizer: a `chat_template`
    in tokenizer_config.json, or the separate files newer versions save."""
    if any((model_dir / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _load_datasets(spec: AuditSpec, datasets: dict[str, bytes]) -> dict[str, Any]:
    """Each bundle file the spec reads as one in-memory `datasets.Dataset`, shared by every task
    that reads it: the job holds the JSONL bytes plus Arrow columns, at most 3x the bytes
    (tests/test_dataset.py measures it). Arrow allocates from the C library's heap, like Python,
    so the memory the rows free batch by batch (benchmarks.dataset.arrow_dataset) holds the
    columns; with Arrow's default mimalloc pool the two never share pages and a file cost twice as
    much resident memory. (lm-eval then keeps each document it scores as a dict, as it does in any
    run.)"""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    return {name: arrow_dataset(name, datasets) for name in spec.datasets}


def _enforce_offline() -> None:
    """Make sure no Hugging Face library can reach the network during the run, and that lm-eval
    bootstraps in this process.

    A library imported before the run (e.g. preloaded by the job server) has already read the
    environment, so its module-level switch is set directly as well.
    """
    os.environ.update(RUN_ENV)
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
                          ("evaluate.config", ("HF_EVALUATE_OFFLINE",))):
        mod = sys.modules.get(module)
        for attr in attrs:
            if mod is not None and hasattr(mod, attr):
                setattr(mod, attr, True)


def _load_model(model_dir: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """The serving gateway's loader (gateway/engine.py), with the audit's rules: weights from
    safetensors only (a pickle could run code) and never the folder's own code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **common)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True, device_map=device,
                                                 **common)
    return model.eval(), tokenizer


class _Counter:
    """lm-eval's cache hook, counting answered requests to move the progress bar.

    lm-eval calls the LM once per request type with every task's requests, and calls the LM's cache
    hook once per answered request (both HFLM and VLLM do)."""

    def __init__(self, phases: list[str], report: ProgressFn) -> None:
        self.phases, self.report = phases, report
        self.phase, self.total, self.done, self.last = "", 0, 0, -1

    def start(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.last = phase, total, 0, -1
        self.tick()

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        if attr == self.phase:
            self.done += 1
            self.tick()

    def tick(self) -> None:
        share = self.done / self.total if self.total else 1.0
        permille = int(1000 * share)
        if permille != self.last:
            self.last = permille
            index = self.phases.index(self.phase) + 1 if self.phase in self.phases else 1
            self.report(self.phase, share, f"{self.done}/{self.total} requests (phase {index} of {len(self.phases)})")


class _ProgressLM:
    """Mixed into lm-eval's model class: tells the counter which phase starts and how many requests it has."""

    cache_hook: _Counter

    def loglikelihood(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
        self.cache_hook.start("loglikelihood", len(requests))
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
        self.cache_hook.start("loglikelihood_rolling", len(requests))
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
        self.cache_hook.start("generate_until", len(requests))
        return super().generate_until(requests, disable_tqdm=disable_tqdm)


@contextlib.contextmanager
def _sandboxed_templates(spec: AuditSpec) -> Iterator[None]:
    """Render the spec's Jinja templates in the limited sandbox (benchmarks.templates) instead of
    lm-eval's plain environment. The sandbox also stops attempts that go through data, e.g.
    `{{ doc[key] }}` with key = "__class__" in the dataset; its limits raise `TemplateLimit` naming
    the task before a template builds a huge value."""
    import lm_eval.utils as lm_utils

    owners: dict[str, list[str]] = {}  # template source -> tasks whose config holds it
    for task in spec.tasks:
        for source in _strings(lm_eval_task_config(task)):
            owners.setdefault(source, []).append(task.name)
    plain = lm_utils.env
    lm_utils.env = lm_eval_environment(owners)
    try:
        yield
    finally:
        lm_utils.env = plain


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a task config (its templates among them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _document_at(exc: TemplateUndefined, spec: AuditSpec, datasets: dict[str, bytes]) -> str:
    """Where the document a template failed on is: task, data file, line and document index (as
    lm-eval's doc_id counts), found by comparing it with the rows parsed again (the run holds the
    data as Arrow columns, not rows); never its content."""
    doc = exc.document
    for task in spec.tasks:
        if exc.owners and task.name not in exc.owners:
            continue
        for name in dict.fromkeys(task.files.values()):
            for index, row in enumerate(parse_jsonl(name, datasets)):
                # lm-eval's documents have every column of the file; a row lacking one reads None there
                if all(doc.get(k) == v for k, v in row.items()) and all(v is None for k, v in doc.items()
                                                                          if k not in row):
                    return (f"task {task.name!r}, data file {name!r}, line {record_line(datasets[name], index)} "
                            f"(document {index})")
    tasks = ", ".join(repr(t) for t in exc.owners) or "of the spec"
    return f"task {tasks}, a document of its data files"


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """Keep lm-eval quiet during the run: drop its warnings (some quote whole documents, which are
    the auditor's secret) and skip its environment report, which runs git, pip, compilers and
    nvidia-smi as subprocesses (3 s per run, and git prints "fatal: not a git repository" outside
    a checkout) for fields of lm-eval's results that the runner never reads."""
    import lm_eval.evaluator as evaluator

    logger = logging.getLogger("lm_eval")
    level = logger.level
    probes = evaluator.get_git_commit_hash, evaluator.add_env_info
    logger.setLevel(logging.ERROR)
    evaluator.get_git_commit_hash, evaluator.add_env_info = (lambda: None), (lambda storage: None)
    try:
        yield
    finally:
        logger.setLevel(level)
        evaluator.get_git_commit_hash, evaluator.add_env_info = probes


def _records(task: str, samples: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Per-sample records in lm-eval's order (per filter, documents in dataset order).

    Each record is `{"task", "doc_id", "filter", "doc_hash", "prompt_hash", "response", "metrics"}`:
    `doc_hash` and `prompt_hash` are SHA-256 hex of the canonical JSON of the document and of the
    request arguments; `response` is the model's (filtered) output; `metrics` holds lm-eval's
    per-sample value for each metric. Most are numbers; lm-eval 0.4 keeps items for corpus metrics:
    `bleu`, `chrf`, `chrf++` and `ter` keep `[reference, prediction]` with the reference text of
    the dataset; `f1` and `mcc` keep `[gold index, predicted index]`, `brier_score`
    `[gold index, probabilities]`, `likelihood` `[gold index, log-likelihoods]`, the perplexities
    `[log-likelihood, words or bytes]`. A reference that holds text (a string, or a list of
    strings with multiple targets) is replaced by the SHA-256 hex of its canonical JSON, so the
    records carry no dataset text beyond the model's own output.
    """
    for s in samples:
        resps = _json_safe(s["filtered_resps"])
        yield {
            "task": task,
            "doc_id": int(s["doc_id"]),
            "filter": s["filter"],
            "doc_hash": _sha256(canonical_json(_json_safe(s["doc"]))),
            "prompt_hash": _sha256(canonical_json(_json_safe(s["arguments"]))),
            "response": resps[0] if len(resps) == 1 else resps,
            "metrics": {m: _hide_reference(_json_safe(s[m])) for m in s["metrics"]},
        }


def _hide_reference(value: Any) -> Any:
    """`[reference, prediction]` with a text reference -> `[sha256 hex of canonical JSON, prediction]`."""
    if isinstance(value, list) and len(value) == 2 and _holds_text(value[0]):
        return [_sha256(canonical_json(value[0])), value[1]]
    return value


def _holds_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and any(isinstance(v, str) for v in value))


def _json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays become numbers and lists, tuples become lists,
    non-finite floats become strings (canonical JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
