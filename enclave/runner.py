"""Run an audit spec with lm-eval inside the enclave, on decrypted bytes held in memory.

The numbers are stock lm-eval's: the model is loaded with transformers, wrapped in lm-eval's own
`HFLM`, and `lm_eval.simple_evaluate` runs the spec's task configs. Only the data source differs
from `lm_eval --include_path` with `spec_to_lm_eval_yaml`: each task gets a `custom_dataset` that
builds a `datasets.Dataset` in memory from the auditor's JSONL bytes, because `dataset_path: json`
would leave an Arrow copy of the plaintext in the datasets cache.

Hugging Face libraries read their offline switches once, at import, so this module sets them
before anything imports them and imports torch, transformers, datasets and lm-eval lazily.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

from benchmarks.dataset import DatasetError, parse_jsonl  # noqa: E402,F401 (run_audit raises DatasetError)
from benchmarks.spec import AuditSpec, lm_eval_task_config  # noqa: E402
from verifier.merkle import root_hash  # noqa: E402
from verifier.models import canonical_json  # noqa: E402

ProgressFn = Callable[[str, float], None]

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
    dtype: str
    started_at: str
    finished_at: str
    samples_root: str
    records: list[dict[str, Any]]


def run_audit(model_dir: Path, spec: AuditSpec, datasets: dict[str, bytes], *,
              progress: ProgressFn | None = None, device: str | None = None) -> AuditRun:
    """Evaluate the model in `model_dir` on the spec's tasks; `datasets` maps bundle file -> bytes.

    One run per process at a time: a run swaps lm-eval's template environment and log level.
    `progress(stage, fraction)` gets the phase (e.g. "loglikelihood 120/576") and the overall
    fraction of model requests answered."""
    report = progress or (lambda stage, fraction: None)
    started = _now()
    rows = {name: parse_jsonl(name, datasets) for name in spec.datasets}  # fail before loading a model
    _enforce_offline()

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    report("loading model", 0.0)
    model, tokenizer = _load_model(Path(model_dir), device, dtype)

    import lm_eval
    from lm_eval.tasks import TaskManager

    phases = list(dict.fromkeys(_REQUEST_TYPE[t.config["output_type"]] for t in spec.tasks))
    lm = _progress_lm(model, tokenizer, spec.batch_size, phases, report)
    task_dicts = []
    for task in spec.tasks:
        cfg = lm_eval_task_config(task)
        cfg["custom_dataset"] = InMemoryDataset({split: (name, rows[name]) for split, name in task.files.items()})
        task_dicts.append(cfg)
    report("evaluating", 0.0)
    with _quiet_lm_eval(), _sandboxed_templates():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=task_dicts, task_manager=TaskManager(include_defaults=False),
            batch_size=spec.batch_size, log_samples=True,
            random_seed=spec.seed, numpy_random_seed=spec.seed, torch_random_seed=spec.seed,
            fewshot_random_seed=spec.seed,
        )
    records = [rec for task in spec.tasks for rec in _records(task.name, out["samples"][task.name])]
    report("done", 1.0)
    return AuditRun(
        results={t: _json_safe(out["results"][t]) for t in spec.task_names},
        n_samples={t: _json_safe(out["n-samples"][t]) for t in spec.task_names},
        configs={t: _json_safe(out["configs"][t]) for t in spec.task_names},
        versions={**{p: version(p) for p in VERSIONED_PACKAGES}, "python": platform.python_version()},
        seeds={"random_seed": spec.seed, "numpy_seed": spec.seed, "torch_seed": spec.seed,
               "fewshot_seed": spec.seed},
        device=str(lm.device),
        dtype=str(dtype).removeprefix("torch."),
        started_at=started,
        finished_at=_now(),
        samples_root=root_hash([canonical_json(r) for r in records]).hex(),
        records=records,
    )


class InMemoryDataset:
    """lm-eval `custom_dataset`: the task's splits as an in-memory `datasets.DatasetDict`.

    A class rather than a closure or partial because lm-eval writes `str(custom_dataset)` into the
    resolved config (which goes into the report): the repr must name the files, never the rows.
    """

    def __init__(self, splits: dict[str, tuple[str, list[dict[str, Any]]]]) -> None:
        self._splits = splits  # split -> (bundle file, rows)

    def __call__(self, **_lm_eval_metadata: Any) -> Any:
        from datasets import Dataset, DatasetDict

        out = {}
        for split, (_, rows) in self._splits.items():
            columns = dict.fromkeys(k for row in rows for k in row)  # every key, as the json loader does
            out[split] = Dataset.from_dict({col: [row.get(col) for row in rows] for col in columns})
        return DatasetDict(out)

    def __repr__(self) -> str:
        files = ", ".join(f"{split}: {name!r}" for split, (name, _) in self._splits.items())
        return f"in-memory dataset ({files})"


def _enforce_offline() -> None:
    """Make sure no Hugging Face library can reach the network during the run.

    The environment is set when this module is imported; a library imported earlier by someone
    else has already read it, so its module-level switch is set directly as well.
    """
    os.environ.update(OFFLINE_ENV)
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
                          ("evaluate.config", ("HF_EVALUATE_OFFLINE",))):
        mod = sys.modules.get(module)
        for attr in attrs:
            if mod is not None and hasattr(mod, attr):
                setattr(mod, attr, True)


def _load_model(model_dir: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """Load weights from safetensors only (a pickle could run code) and never the folder's own code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **common)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True, device_map=device,
                                                 **common)
    return model.eval(), tokenizer


