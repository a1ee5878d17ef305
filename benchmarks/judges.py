"""Judge models and the vetted metrics that use them, registered with lm-eval.

Some audits score a generation with a second model: the share of answers a toxicity classifier
flags, the similarity of a summary to the reference by sentence embeddings, a grade from an LLM. The
auditor brings that model (its *judge*) as a sealed folder; the project brings the code. The metrics
here are registered with lm-eval as ordinary per-sample metrics aggregated by "mean", so lm-eval
still computes the aggregate, its stderr and the per-sample records; the spec only names a metric,
a `[[judge]]` and declarative options (`benchmarks.spec` checks them):

- `judge_toxicity` (classifier judge): 1.0 when the judge's probability for `label` (a name of its
  config's `id2label`) is at least `threshold` (default 0.5), else 0.0; lower is better. The
  probability is the softmax over the labels, or the label's sigmoid for a judge whose config says
  `problem_type = "multi_label_classification"`.
- `judge_similarity` (encoder judge, a sentence-transformers folder): the cosine of the judge's
  embeddings of the generation and of the reference (`doc_to_target`).
- `judge_rubric` (causal LM judge): the spec's Jinja `template`, rendered in the project's sandbox
  with `prediction` and `reference`, is the judge's prompt; of the spec's `choices`, ordered worst
  to best, the one the judge gives the highest log-likelihood as a continuation wins, and the score
  is its position mapped to [0, 1] (index / (number of choices - 1)). No free text is parsed.
- `rougeL` (no judge): ROUGE-L F-measure of generation against reference (Google's `rouge_score`,
  which lm-eval depends on; lm-eval 0.4.13 registers no ROUGE metric of its own).

Judges are loaded from `judges_dir/<name>`: weights from safetensors only (a folder holding a
pickle weight file is refused whole), local files only, never the folder's own code; an encoder
folder may only chain sentence-transformers' Transformer, Pooling, Dense and Normalize modules.
lm-eval calls metric functions in `process_results`, after every request of the run has been
answered, once per document; so each judge is loaded on first use, once per run, by the run's
`Judges` object, on the audited model's device, after the audited model has been released when the
device lacks room for both. Judge calls are per document (lm-eval's interface); a rubric's choices
are scored in one batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from verifier.errors import UnusableInput
from verifier.statement import JudgeInfo  # the statement's runtime.judges entry

# File suffixes of pickle-based weight formats (torch.save, joblib, numpy with pickles): loading one
# can run code, so a judge folder holding any of them is refused.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
# The sentence-transformers modules an encoder judge may chain (names as its modules.json writes them).
ENCODER_MODULES = frozenset({"Transformer", "Pooling", "Dense", "Normalize"})
RUBRIC_VARIABLES = frozenset({"prediction", "reference"})
# Metric name -> the judge kind it needs (None: no judge).
METRIC_JUDGE_KIND: dict[str, str | None] = {"judge_toxicity": "classifier", "judge_similarity": "encoder",
                                             "judge_rubric": "causal_lm", "rougeL": None}
_HEADROOM = 1.25  # weights plus activations, as a factor of the safetensors bytes
_HEADROOM_BYTES = 1 << 30

__all__ = ["JudgeError", "JudgeInfo", "Judges", "check_judge_folder", "judge_metrics", "register_metrics",
           "rubric_prompt", "weight_index_escapes"]


class JudgeError(UnusableInput):
    """A judge folder cannot be loaded or does not fit the spec's judge metric."""


def check_judge_folder(judges_dir: Path, name: str, kind: str) -> Path:
    """`judges_dir/name`, checked to be a loadable judge folder without reading any weight: a
    config, safetensors weights and no pickle file anywhere; for an encoder, a modules.json naming
    only the allowed modules. Cheap, so the runner checks every judge before loading the model."""
    root = Path(judges_dir).resolve()
    folder = (root / name).resolve()
    if folder.parent != root or not folder.is_dir():
        raise JudgeError(f"judge {name!r}: the judges asset has no folder {name!r} (each [[judge]] is a top-level "
                         "folder of the sealed judges folder, named as in the spec)")
    files = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    for p in files:
        if p.is_symlink() or not p.resolve().is_relative_to(folder):
            raise JudgeError(f"judge {name!r}: {p.relative_to(folder)} is a link; a judge folder holds plain files")
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise JudgeError(f"judge {name!r}: {p.relative_to(folder)} is a pickle-based weight file, which could "
                             "run code when loaded; save the judge with safetensors (save_pretrained(..., "
                             "safe_serialization=True)), delete the pickle files and seal the folder again")
    if escapes := weight_index_escapes(folder):
        raise JudgeError(f"judge {name!r}: {escapes}; a judge's weights are files of its own folder")
    if not any(p.suffix == ".safetensors" for p in files):
        raise JudgeError(f"judge {name!r}: no *.safetensors weights in its folder; save it with save_pretrained")
    if not (folder / "config.json").is_file():
        raise JudgeError(f"judge {name!r}: no config.json in its folder; save it with save_pretrained")
    if kind == "encoder":
        _check_encoder_modules(folder, name)
    return folder


