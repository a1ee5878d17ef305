"""The auditor's audit specification: declarative TOML, checked strictly before anything runs.

Auditor-supplied Python never runs inside the enclave, because code chosen by one party could read
the other party's secrets (the weights) and smuggle them out through the results. So a spec names
lm-eval task settings by value only: Jinja prompt templates (checked here and rendered in a sandbox
by the runner), metrics from lm-eval's registry that compute locally, lm-eval's built-in filters,
and bounded generation settings. The one exception is Python that ships inside the installed lm-eval
package itself: its built-in tasks name functions of their own `utils.py`, and a spec may name such
a function as `{ lm_eval_function = "dir/file.py:name" }` in doc_to_text, doc_to_target,
doc_to_choice, process_docs, process_results and a metric's `aggregation` (checked by benchmarks.lm_eval_functions without running it). Everything else is
refused with the task and key named.

The spec also bounds the run: `deadline` (how long the job may take, capped by the operator) and
`min_documents` (with `output = "aggregate"`, no task may be so small that an aggregate is one
document's score; `benchmarks.summary.check_aggregate` enforces it against the bundle). A crafted
spec (deep nesting, huge numbers, long dotted keys, bytes that are not UTF-8) is a `SpecError`,
never a traceback or a parser running out of memory.

`spec_to_lm_eval_yaml` writes the same tasks as stock lm-eval YAML so anyone holding the plaintext
model and data can reproduce the numbers with the `lm_eval` command line.
"""

from __future__ import annotations

import base64
import copy
import functools
import posixpath
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from benchmarks.lm_eval_functions import FUNCTION_KEY, LmEvalFunctionError, check_function_ref, is_function_ref
from verifier.errors import ParseError, UnusableInput
from verifier.inputs import parse_public_key

OUTPUT_POLICIES = ("aggregate", "aggregate+samples")
OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood", "loglikelihood_rolling")

MAX_TASKS = 64
MAX_BATCH_SIZE = 1024
ENGINES = ("hf", "vllm")
DTYPES = ("auto", "bfloat16", "float16", "float32")
MAX_PARALLEL = 64  # GPUs per parallel dimension
DEFAULT_MAX_BATCH_SIZE = 64  # lm-eval's HFLM default: where its batch finder starts
MAX_MODEL_LEN = 1 << 20
MAX_FEWSHOT = 32
MAX_REPEATS = 32
MAX_GEN_TOKS = 8192
MAX_UNTIL = 16
MAX_TASK_VERSION = 1_000_000
MAX_SPEC_BYTES = 1 << 20
MAX_NESTING = 16  # brackets and braces; a valid spec needs 5 (filter_list)
MAX_KEY_PARTS = 8  # parts of one dotted key (a valid spec needs 4); tomllib's cost grows with the square
DEFAULT_MIN_DOCUMENTS = 20
MAX_MIN_DOCUMENTS = 1_000_000
DEFAULT_DEADLINE_S = 3600  # deadline = "1h"
MAX_DEADLINE_S = 7 * 86400
DEADLINE_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class MetricRule:
    """What lm-eval 0.4.13 registers for a metric: its aggregation, direction and output types;
    the options a spec may give it (`kwargs`, of which `required` must be given), and for a judge
    metric the kind of `[[judge]]` its `judge` option names."""

    aggregation: str
    higher_is_better: bool
    output_types: frozenset[str]
    kwargs: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    judge_kind: str | None = None


_GEN = frozenset({"generate_until"})

# Metrics lm-eval registers and computes locally (numpy, sacrebleu, scikit-learn), restricted to the
# output types whose `process_results` produces them. Anything else would fall back to
# `evaluate.load`, which fetches code from the network. The last four are the project's own
# (benchmarks.judges), registered with lm-eval by the runner: the judge metrics, scored by a
# `[[judge]]` model of the auditor's, and ROUGE-L, which lm-eval does not register. tests/test_spec.py
# checks this table against lm-eval's registry.
METRICS: dict[str, MetricRule] = {
    "acc": MetricRule("mean", True, frozenset({"multiple_choice", "loglikelihood"})),
    "acc_norm": MetricRule("mean", True, frozenset({"multiple_choice"})),
    "acc_bytes": MetricRule("mean", True, frozenset({"multiple_choice"})),
    "acc_mutual_info": MetricRule("mean", True, frozenset({"multiple_choice"})),
    "exact_match": MetricRule(
        "mean", True, frozenset({"multiple_choice", "generate_until"}),
        frozenset({"ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore"}),
    ),
    "f1": MetricRule("f1", True, frozenset({"multiple_choice"})),
    "mcc": MetricRule("matthews_corrcoef", True, frozenset({"multiple_choice"})),
    "brier_score": MetricRule("brier_score", False, frozenset({"multiple_choice"})),
    "perplexity": MetricRule("perplexity", False, frozenset({"loglikelihood"})),
    "word_perplexity": MetricRule("weighted_perplexity", False, frozenset({"loglikelihood_rolling"})),
    "byte_perplexity": MetricRule("weighted_perplexity", False, frozenset({"loglikelihood_rolling"})),
    "bits_per_byte": MetricRule("bits_per_byte", False, frozenset({"loglikelihood_rolling"})),
    "bleu": MetricRule("bleu", True, frozenset({"generate_until"})),
    "chrf": MetricRule("chrf", True, frozenset({"generate_until"})),
    "chrf++": MetricRule("chrf++", True, frozenset({"generate_until"})),
    "ter": MetricRule("ter", False, frozenset({"generate_until"})),
    "judge_toxicity": MetricRule("mean", False, _GEN, frozenset({"judge", "label", "threshold"}),
                                 frozenset({"judge", "label"}), "classifier"),
    "judge_similarity": MetricRule("mean", True, _GEN, frozenset({"judge"}), frozenset({"judge"}), "encoder"),
    "judge_rubric": MetricRule("mean", True, _GEN, frozenset({"judge", "template", "choices"}),
                               frozenset({"judge", "template", "choices"}), "causal_lm"),
    "rougeL": MetricRule("mean", True, _GEN, frozenset({"use_stemmer"})),
}
MAX_LABEL = 128  # characters of a classifier label
MAX_CHOICES = 32  # choices of a rubric
MAX_CHOICE = 64  # characters of one choice
RUBRIC_VARIABLES = frozenset({"prediction", "reference"})  # what a rubric template may read

# Aggregations a metric computed by lm-eval's own `process_results` may name: those of the metrics above.
AGGREGATIONS = frozenset(rule.aggregation for rule in METRICS.values())