def _progress_lm(model: Any, tokenizer: Any, batch_size: int, phases: list[str], report: ProgressFn) -> Any:
    """lm-eval's HFLM, reporting how many of each phase's requests are done.

    lm-eval calls the LM once per request type with every task's requests, and calls the LM's cache
    hook once per answered request; counting those calls moves the progress bar.
    """
    from lm_eval.api.model import CacheHook
    from lm_eval.models.huggingface import HFLM

    class Counter(CacheHook):
        def __init__(self) -> None:
            super().__init__(None)
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
                index = phases.index(self.phase) if self.phase in phases else 0
                report(f"{self.phase} {self.done}/{self.total}", (index + share) / len(phases))

    class ProgressHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
            self.cache_hook.start("loglikelihood", len(requests))
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
            self.cache_hook.start("loglikelihood_rolling", len(requests))
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):  # noqa: ANN001
            self.cache_hook.start("generate_until", len(requests))
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    lm = ProgressHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.set_cache_hook(Counter())
    return lm


@contextlib.contextmanager
def _sandboxed_templates() -> Iterator[None]:
    """Render the spec's Jinja templates in Jinja's sandbox instead of lm-eval's plain environment.

    The spec check refuses templates that reach for Python internals; the sandbox also stops
    attempts that go through data, e.g. `{{ doc[key] }}` with key = "__class__" in the dataset.
    """
    import lm_eval.utils as lm_utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    plain = lm_utils.env
    sandboxed = ImmutableSandboxedEnvironment(loader=plain.loader, undefined=plain.undefined,
                                              keep_trailing_newline=plain.keep_trailing_newline)
    sandboxed.filters.update(plain.filters)
    lm_utils.env = sandboxed
    try:
        yield
    finally:
        lm_utils.env = plain


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """Drop lm-eval's warnings during the run: some quote whole documents, which are the auditor's secret."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _records(task: str, samples: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Per-sample records in lm-eval's order (per filter, documents in dataset order)."""
    for s in samples:
        resps = _json_safe(s["filtered_resps"])
        yield {
            "task": task,
            "doc_id": int(s["doc_id"]),
            "filter": s["filter"],
            "doc_hash": _sha256(canonical_json(_json_safe(s["doc"]))),
            "prompt_hash": _sha256(canonical_json(_json_safe(s["arguments"]))),
            "response": resps[0] if len(resps) == 1 else resps,
            "metrics": {m: _json_safe(s[m]) for m in s["metrics"]},
        }


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