def weight_index_escapes(folder: Path) -> str | None:
    """Why a sharded checkpoint in `folder` would read weights from elsewhere, or None. A
    `*.index.json` weight map names its shard files, and transformers opens each as
    `os.path.join(index folder, shard)`: `../x` or an absolute path would load another folder's
    weights (another asset on the same tmpfs) as if they were this one's."""
    folder = folder.resolve()
    for index in sorted(folder.rglob("*.index.json")):
        rel = index.relative_to(folder)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return f"{rel} is not a JSON weight index"
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return f"{rel} has a weight_map that is not a table of file names"
        for shard in set(weight_map.values()):
            target = (index.parent / shard).resolve()
            if not target.is_relative_to(folder):
                return f"{rel} names a weight file outside the folder ({shard[:80]!r})"
    return None


def _check_encoder_modules(folder: Path, name: str) -> None:
    """An encoder's modules.json may name only sentence-transformers' own Transformer, Pooling,
    Dense and Normalize, at paths inside the folder: other module classes load pickles or read files."""
    path = folder / "modules.json"
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JudgeError(f"judge {name!r}: an encoder judge is a sentence-transformers folder with a modules.json "
                         "(SentenceTransformer.save)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JudgeError(f"judge {name!r}: modules.json is not valid JSON") from None
    if not isinstance(modules, list) or not modules:
        raise JudgeError(f"judge {name!r}: modules.json must be a non-empty list of modules")
    for i, module in enumerate(modules):
        kind = module.get("type") if isinstance(module, dict) else None
        sub = module.get("path") if isinstance(module, dict) else None
        if (not isinstance(kind, str) or not kind.startswith("sentence_transformers.")
                or kind.rsplit(".", 1)[-1] not in ENCODER_MODULES):
            raise JudgeError(f"judge {name!r}: modules.json entry {i} has type {str(kind)[:80]!r}; an encoder judge "
                             f"may chain only sentence-transformers' {', '.join(sorted(ENCODER_MODULES))}")
        if not isinstance(sub, str) or not (folder / sub).resolve().is_relative_to(folder):
            raise JudgeError(f"judge {name!r}: modules.json entry {i} has a path outside the judge's folder")


class Judges:
    """The judges of one run, each loaded once, on first use, on `device`.

    `release` frees the audited model's weights; it is called (once) before a judge is loaded on a
    CUDA device that lacks room for it beside the audited model."""

    def __init__(self, judges: Any, judges_dir: Path | None, device: str,
                 release: Callable[[], None] | None = None) -> None:
        self.kinds: dict[str, str] = {j.name: j.kind for j in judges}
        if self.kinds and judges_dir is None:
            raise JudgeError("the spec names judges ([[judge]]) but no judges asset was given: seal the folder of "
                             "judge models (one subfolder per [[judge]] name) and upload it as the judges asset")
        self.folders = {n: check_judge_folder(judges_dir, n, k) for n, k in self.kinds.items()}  # type: ignore[arg-type]
        self.device, self._release = device, release
        self._loaded: dict[str, Any] = {}
        self.released_model = False

    def info(self) -> list[JudgeInfo]:
        return [JudgeInfo(n, k, self._dtype(n)) for n, k in self.kinds.items()]

    def _dtype(self, name: str) -> str:
        if name not in self._loaded:
            return ""
        model = self._loaded[name][0]
        return str(next(model.parameters()).dtype).removeprefix("torch.")

    def _get(self, name: str, kind: str, metric: str) -> Any:
        if self.kinds.get(name) != kind:  # the spec check guarantees this; kept for direct callers
            raise JudgeError(f"metric {metric}: judge {name!r} is not a [[judge]] of kind {kind} in the spec")
        if name not in self._loaded:
            self._make_room(self.folders[name])
            try:
                self._loaded[name] = _LOADERS[kind](self.folders[name], self.device)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                if "OutOfMemoryError" in type(exc).__name__:
                    raise JudgeError(f"judge {name!r} ({kind}) does not fit in the device's memory beside what the "
                                     "run holds: save it in a smaller dtype (bfloat16), or with engine vllm lower "
                                     "[engine] gpu_memory_utilization") from None
                raise JudgeError(f"judge {name!r} ({kind}) could not be loaded: {type(exc).__name__}; check that "
                                 "the folder is a complete Hugging Face save of that kind (config, tokenizer, "
                                 "safetensors weights)") from None
        return self._loaded[name]

    def _make_room(self, folder: Path) -> None:
        """Release the audited model first when the CUDA device lacks room for this judge."""
        if not self.device.startswith("cuda") or self._release is None or self.released_model:
            return
        import torch

        need = int(sum(p.stat().st_size for p in folder.rglob("*.safetensors")) * _HEADROOM) + _HEADROOM_BYTES
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        if free < need:
            self._release()
            self.released_model = True
            gc.collect()
            torch.cuda.empty_cache()

    # --- the scores (one document each) ---

    def toxicity(self, prediction: str, judge: str, label: str, threshold: float) -> float:
        model, tokenizer = self._get(judge, "classifier", "judge_toxicity")
        return 1.0 if classifier_probability(model, tokenizer, prediction, label, judge) >= threshold else 0.0

    def similarity(self, prediction: str, reference: str, judge: str) -> float:
        import torch

        encoder, _ = self._get(judge, "encoder", "judge_similarity")
        with torch.inference_mode():
            emb = encoder.encode([prediction, reference], convert_to_tensor=True, show_progress_bar=False,
                                 batch_size=2)
        return float(torch.nn.functional.cosine_similarity(emb[0:1].float(), emb[1:2].float()).item())

    def rubric(self, prediction: str, reference: str, judge: str, template: str, choices: list[str]) -> float:
        model, tokenizer = self._get(judge, "causal_lm", "judge_rubric")
        prompt = rubric_prompt(template, prediction, reference)
        scores = choice_loglikelihoods(model, tokenizer, prompt, choices, judge)
        best = max(range(len(choices)), key=lambda i: scores[i])  # the first on a tie
        return best / (len(choices) - 1)


def classifier_probability(model: Any, tokenizer: Any, text: str, label: str, judge: str) -> float:
    """The classifier's probability for `label` given `text` (truncated to the judge's input length)."""
    import torch

    ids = {n: i for i, n in model.config.id2label.items()}
    if label not in ids:
        raise JudgeError(f"judge {judge!r}: the spec's label {label!r} is not one of the judge's labels "
                         f"{', '.join(map(repr, ids))} (its config.json id2label)")
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=_max_length(model, tokenizer))
    with torch.inference_mode():
        logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits[0].float()
    if model.config.problem_type == "multi_label_classification":
        return float(torch.sigmoid(logits[ids[label]]).item())
    return float(torch.softmax(logits, dim=-1)[ids[label]].item())