# lm-eval's built-in response filters (lm_eval/filters) and the arguments each accepts.
FILTERS: dict[str, frozenset[str]] = {
    "take_first": frozenset(),
    "take_first_k": frozenset({"k"}),
    "majority_vote": frozenset(),
    "lowercase": frozenset(),
    "uppercase": frozenset(),
    "remove_whitespace": frozenset(),
    "regex": frozenset({"regex_pattern", "group_select", "fallback"}),
    "multi_choice_regex": frozenset(
        {"regex_pattern", "group_select", "fallback", "ignore_case", "ignore_punctuation", "regexes_to_ignore"}
    ),
}

# Jinja filters a prompt template may use: lm-eval's `regex_replace` and Jinja's text filters.
# Left out: `random` (breaks reproducibility) and `attr` (attribute access by computed name).
TEMPLATE_FILTERS = frozenset({
    "abs", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "first", "float", "format",
    "groupby", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr", "slice", "sort", "string",
    "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount", "regex_replace",
})

# Keys of [task.config]; every other lm-eval TaskConfig key is refused. Data location, splits and
# the task name come from the [[task]] table, never from the embedded config.
CONFIG_KEYS = frozenset({
    "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "description", "gen_prefix",
    "target_delimiter", "fewshot_delimiter", "num_fewshot", "repeats", "metric_list", "generation_kwargs",
    "filter_list", "task_alias", "metadata", "fewshot_config", "process_docs", "process_results",
})
SAMPLERS = ("default", "first_n")  # lm-eval's few-shot samplers (lm_eval/api/samplers.py)
# Keys refused with a specific reason, because an auditor is likely to try them.
FORBIDDEN_KEYS: dict[str, str] = {
    "custom_dataset": "it names Python code; the dataset comes from the [[task]] `dataset` file",
    "class": "it names a Python task class; auditor-supplied Python never runs in the enclave",
    "dataset_path": "the data comes from the auditor's sealed bundle, named by [[task]] `dataset`",
    "dataset_name": "the data comes from the auditor's sealed bundle, named by [[task]] `dataset`",
    "dataset_kwargs": "the data comes from the auditor's sealed bundle, named by [[task]] `dataset`",
    "data_files": "the data comes from the auditor's sealed bundle, named by [[task]] `dataset`",
    "training_split": "splits are set by [[task]] `split`",
    "validation_split": "splits are set by [[task]] `split`",
    "test_split": "splits are set by [[task]] `split`",
    "fewshot_split": "few-shot examples come from [[task]] `fewshot_dataset` / `fewshot_split`",
    "task": "the task name is set by [[task]] `name`",
    "include": "a spec is self-contained; it cannot include other files",
    "use_prompt": "promptsource prompts are fetched from the network",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "unsafe_code": "tasks that execute model-written code are not supported",
    "group": "groups are not supported; list each task",
    "tag": "tags are not supported; list each task",
}
GENERATION_KEYS = frozenset({"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"})
TOP_KEYS = frozenset({"name", "version", "seed", "output", "samples_recipient", "batch_size", "description",
                      "min_documents", "deadline", "engine", "judge", "task", "chat_template", "fewshot_as_multiturn",
                      "system_instruction"})
MAX_SYSTEM_INSTRUCTION = 8192  # characters
JUDGE_KINDS = ("classifier", "encoder", "causal_lm")  # sequence classifier, sentence encoder, causal LM
JUDGE_KEYS = frozenset({"name", "kind"})
MAX_JUDGES = 8
ENGINE_KEYS: dict[str, frozenset[str]] = {
    "hf": frozenset({"name", "batch_size", "max_batch_size", "dtype", "parallelize"}),
    "vllm": frozenset({"name", "batch_size", "dtype", "tensor_parallel_size", "data_parallel_size",
                       "gpu_memory_utilization", "max_model_len"}),
}
TASK_KEYS = frozenset({"name", "dataset", "split", "fewshot_dataset", "fewshot_split", "config"})

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_SPLIT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_FILE_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-/]{0,254}")
_METRIC_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_DEADLINE_RE = re.compile(r"([0-9]{1,9})([smh])")
# What `_check_toml_shape` sees of a TOML text: strings and comments (skipped whole), then the
# characters that nest or split keys. Multi-line strings may end with up to two extra quotes. Each
# string alternative matches wherever it starts (running to the end of the line or text if need
# be), so the scan never backtracks across a line.
_TOML_TOKEN = re.compile(r"""
      \"\"\"(?:[^"\\]|\\.?|"{1,2}(?!"))*(?:"{3,5}|\Z)
    | '\'\'(?:[^']|'{1,2}(?!'))*(?:'{3,5}|\Z)
    | "(?:[^"\\\n]|\\[^\n]?)*(?:"|$)
    | '[^'\n]*(?:'|$)
    | \#[^\n]*
    | [\[\]{}.=,\n]
""", re.VERBOSE | re.DOTALL | re.MULTILINE)


class SpecError(UnusableInput):
    """The audit spec is malformed or asks for something the enclave will not run."""


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval task: its name, the bundle files holding its documents (evaluated split, and
    optionally a separate file of few-shot examples), and its checked config."""

    name: str
    dataset: str
    split: str
    config: dict[str, Any] = field(hash=False, compare=True)
    fewshot_dataset: str | None = None
    fewshot_split: str | None = None

    @property
    def files(self) -> dict[str, str]:
        """Bundle file per split name."""
        out = {self.split: self.dataset}
        if self.fewshot_dataset is not None and self.fewshot_split is not None:
            out[self.fewshot_split] = self.fewshot_dataset
        return out


@dataclass(frozen=True)
class EngineSpec:
    """The `[engine]` table: which lm-eval model class runs the audit, and its settings.

    `hf` is lm-eval's `HFLM` (transformers), `vllm` lm-eval's `VLLM`. Every setting that can change
    the numbers is the spec's, so both parties approve it with the spec digest and the statement
    records it: `batch_size` (padding), `dtype` ("auto" is the checkpoint's own dtype from its
    config.json, on every device). `batch_size = "auto"` lets lm-eval pick the batch: `hf` tries
    from `max_batch_size` down until a batch fits in memory (the size found is recorded in the
    statement); `vllm` hands all requests to vLLM's scheduler. `parallelize` shards one model over
    the visible GPUs (`hf`, accelerate's device map); `tensor_parallel_size` / `data_parallel_size`
    split it for `vllm`."""

    name: str = "hf"
    batch_size: int | str = 1
    dtype: str = "auto"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    parallelize: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None

    def settings(self) -> dict[str, Any]:
        """This engine's settings (the keys of its `[engine]` table, defaults filled in)."""
        keys = ENGINE_KEYS[self.name] - {"name"}
        if self.batch_size != "auto":
            keys -= {"max_batch_size"}  # lm-eval reads it only to find a batch size
        return {k: getattr(self, k) for k in sorted(keys)}


@dataclass(frozen=True)
class JudgeSpec:
    """A `[[judge]]` table: a model of the auditor's that scores the audited model's answers inside
    the enclave (through the project's judge metrics, never auditor code). `name` is its folder in
    the auditor's sealed `judges` asset (`<name>/config.json`, safetensors weights, tokenizer);
    `kind` says how it is loaded and used."""

    name: str
    kind: str


@dataclass(frozen=True)
class AuditSpec:
    """A checked spec. `seed` seeds Python, numpy, torch and the few-shot sampler alike;
    `engine` is part of the spec because its batch size (padding) and dtype change the numbers.
    `min_documents` is the fewest documents a task may have under `output = "aggregate"` (the
    operator may raise it); `deadline_s` is how long the job may run, in seconds (the operator
    may lower it)."""

    name: str
    version: int
    seed: int
    output: str
    tasks: tuple[TaskSpec, ...]
    engine: EngineSpec = EngineSpec()
    judges: tuple[JudgeSpec, ...] = ()
    description: str = ""
    samples_recipient: str | None = None  # base64 X25519 key of the auditor, for "aggregate+samples"
    min_documents: int = DEFAULT_MIN_DOCUMENTS
    deadline_s: int = DEFAULT_DEADLINE_S
    chat_template: bool = False         # lm-eval's apply_chat_template: prompts in the model's own chat format
    fewshot_as_multiturn: bool = False  # few-shot examples as earlier turns of the chat
    system_instruction: str = ""        # lm-eval's system_instruction, the chat's system message

    @property
    def batch_size(self) -> int | str:
        return self.engine.batch_size

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def datasets(self) -> list[str]:
        """The bundle files the tasks read, each once, in task order."""
        return list(dict.fromkeys(f for t in self.tasks for f in t.files.values()))


def parse_spec(data: bytes) -> AuditSpec:
    """Parse and check an audit spec (TOML bytes). Raises `SpecError` naming the task and key."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec: {len(data)} bytes; at most {MAX_SPEC_BYTES} are allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec: not UTF-8 text (byte {exc.start})") from None
    _check_toml_shape(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec: malformed TOML: {exc}") from None
    except RecursionError:
        raise SpecError("spec: malformed TOML: nested too deeply") from None
    except ValueError:  # tomllib passes int()'s limit on decimal digits through
        raise SpecError("spec: malformed TOML: an integer has too many digits") from None
    _no_unknown(doc, TOP_KEYS, "spec")
    name = _str(doc, "name", "spec", required=True)
    if not _NAME_RE.fullmatch(name):
        raise SpecError(f"spec: name {_q(name)} must be 1-64 letters, digits, '_' or '-', starting with a letter")
    version = _int(doc, "version", "spec", lo=1, hi=2**31 - 1, required=True)
    seed = _int(doc, "seed", "spec", lo=0, hi=2**32 - 1, required=True)
    output = _str(doc, "output", "spec", required=True)
    if output not in OUTPUT_POLICIES:
        raise SpecError(f"spec: output {_q(output)} must be one of {', '.join(OUTPUT_POLICIES)}")
    recipient = _samples_recipient(doc, output)
    engine = _engine(doc)
    judges = _judges(doc)
    description = _str(doc, "description", "spec", default="")
    min_documents = _int(doc, "min_documents", "spec", lo=1, hi=MAX_MIN_DOCUMENTS, default=DEFAULT_MIN_DOCUMENTS)
    deadline_s = _deadline(doc["deadline"]) if "deadline" in doc else DEFAULT_DEADLINE_S
    chat = _chat(doc)
    raw_tasks = doc.get("task")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise SpecError("spec: at least one [[task]] table is required")
    if len(raw_tasks) > MAX_TASKS:
        raise SpecError(f"spec: {len(raw_tasks)} tasks; at most {MAX_TASKS} are allowed")
    tasks = []
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise SpecError(f"spec: task #{i + 1} must be a table")
        tasks.append(_parse_task(raw, i))
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise SpecError(f"task {_q(t.name)}: the name is used twice")
        seen.add(t.name)
    _check_judge_use(tasks, judges)
    return AuditSpec(name=name, version=version, seed=seed, output=output, tasks=tuple(tasks),
                     engine=engine, judges=judges, description=description, samples_recipient=recipient,
                     min_documents=min_documents, deadline_s=deadline_s, **chat)


def _samples_recipient(doc: dict[str, Any], output: str) -> str | None:
    """`aggregate+samples` names who may read the per-sample records: the auditor's HPKE X25519 key
    (base64, from `aaudit keygen --role auditor`). It is part of the spec, so both parties approve it."""
    value = doc.get("samples_recipient")
    if output != "aggregate+samples":
        if value is not None:
            raise SpecError("spec: samples_recipient only applies to output = \"aggregate+samples\"")
        return None
    if not isinstance(value, str):
        raise SpecError("spec: output \"aggregate+samples\" needs samples_recipient (the auditor's samples "
                        "public key, base64; see `aaudit keygen --role auditor`)")
    try:
        raw = parse_public_key(value, "spec: samples_recipient", "x25519")
    except ParseError as exc:
        raise SpecError(f"{exc} (the auditor's samples key, 32 bytes, is in keys/auditor.samples.pub)") from None
    return base64.b64encode(raw).decode()  # one form in the manifest and the statement, however it was written


def _engine(doc: dict[str, Any]) -> EngineSpec:
    """The `[engine]` table (see `EngineSpec`). A top-level `batch_size` (specs written before
    `[engine]` existed) still means `[engine] batch_size` of the default `hf` engine, an integer as
    before; "auto" and every other setting go under `[engine]`."""
    table = doc.get("engine", {})
    if not isinstance(table, dict):
        raise SpecError("spec: `engine` must be a table: [engine] name = \"hf\" or \"vllm\"")
    where = "spec: [engine]"
    name = _str(table, "name", where, default="hf")
    if name not in ENGINES:
        raise SpecError(f"{where}: name {_q(name)} must be one of {', '.join(ENGINES)}")
    _no_unknown(table, ENGINE_KEYS[name], f"{where} (name = {name!r})")
    if "batch_size" in doc:
        if "batch_size" in table or name != "hf":
            raise SpecError("spec: the top-level `batch_size` is the old place of [engine] batch_size; "
                            "set it only under [engine]")
        old = doc["batch_size"]
        if isinstance(old, bool) or not isinstance(old, int) or not 1 <= old <= MAX_BATCH_SIZE:
            raise SpecError(f"spec: the top-level `batch_size` must be an integer from 1 to {MAX_BATCH_SIZE}; "
                            "write batch_size = \"auto\" (and every other engine setting) under [engine]")
        table = {**table, "batch_size": old}
    out: dict[str, Any] = {"name": name}
    batch = table.get("batch_size", "auto" if name == "vllm" else 1)
    if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int)
                            or not 1 <= batch <= MAX_BATCH_SIZE):
        raise SpecError(f"{where}: `batch_size` must be an integer from 1 to {MAX_BATCH_SIZE} or \"auto\"")
    out["batch_size"] = batch
    dtype = _str(table, "dtype", where, default="auto")
    if dtype not in DTYPES:
        raise SpecError(f"{where}: dtype {_q(dtype)} must be one of {', '.join(DTYPES)} "
                        "(auto: the checkpoint's own dtype from its config.json)")
    out["dtype"] = dtype
    if "max_batch_size" in table:
        out["max_batch_size"] = _int(table, "max_batch_size", where, lo=1, hi=MAX_BATCH_SIZE)
        if batch != "auto":
            raise SpecError(f"{where}: max_batch_size only applies with batch_size = \"auto\"")
    if "parallelize" in table:
        if not isinstance(table["parallelize"], bool):
            raise SpecError(f"{where}: `parallelize` must be true or false")
        out["parallelize"] = table["parallelize"]
    for key in ("tensor_parallel_size", "data_parallel_size"):
        if key in table:
            out[key] = _int(table, key, where, lo=1, hi=MAX_PARALLEL)
    if "gpu_memory_utilization" in table:
        out["gpu_memory_utilization"] = _float(table, "gpu_memory_utilization", where, lo=0.0, hi=1.0)
        if out["gpu_memory_utilization"] == 0.0:
            raise SpecError(f"{where}: `gpu_memory_utilization` must be above 0")
    if "max_model_len" in table:
        out["max_model_len"] = _int(table, "max_model_len", where, lo=1, hi=MAX_MODEL_LEN)
    return EngineSpec(**out)


def _judges(doc: dict[str, Any]) -> tuple[JudgeSpec, ...]:
    """The `[[judge]]` tables (see `JudgeSpec`): unique names, each a folder of the judges asset."""
    raw = doc.get("judge", [])
    if not isinstance(raw, list):
        raise SpecError("spec: `judge` must be an array of tables: [[judge]] name = ..., kind = ...")
    if len(raw) > MAX_JUDGES:
        raise SpecError(f"spec: {len(raw)} judges; at most {MAX_JUDGES} are allowed")
    out: list[JudgeSpec] = []
    for i, table in enumerate(raw):
        where = f"spec: judge #{i + 1}"
        if not isinstance(table, dict):
            raise SpecError(f"{where} must be a table")
        _no_unknown(table, JUDGE_KEYS, where)
        name = _str(table, "name", where, required=True)
        if not _NAME_RE.fullmatch(name):
            raise SpecError(f"{where}: name {_q(name)} must be 1-64 letters, digits, '_' or '-', starting with a "
                            "letter (it is the judge's folder in the sealed judges asset)")
        kind = _str(table, "kind", where, required=True)
        if kind not in JUDGE_KINDS:
            raise SpecError(f"spec: judge {_q(name)}: kind {_q(kind)} must be one of {', '.join(JUDGE_KINDS)}")
        if any(j.name == name for j in out):
            raise SpecError(f"spec: judge {_q(name)}: the name is used twice")
        out.append(JudgeSpec(name, kind))
    return tuple(out)


def _chat(doc: dict[str, Any]) -> dict[str, Any]:
    """`chat_template = true` renders every prompt with the model's own chat template (lm-eval's
    `apply_chat_template`, what an instruction-tuned model such as Llama-3.1-8B-Instruct expects);
    `fewshot_as_multiturn` puts the few-shot examples in earlier turns; `system_instruction` is the
    system message. They change the prompts, so they are the spec's: both parties approve them."""
    out: dict[str, Any] = {}
    for key in ("chat_template", "fewshot_as_multiturn"):
        if key in doc:
            if not isinstance(doc[key], bool):
                raise SpecError(f"spec: `{key}` must be true or false")
            out[key] = doc[key]
    if "system_instruction" in doc:
        text = _str(doc, "system_instruction", "spec")
        if not 0 < len(text) <= MAX_SYSTEM_INSTRUCTION:
            raise SpecError(f"spec: `system_instruction` must be 1 to {MAX_SYSTEM_INSTRUCTION} characters")
        out["system_instruction"] = text
    if (out.get("fewshot_as_multiturn") or "system_instruction" in out) and not out.get("chat_template"):
        raise SpecError("spec: fewshot_as_multiturn and system_instruction apply to chat prompts only; set "
                        "chat_template = true")
    return out