def choice_loglikelihoods(model: Any, tokenizer: Any, prompt: str, choices: list[str], judge: str) -> list[float]:
    """Sum of the log-probabilities of each choice's tokens (the choice tokenized alone) after the
    prompt's tokens, all choices in one right-padded batch. A prompt too long for the judge keeps
    its last tokens, as lm-eval does."""
    import torch

    context = tokenizer(prompt).input_ids
    conts = [tokenizer(c, add_special_tokens=False).input_ids for c in choices]
    if not context or not all(conts):
        raise JudgeError(f"judge {judge!r}: the rubric prompt or a choice tokenizes to nothing")
    limit = _max_length(model, tokenizer)
    rows = [(context[-(limit - len(c)):] if len(context) + len(c) > limit else context, c) for c in conts]
    width = max(len(ctx) + len(c) for ctx, c in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ctx, c) in enumerate(rows):
        ids[i, :len(ctx) + len(c)] = torch.tensor(ctx + c)
        mask[i, :len(ctx) + len(c)] = 1
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids.to(model.device),
                                           attention_mask=mask.to(model.device)).logits.float(), dim=-1)
    out = []
    for i, (ctx, c) in enumerate(rows):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(c) - 1)
        out.append(float(logprobs[i, positions, torch.tensor(c)].sum().item()))
    return out


def rubric_prompt(template: str, prediction: str, reference: str) -> str:
    """The rubric template rendered in the project's sandbox (benchmarks.templates), strictly:
    a variable other than `prediction` and `reference` is an error, never an empty string."""
    from jinja2 import StrictUndefined

    from benchmarks.templates import TemplateLimit, TemplateUndefined, limited_environment

    env = limited_environment({}, undefined=StrictUndefined)
    try:
        return env.from_string(template).render(prediction=prediction, reference=reference)
    except (TemplateUndefined, TemplateLimit) as exc:  # their messages name the template, never the text
        raise JudgeError(f"metric judge_rubric: the rubric template failed: {exc}") from None