def _deadline(value: Any) -> int:
    """`deadline = "90s" | "30m" | "2h"`: seconds, from 1 s to 7 days."""
    m = _DEADLINE_RE.fullmatch(value) if isinstance(value, str) else None
    seconds = int(m.group(1)) * DEADLINE_UNITS[m.group(2)] if m else 0
    if not 1 <= seconds <= MAX_DEADLINE_S:
        raise SpecError(f'spec: deadline must be a string like "90s", "30m" or "2h", from 1 second to '
                        f"{MAX_DEADLINE_S // 3600} hours (7 days)")
    return seconds


def _check_toml_shape(text: str) -> None:
    """Refuse nesting and dotted keys that would exhaust tomllib (recursion, memory) before it runs.

    Outside strings and comments, brackets and braces nest at most MAX_NESTING deep, and a run of
    '.' between two of `=,[]{}` or line ends (a dotted key; a number has one) is shorter than
    MAX_KEY_PARTS. An unterminated string runs to the end of its line (or of the text): tomllib
    refuses it anyway, and the scan stays linear.
    """
    depth = dots = 0
    for token in _TOML_TOKEN.findall(text):
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(f"spec: arrays and tables nested more than {MAX_NESTING} deep")
        elif token in ("]", "}"):
            depth -= 1
        if token == ".":
            dots += 1
            if dots >= MAX_KEY_PARTS:
                raise SpecError(f"spec: a dotted key has more than {MAX_KEY_PARTS} parts")
        elif token in ("=", ",", "[", "]", "{", "}", "\n"):
            dots = 0


def lm_eval_task_config(task: TaskSpec) -> dict[str, Any]:
    """The lm-eval task config for `task`, without the data source (the caller adds that).

    Shared by the enclave runner (which adds an in-memory `custom_dataset`) and by
    `spec_to_lm_eval_yaml` (which adds `dataset_path: json`), so both evaluate the same task.
    """
    cfg: dict[str, Any] = {"task": task.name, "test_split": task.split}
    if task.fewshot_split is not None:
        cfg["fewshot_split"] = task.fewshot_split
    return {**cfg, **copy.deepcopy(task.config)}


def spec_to_lm_eval_yaml(spec: AuditSpec, data_dir: str) -> dict[str, str]:
    """Stock lm-eval YAML for each task, by task name (write each to `<name>.yaml`).

    The data files are `<data_dir>/<dataset>`; a relative `data_dir` is relative to the directory
    `lm_eval` runs in. `dataset_path: json` makes the datasets library keep an Arrow copy of the
    plaintext in its cache: acceptable for a reproduction on the data owner's machine, and the
    reason the enclave builds its datasets in memory instead.
    """
    import yaml

    class Dumper(yaml.SafeDumper):
        """Double-quote strings with line breaks, so prompts read as written in the spec."""

    def str_style(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = '"' if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    class Function(str):
        """A function of lm-eval's task code, written as lm-eval's `!function` tag with the module's
        dotted name (lm-eval imports it when no file of that name lies beside the YAML)."""

    def function_tag(dumper: yaml.SafeDumper, value: Function) -> yaml.Node:
        return dumper.represent_scalar("!function", str(value))

    def tagged(value: Any) -> Any:
        if is_function_ref(value):
            module, name = value[FUNCTION_KEY].split(":")
            return Function("lm_eval.tasks." + module.removesuffix(".py").replace("/", ".") + "." + name)
        if isinstance(value, dict):
            return {k: tagged(v) for k, v in value.items()}
        return [tagged(v) for v in value] if isinstance(value, list) else value

    Dumper.add_representer(str, str_style)
    Dumper.add_representer(Function, function_tag)
    out = {}
    for task in spec.tasks:
        cfg = tagged(lm_eval_task_config(task))
        files = {split: posixpath.join(data_dir, name) for split, name in task.files.items()}
        source = {"dataset_path": "json", "dataset_kwargs": {"data_files": files}}
        cfg = {"task": cfg.pop("task"), **source, **cfg}
        out[task.name] = yaml.dump(cfg, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1_000_000)
    return out


def lm_eval_prompt_args(spec: AuditSpec) -> list[str]:
    """The stock `lm_eval` options that format prompts as the enclave does (chat template, few-shot
    turns, system message)."""
    args = ["--apply_chat_template"] if spec.chat_template else []
    if spec.fewshot_as_multiturn:
        args.append("--fewshot_as_multiturn")
    if spec.system_instruction:
        args += ["--system_instruction", spec.system_instruction]
    return args


def lm_eval_cli_args(engine: EngineSpec, model_dir: str) -> list[str]:
    """The stock `lm_eval` options that load the model as the enclave does (`--model`,
    `--model_args`, `--batch_size`), for reproducing a run with `spec_to_lm_eval_yaml`'s tasks."""
    model_args: dict[str, Any] = {"pretrained": model_dir, "dtype": engine.dtype}
    extra = []
    if engine.name == "hf":
        if engine.parallelize:
            model_args["parallelize"] = True
        if engine.batch_size == "auto":
            extra = ["--max_batch_size", str(engine.max_batch_size)]
    else:
        model_args.update({k: v for k, v in engine.settings().items() if k not in ("batch_size", "dtype")
                           and v is not None})
    return ["--model", engine.name, "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--batch_size", str(engine.batch_size), *extra]


# --- checks -----------------------------------------------------------------------------------


def _parse_task(raw: dict[str, Any], index: int) -> TaskSpec:
    where = f"task #{index + 1}"
    name = _str(raw, "name", where, required=True)
    if not _NAME_RE.fullmatch(name):
        raise SpecError(f"{where}: name {_q(name)} must be 1-64 letters, digits, '_' or '-', starting with a letter")
    where = f"task {_q(name)}"
    _no_unknown(raw, TASK_KEYS, where)
    dataset = _bundle_file(raw, "dataset", where, required=True)
    split = _split(raw, "split", where, default="test")
    fewshot_dataset = _bundle_file(raw, "fewshot_dataset", where) or None
    fewshot_split = None
    if fewshot_dataset is not None:
        fewshot_split = _split(raw, "fewshot_split", where, default="fewshot")
        if fewshot_split == split:
            raise SpecError(f"{where}: fewshot_split {_q(fewshot_split)} must differ from split {_q(split)}")
    elif "fewshot_split" in raw:
        raise SpecError(f"{where}: fewshot_split needs fewshot_dataset")
    config = raw.get("config")
    if not isinstance(config, dict):
        raise SpecError(f"{where}: a [task.config] table is required")
    return TaskSpec(name=name, dataset=dataset, split=split, config=_check_config(config, where),
                    fewshot_dataset=fewshot_dataset, fewshot_split=fewshot_split)


def _bundle_file(raw: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    if key not in raw and not required:
        return ""
    name = _str(raw, key, where, required=required)
    if not _FILE_RE.fullmatch(name) or any(p in ("", ".", "..") for p in name.split("/")) \
            or not name.endswith(".jsonl"):
        raise SpecError(f"{where}: {key} {_q(name)} must be a relative path of a .jsonl file in the "
                        "dataset bundle (no '..', no leading '/')")
    return name


def _split(raw: dict[str, Any], key: str, where: str, *, default: str) -> str:
    split = _str(raw, key, where, default=default)
    if not _SPLIT_RE.fullmatch(split):
        raise SpecError(f"{where}: {key} {_q(split)} must be letters, digits or '_'")
    return split


def _check_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    for key in cfg:
        if key in FORBIDDEN_KEYS:
            raise SpecError(f"{where}: config key {_q(key)} is not allowed: {FORBIDDEN_KEYS[key]}")
        if key not in CONFIG_KEYS:
            raise SpecError(f"{where}: config key {_q(key)} is not allowed (allowed: {', '.join(sorted(CONFIG_KEYS))})")
    _no_function_tags(cfg, where)
    out: dict[str, Any] = {}
    output_type = _str(cfg, "output_type", where, required=True)
    if output_type not in OUTPUT_TYPES:
        raise SpecError(f"{where}: output_type {_q(output_type)} must be one of {', '.join(OUTPUT_TYPES)}")
    out["output_type"] = output_type

    for key in ("process_docs", "process_results"):
        if key in cfg:
            if not isinstance(cfg[key], dict) or FUNCTION_KEY not in cfg[key]:
                raise SpecError(f"{where}: {key} names Python code: only a function of lm-eval's own task code may "
                                f"be named, as {{ {FUNCTION_KEY} = \"dir/file.py:name\" }}; auditor-supplied Python "
                                "never runs in the enclave")
            out[key] = _function(cfg[key], where, key)
    for key in ("doc_to_text", "doc_to_target"):
        value = cfg.get(key)
        if isinstance(value, dict) and FUNCTION_KEY in value:
            out[key] = _function(value, where, key)
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SpecError(f"{where}: {key} is required and must be a template string (or an int)")
        if isinstance(value, str):
            _check_template(value, where, key)
        out[key] = value
    if "doc_to_choice" in cfg:
        choice = cfg["doc_to_choice"]
        if isinstance(choice, dict) and FUNCTION_KEY in choice:
            choice = _function(choice, where, "doc_to_choice")
        elif isinstance(choice, str):
            _check_template(choice, where, "doc_to_choice")
        elif isinstance(choice, list):
            if not choice or not all(isinstance(c, str) for c in choice):
                raise SpecError(f"{where}: doc_to_choice as a list must hold strings")
        elif isinstance(choice, dict):
            if not choice or not all(isinstance(c, str) for c in choice.values()):
                raise SpecError(f"{where}: doc_to_choice as a table must map keys to strings")
        else:
            raise SpecError(f"{where}: doc_to_choice must be a template string, a list or a table of strings")
        out["doc_to_choice"] = choice
    elif output_type == "multiple_choice":
        raise SpecError(f"{where}: doc_to_choice is required for output_type multiple_choice")

    for key in ("description", "gen_prefix"):
        if key in cfg:
            out[key] = _str(cfg, key, where)
            _check_template(out[key], where, key)
    for key in ("target_delimiter", "fewshot_delimiter", "task_alias"):
        if key in cfg:
            out[key] = _str(cfg, key, where)
    if "num_fewshot" in cfg:
        out["num_fewshot"] = _int(cfg, "num_fewshot", where, lo=0, hi=MAX_FEWSHOT)
    if "fewshot_config" in cfg:
        fs = cfg["fewshot_config"]
        if not isinstance(fs, dict) or set(fs) != {"sampler"} or fs["sampler"] not in SAMPLERS:
            raise SpecError(f"{where}: fewshot_config may only set sampler, one of {', '.join(SAMPLERS)}")
        out["fewshot_config"] = {"sampler": fs["sampler"]}
    if "repeats" in cfg:
        out["repeats"] = _int(cfg, "repeats", where, lo=1, hi=MAX_REPEATS)
    if "metadata" in cfg:
        meta = cfg["metadata"]
        if not isinstance(meta, dict) or set(meta) - {"version"}:
            raise SpecError(f"{where}: metadata may only hold `version`")
        if "version" in meta:
            v = meta["version"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_TASK_VERSION:
                raise SpecError(f"{where}: metadata.version must be a number from 0 to {MAX_TASK_VERSION}")
        out["metadata"] = dict(meta)

    if "process_results" in out:  # lm-eval's own function computes the metrics: see _check_function_metrics
        out["metric_list"] = _check_function_metrics(cfg.get("metric_list"), where)
    else:
        out["metric_list"] = _check_metrics(cfg.get("metric_list"), output_type, where)
    if "generation_kwargs" in cfg:
        if output_type != "generate_until":
            raise SpecError(f"{where}: generation_kwargs only apply to output_type generate_until")
        out["generation_kwargs"] = _check_generation(cfg["generation_kwargs"], where)
    if "filter_list" in cfg:
        out["filter_list"] = _check_filters(cfg["filter_list"], where)
    return out


def _check_metrics(value: Any, output_type: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: metric_list is required: a list of {{ metric = ... }} tables")
    out = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        at = f"{where}: metric_list[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{at} must be a table")
        metric = entry.get("metric")
        if not isinstance(metric, str):
            raise SpecError(f"{at}: `metric` must be a metric name")
        rule = METRICS.get(metric)
        if rule is None:
            raise SpecError(f"{at}: metric {_q(metric)} is not allowed; metrics must be registered in lm-eval and "
                            f"compute locally: {', '.join(sorted(METRICS))}")
        if output_type not in rule.output_types:
            raise SpecError(f"{at}: metric {_q(metric)} does not apply to output_type {output_type} "
                            f"(it applies to {', '.join(sorted(rule.output_types))})")
        if metric in seen:
            raise SpecError(f"{at}: metric {_q(metric)} is listed twice")
        seen.add(metric)
        extra = set(entry) - {"metric", "aggregation", "higher_is_better"} - rule.kwargs
        if "hf_evaluate" in extra:
            raise SpecError(f"{at}: hf_evaluate is not allowed: it loads metric code from the network")
        if extra:
            raise SpecError(f"{at}: key(s) {', '.join(map(_cut, sorted(extra)))} not allowed for metric {_q(metric)}"
                            + (f" (allowed: {', '.join(sorted(rule.kwargs))})" if rule.kwargs else ""))
        agg = entry.get("aggregation", rule.aggregation)
        if agg != rule.aggregation:
            raise SpecError(f"{at}: aggregation {_q(agg)} for {_q(metric)}; lm-eval aggregates it with "
                            f"{_q(rule.aggregation)}")
        hib = entry.get("higher_is_better", rule.higher_is_better)
        if hib is not rule.higher_is_better:
            raise SpecError(f"{at}: higher_is_better for {_q(metric)} is {str(rule.higher_is_better).lower()}")
        missing = sorted(rule.required - set(entry))
        if missing:
            raise SpecError(f"{at}: metric {_q(metric)} needs {', '.join(missing)}"
                            + (f" (`judge` names a [[judge]] of kind {rule.judge_kind})" if rule.judge_kind else ""))
        checked: dict[str, Any] = {"metric": metric, "aggregation": agg, "higher_is_better": hib}
        for key in sorted(set(entry) & rule.kwargs):
            checked[key] = _metric_option(key, entry[key], at)
        out.append(checked)
    return out


def _metric_option(key: str, val: Any, at: str) -> Any:
    """One metric option, checked for its type and bounds (which judge `judge` names is checked
    once all tasks are read, by `_check_judge_use`)."""
    if key == "regexes_to_ignore":
        return _regex_list(val, f"{at}.{key}")
    if key == "judge":
        if not isinstance(val, str) or not _NAME_RE.fullmatch(val):
            raise SpecError(f"{at}: judge must name a [[judge]] of the spec")
        return val
    if key == "label":
        if not isinstance(val, str) or not 0 < len(val) <= MAX_LABEL:
            raise SpecError(f"{at}: label must be one of the classifier judge's label names (its config.json "
                            f"id2label), 1-{MAX_LABEL} characters")
        return val
    if key == "threshold":
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 1:
            raise SpecError(f"{at}: threshold must be a probability above 0 and at most 1 (default 0.5)")
        return float(val)
    if key == "template":
        if not isinstance(val, str) or not val:
            raise SpecError(f"{at}: template must be a Jinja template string, the judge's prompt")
        _check_template(val, at, "template")
        extra = sorted(_template_variables(val) - RUBRIC_VARIABLES)
        if extra:
            raise SpecError(f"{at}: template reads {', '.join(map(_q, extra))}; a rubric template may read only "
                            f"{' and '.join(sorted(RUBRIC_VARIABLES))}")
        return val
    if key == "choices":
        if (not isinstance(val, list) or not 2 <= len(val) <= MAX_CHOICES
                or not all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE for c in val)
                or len(set(val)) != len(val)):
            raise SpecError(f"{at}: choices must be a list of 2-{MAX_CHOICES} distinct non-empty strings of at most "
                            f"{MAX_CHOICE} characters, ordered worst to best")
        return list(val)
    if not isinstance(val, bool):  # the flags: ignore_case, ignore_punctuation, ignore_numbers, use_stemmer
        raise SpecError(f"{at}: {key} must be true or false")
    return val


def _template_variables(text: str) -> frozenset[str]:
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_template_env().parse(text)))