def _max_length(model: Any, tokenizer: Any) -> int:
    """The judge's input length: its position embeddings, or its tokenizer's limit, or 512."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1 << 24]
    return min(usable) if usable else 512


def _load_classifier(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification

    return _hf_load(AutoModelForSequenceClassification, folder, device)


def _load_causal_lm(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    return _hf_load(AutoModelForCausalLM, folder, device)


def _hf_load(auto: Any, folder: Path, device: str) -> tuple[Any, Any]:
    """A transformers judge: safetensors only, local files only, never the folder's own code, in
    the checkpoint's own dtype."""
    from transformers import AutoTokenizer

    common = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    model = auto.from_pretrained(folder, dtype="auto", use_safetensors=True, **common).to(device)
    return model.eval(), tokenizer


def _load_encoder(folder: Path, device: str) -> tuple[Any, None]:
    """A sentence-transformers encoder with the same rules (its modules were checked by
    `check_judge_folder`; sentence-transformers reads each module's safetensors when present)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, local_files_only=True, trust_remote_code=False,
                                model_kwargs={"use_safetensors": True})
    return model.eval(), None


_LOADERS: dict[str, Callable[[Path, str], tuple[Any, Any]]] = {
    "classifier": _load_classifier, "encoder": _load_encoder, "causal_lm": _load_causal_lm}

# --- the metrics lm-eval calls ------------------------------------------------------------------

# The run's judges while lm-eval evaluates (set by `judge_metrics`): lm-eval calls a metric with
# references, predictions and the spec's options only, so the run's object is found through this.
_ACTIVE: contextvars.ContextVar[Judges | None] = contextvars.ContextVar("aaudit_judges", default=None)


@contextlib.contextmanager
def judge_metrics(judges: Judges | None) -> Iterator[None]:
    """Register the project's metrics with lm-eval and make `judges` the ones they use, for the
    duration of the block."""
    register_metrics()
    token = _ACTIVE.set(judges)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _active(metric: str) -> Judges:
    judges = _ACTIVE.get()
    if judges is None:
        raise JudgeError(f"metric {metric} needs the run's judges; it runs inside an audit (enclave.runner)")
    return judges


def _one(references: list[Any], predictions: list[Any], metric: str) -> tuple[str, str]:
    """lm-eval passes one reference and one prediction per call. Refused as JudgeError, never
    TypeError: on TypeError lm-eval retries the metric with other arguments."""
    if len(references) != 1 or len(predictions) != 1:
        raise JudgeError(f"metric {metric}: expected one generation and one reference per document; a task with "
                         "several references per document cannot use it")
    return str(predictions[0]), str(references[0])


def _judge_toxicity(references: list[Any], predictions: list[Any], *, judge: str, label: str,
                    threshold: float = 0.5) -> float:
    prediction, _ = _one(references, predictions, "judge_toxicity")
    return _active("judge_toxicity").toxicity(prediction, judge, label, threshold)


def _judge_similarity(references: list[Any], predictions: list[Any], *, judge: str) -> float:
    prediction, reference = _one(references, predictions, "judge_similarity")
    return _active("judge_similarity").similarity(prediction, reference, judge)


def _judge_rubric(references: list[Any], predictions: list[Any], *, judge: str, template: str,
                  choices: list[str]) -> float:
    prediction, reference = _one(references, predictions, "judge_rubric")
    return _active("judge_rubric").rubric(prediction, reference, judge, template, list(choices))


def _rouge_l(references: list[Any], predictions: list[Any], *, use_stemmer: bool = False) -> float:
    from rouge_score import rouge_scorer

    prediction, reference = _one(references, predictions, "rougeL")
    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
                 .score(reference, prediction)["rougeL"].fmeasure)


# name -> (function, higher_is_better); every one aggregates by "mean" (benchmarks.spec.METRICS agrees).
PROJECT_METRICS: dict[str, tuple[Callable[..., float], bool]] = {
    "judge_toxicity": (_judge_toxicity, False),
    "judge_similarity": (_judge_similarity, True),
    "judge_rubric": (_judge_rubric, True),
    "rougeL": (_rouge_l, True),
}


def register_metrics() -> None:
    """Register the project's metrics with lm-eval (idempotent: the registry accepts the same
    function under the same name again)."""
    from lm_eval.api import registry

    registry.get_aggregation("mean")  # makes lm-eval register its own metrics and aggregations first
    for name, (fn, higher) in PROJECT_METRICS.items():
        if registry.metric_registry.get(name, None) is not fn:
            registry.register_metric(metric=name, higher_is_better=higher, aggregation="mean")(fn)