def _check_judge_use(tasks: list[TaskSpec], judges: tuple[JudgeSpec, ...]) -> None:
    """Every judge metric names a [[judge]] of its kind, and every [[judge]] is named by one: an
    unused judge would be uploaded and approved for nothing."""
    kinds = {j.name: j.kind for j in judges}
    used: set[str] = set()
    for task in tasks:
        for i, entry in enumerate(task.config["metric_list"]):
            rule = METRICS.get(entry["metric"])  # None: a value of lm-eval's own process_results
            if rule is None or rule.judge_kind is None:
                continue
            at, name = f"task {_q(task.name)}: metric_list[{i}]", entry["judge"]
            if name not in kinds:
                raise SpecError(f"{at}: judge {_q(name)} is not a [[judge]] of the spec"
                                + (f" (judges: {', '.join(map(repr, kinds))})" if kinds else
                                   "; add [[judge]] name = ..., kind = ... for the judge model"))
            if kinds[name] != rule.judge_kind:
                raise SpecError(f"{at}: metric {_q(entry['metric'])} needs a judge of kind {rule.judge_kind}; "
                                f"judge {_q(name)} is a {kinds[name]}")
            used.add(name)
    for name in kinds:
        if name not in used:
            raise SpecError(f"spec: judge {_q(name)} is used by no metric; remove its [[judge]] table or name it "
                            "in a judge metric")


def _check_function_metrics(value: Any, where: str) -> list[dict[str, Any]]:
    """`metric_list` of a task whose `process_results` is a function of lm-eval's task code: that
    function computes the per-document values, so the metric names are whatever it returns (any
    identifier) and each entry must say how lm-eval aggregates it, by an aggregation of lm-eval's
    registry or by a function of lm-eval's task code, and which direction is better."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: metric_list is required: a list of {{ metric = ..., aggregation = ..., "
                        "higher_is_better = ... }} tables")
    out = []
    for i, entry in enumerate(value):
        at = f"{where}: metric_list[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{at} must be a table")
        _no_unknown(entry, frozenset({"metric", "aggregation", "higher_is_better"}), at)
        metric = entry.get("metric")
        if not isinstance(metric, str) or not _METRIC_NAME_RE.fullmatch(metric):
            raise SpecError(f"{at}: `metric` must be the name of a value process_results returns (letters, digits, "
                            "'_', starting with a letter)")
        if any(m["metric"] == metric for m in out):
            raise SpecError(f"{at}: metric {_q(metric)} is listed twice")
        agg = entry.get("aggregation")
        if isinstance(agg, dict) and FUNCTION_KEY in agg:
            agg = _function(agg, where, f"metric_list[{i}].aggregation")
        elif agg not in AGGREGATIONS:
            raise SpecError(f"{at}: aggregation is required with process_results: one of "
                            f"{', '.join(sorted(AGGREGATIONS))}, or {{ {FUNCTION_KEY} = \"dir/file.py:name\" }}")
        hib = entry.get("higher_is_better")
        if not isinstance(hib, bool):
            raise SpecError(f"{at}: higher_is_better (true or false) is required with process_results")
        out.append({"metric": metric, "aggregation": agg, "higher_is_better": hib})
    return out


def _function(value: dict[str, Any], where: str, key: str) -> dict[str, str]:
    """A checked function reference (see benchmarks.lm_eval_functions), or a SpecError naming task and key."""
    try:
        return {FUNCTION_KEY: check_function_ref(value)}
    except LmEvalFunctionError as exc:
        raise SpecError(f"{where}: {key}: {exc}") from None


def _check_generation(value: Any, where: str) -> dict[str, Any]:
    at = f"{where}: generation_kwargs"
    if not isinstance(value, dict):
        raise SpecError(f"{at} must be a table")
    extra = set(value) - GENERATION_KEYS
    if extra:
        raise SpecError(f"{at}: key(s) {', '.join(map(_cut, sorted(extra)))} not allowed "
                        f"(allowed: {', '.join(sorted(GENERATION_KEYS))})")
    out: dict[str, Any] = {}
    if "until" in value:
        until = value["until"]
        if isinstance(until, str):
            until = [until]
        if (not isinstance(until, list) or not until or len(until) > MAX_UNTIL
                or not all(isinstance(u, str) and u for u in until)):
            raise SpecError(f"{at}: until must be a non-empty string or a list of 1-{MAX_UNTIL} non-empty strings")
        out["until"] = until
    if "max_gen_toks" in value:
        out["max_gen_toks"] = _int(value, "max_gen_toks", at, lo=1, hi=MAX_GEN_TOKS)
    if "do_sample" in value:
        if not isinstance(value["do_sample"], bool):
            raise SpecError(f"{at}: do_sample must be true or false")
        out["do_sample"] = value["do_sample"]
    if "temperature" in value:
        out["temperature"] = _float(value, "temperature", at, lo=0.0, hi=10.0)
    if "top_p" in value:
        out["top_p"] = _float(value, "top_p", at, lo=0.0, hi=1.0)
        if out["top_p"] == 0.0:
            raise SpecError(f"{at}: top_p must be above 0")
    if "top_k" in value:
        out["top_k"] = _int(value, "top_k", at, lo=0, hi=1_000_000)
    return out


def _check_filters(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: filter_list must be a non-empty list of {{ name = ..., filter = [...] }} tables")
    out = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        at = f"{where}: filter_list[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "filter"}:
            raise SpecError(f"{at} must be a table with exactly `name` and `filter`")
        name = entry["name"]
        if not isinstance(name, str) or not _SPLIT_RE.fullmatch(name) or name in names:
            raise SpecError(f"{at}: name must be a unique identifier (letters, digits, '_')")
        names.add(name)
        steps = entry["filter"]
        if not isinstance(steps, list) or not steps:
            raise SpecError(f"{at}: filter must be a non-empty list of {{ function = ... }} tables")
        checked_steps = []
        for j, step in enumerate(steps):
            sat = f"{at}.filter[{j}]"
            if not isinstance(step, dict) or not isinstance(step.get("function"), str):
                raise SpecError(f"{sat} must be a table with a `function` name")
            fn = step["function"]
            if fn not in FILTERS:
                raise SpecError(f"{sat}: filter function {_q(fn)} is not allowed "
                                f"(allowed: {', '.join(sorted(FILTERS))})")
            extra = set(step) - {"function"} - FILTERS[fn]
            if extra:
                raise SpecError(f"{sat}: argument(s) {', '.join(map(_cut, sorted(extra)))} not allowed for {_q(fn)}")
            checked = {"function": fn}
            for key in sorted(set(step) - {"function"}):
                val = step[key]
                if key == "regex_pattern":
                    checked[key] = _regex(val, f"{sat}.{key}")
                elif key == "regexes_to_ignore":
                    checked[key] = _regex_list(val, f"{sat}.{key}")
                elif key in ("group_select", "k"):
                    checked[key] = _int(step, key, sat, lo=-1000 if key == "group_select" else 1, hi=1000)
                elif key == "fallback":
                    if not isinstance(val, str):
                        raise SpecError(f"{sat}: fallback must be a string")
                    checked[key] = val
                else:  # ignore_case, ignore_punctuation
                    if not isinstance(val, bool):
                        raise SpecError(f"{sat}: {key} must be true or false")
                    checked[key] = val
            checked_steps.append(checked)
        out.append({"name": name, "filter": checked_steps})
    return out


def _check_template(text: str, where: str, key: str) -> None:
    """Refuse Jinja that reaches for Python internals, and Jinja that cannot be compiled (nesting
    beyond what Jinja's parser or Python's compiler take), so that the runner, which renders in a
    sandbox, never meets a template it cannot build."""
    from jinja2 import TemplateSyntaxError

    try:
        tree = _template_env().parse(text)
        _check_template_tree(tree, where, key)
        _template_env().compile(tree)
    except TemplateSyntaxError as exc:
        raise SpecError(f"{where}: {key} is not a valid Jinja template: {exc.message} (line {exc.lineno})") from None
    except (RecursionError, SyntaxError):  # SyntaxError: Python's compiler refusing the generated code
        raise SpecError(f"{where}: {key} is nested too deeply") from None


def _check_template_tree(tree: Any, where: str, key: str) -> None:
    from jinja2 import nodes

    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise SpecError(f"{where}: {key} may not load other templates ({type(node).__name__.lower()})")
    for node in tree.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            raise SpecError(f"{where}: {key} may not access the attribute {_q(node.attr)}")
    for node in tree.find_all(nodes.Getitem):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            raise SpecError(f"{where}: {key} may not access the item {_q(node.arg.value)}")
    for node in tree.find_all(nodes.Filter):
        if node.name not in TEMPLATE_FILTERS:
            raise SpecError(f"{where}: {key} uses the Jinja filter {_q(node.name)}, which is not allowed")
    for node in tree.find_all(nodes.Const):
        if isinstance(node.value, str) and node.value.startswith("__"):
            raise SpecError(f"{where}: {key} may not name {_q(node.value)}")


@functools.cache
def _template_env() -> Any:
    """The runner's environment (benchmarks.templates: sandboxed and limited, since compiling folds
    constants), for parsing and compiling only. Templates are never rendered here, so lm-eval's
    `regex_replace` filter is present by name only (its function lives in lm-eval, which the spec
    check does not import)."""
    from benchmarks.templates import limited_environment

    return limited_environment({"regex_replace": str}, keep_trailing_newline=True)


def _no_function_tags(value: Any, where: str, path: str = "config") -> None:
    """Catch lm-eval's `!function module.name` YAML tag pasted into TOML as a string."""
    if isinstance(value, str):
        if value.lstrip().startswith("!function"):
            raise SpecError(f"{where}: {path} uses '!function'; auditor-supplied Python never runs in the enclave "
                            f"(a function of lm-eval's own task code is named as {{ {FUNCTION_KEY} = "
                            "\"dir/file.py:name\" }})")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_function_tags(v, where, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_function_tags(v, where, f"{path}[{i}]")


def _no_unknown(table: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        shown = ", ".join(map(_cut, extra[:10])) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        raise SpecError(f"{where}: unknown key(s) {shown} (allowed: {', '.join(sorted(allowed))})")


def _q(value: Any) -> str:
    """`value` quoted for a message, cut short: spec values are the auditor's and may be huge."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _str(table: dict[str, Any], key: str, where: str, *, required: bool = False, default: str = "") -> str:
    if key not in table:
        if required:
            raise SpecError(f"{where}: `{key}` is required")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise SpecError(f"{where}: `{key}` must be a string")
    return value


def _int(table: dict[str, Any], key: str, where: str, *, lo: int, hi: int, required: bool = False,
         default: int = 0) -> int:
    if key not in table:
        if required:
            raise SpecError(f"{where}: `{key}` is required")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{where}: `{key}` must be an integer from {lo} to {hi}")
    return value


def _float(table: dict[str, Any], key: str, where: str, *, lo: float, hi: float) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise SpecError(f"{where}: `{key}` must be a number from {lo} to {hi}")
    return float(value)


def _regex(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a regular expression string")
    try:
        re.compile(value)
    except re.error as exc:
        raise SpecError(f"{where}: invalid regular expression: {exc}") from None
    except (RecursionError, OverflowError):  # groups nested too deep, a repeat count too large
        raise SpecError(f"{where}: regular expression too complex (nesting or repeat count)") from None
    return value


def _regex_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise SpecError(f"{where} must be a list of regular expressions")
    return [_regex(v, f"{where}[{i}]") for i, v in enumerate(value)]
