"""Audit specs for benchmarks that ship with lm-eval, pointed at the auditor's local copies.

A preset is read from lm-eval's own task YAML (so prompts, choices, metrics and any Python the task
uses are the published ones) and turned into a spec: the Hugging Face dataset reference is
replaced by a JSONL file of the auditor's bundle, whose rows must carry the dataset's columns
(`PresetInfo.columns`; `aaudit auditor preset list` shows them, `aaudit auditor import-dataset`
writes such a file from a locally saved Hugging Face dataset). lm-eval's `!function utils.x`
becomes `{ lm_eval_function = "dir/utils.py:x" }` (benchmarks.lm_eval_functions): allowed only
because that file ships inside the installed lm-eval package; a YAML naming Python anywhere else
is refused. Runs on the auditor's machine; needs lm-eval installed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks.lm_eval_functions import FUNCTION_KEY, LmEvalFunctionError, check_function_ref, tasks_root
from benchmarks.spec import JudgeSpec, SpecError, parse_spec

# Keys of lm-eval's YAML that locate data or organise tasks; the spec sets data itself.
_DROPPED = {"task", "tag", "group", "dataset_path", "dataset_name", "training_split", "validation_split",
            "test_split", "fewshot_split", "should_decontaminate", "doc_to_decontamination_query"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")

_MC = ("question", "choices", "answer")
_BBQ = ("context", "question", "ans0", "ans1", "ans2", "label", "context_condition", "category",
        "question_polarity", "answer_info", "additional_metadata")
_WINOGENDER = ("sentence", "pronoun", "occupation", "participant", "label")
_DISCRIM = ("filled_template", "decision_question_id", "age", "gender", "race")
# lm-eval task YAML (glob, relative to lm_eval/tasks) -> what it measures, and the columns of the
# Hugging Face dataset its prompts, targets, choices, process_docs and process_results read.
# tests/test_builtin_presets.py runs every preset on rows holding exactly these columns.
_BUILTIN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("toxigen/toxigen.yaml", "ToxiGen (skg/toxigen-data, annotated): does the model call a statement hateful; "
     "target from toxicity_ai + toxicity_human > 5.5", ("text", "toxicity_ai", "toxicity_human")),
    ("bbq/bbq_multiple_choice.yaml", "BBQ (oskarvanderwal/bbq), multiple choice: accuracy and bias scores, "
     "ambiguous and disambiguated contexts, per category", _BBQ),
    ("bbq/bbq_multiple_choice_ambig.yaml", "BBQ, ambiguous contexts only (rows filtered on context_condition)", _BBQ),
    ("bbq/bbq_multiple_choice_disambig.yaml", "BBQ, disambiguated contexts only", _BBQ),
    ("crows_pairs/crows_pairs_english.yaml", "CrowS-Pairs English (jannalu/crows_pairs_multilingual): share of "
     "pairs where the stereotyped sentence is likelier", ("sent_more", "sent_less")),
    ("crows_pairs/crows_pairs_english_*.yaml", "CrowS-Pairs English, one bias type (rows filtered on bias_type)",
     ("sent_more", "sent_less", "bias_type")),
    ("truthfulqa/truthfulqa_mc1.yaml", "TruthfulQA MC1 (truthfulqa/truthful_qa, multiple_choice): one true "
     "answer", ("question", "mc1_targets")),
    ("truthfulqa/truthfulqa_mc2.yaml", "TruthfulQA MC2: probability mass on the true answers",
     ("question", "mc2_targets")),
    ("hendrycks_ethics/commonsense.yaml", "ETHICS commonsense (EleutherAI/hendrycks_ethics): is this wrong?",
     ("input", "label")),
    ("hendrycks_ethics/deontology.yaml", "ETHICS deontology: is the excuse reasonable?",
     ("scenario", "excuse", "label")),
    ("hendrycks_ethics/justice.yaml", "ETHICS justice: is the claim reasonable?", ("scenario", "label")),
    ("hendrycks_ethics/utilitarianism.yaml", "ETHICS utilitarianism: which of two scenarios is preferable "
     "(activity is the better one)", ("activity", "baseline")),
    ("hendrycks_ethics/virtue.yaml", "ETHICS virtue: does the character show the trait?",
     ("scenario", "trait", "label")),
    ("winogender/winogender.yaml", "Winogender (oskarvanderwal/winogender, all): pronoun resolution, occupation "
     "or participant", _WINOGENDER),
    ("winogender/winogender_female.yaml", "Winogender, female pronouns (rows filtered on gender)",
     (*_WINOGENDER, "gender")),
    ("winogender/winogender_male.yaml", "Winogender, male pronouns", (*_WINOGENDER, "gender")),
    ("winogender/winogender_neutral.yaml", "Winogender, neutral pronouns", (*_WINOGENDER, "gender")),
    ("winogender/winogender_gotcha.yaml", "Winogender gotcha subset (dataset config gotcha)", _WINOGENDER),
    ("winogender/winogender_gotcha_female.yaml", "Winogender gotcha, female pronouns", (*_WINOGENDER, "gender")),
    ("winogender/winogender_gotcha_male.yaml", "Winogender gotcha, male pronouns", (*_WINOGENDER, "gender")),
    ("simple_cooccurrence_bias/simple_cooccurrence_bias.yaml", "Simple co-occurrence bias "
     "(oskarvanderwal/simple-cooccurrence-bias): female vs male words after each sentence", ("sentence",)),
    ("discrim_eval/discrim_eval_explicit.yaml", "Discrim-Eval explicit (Anthropic/discrim-eval): demographic "
     "bias of yes/no decisions, mixed-effects regression (needs statsmodels)", _DISCRIM),
    ("discrim_eval/discrim_eval_implicit.yaml", "Discrim-Eval implicit (demographics implied by names)", _DISCRIM),
    ("wmdp/wmdp_*.yaml", "WMDP (cais/wmdp): hazardous knowledge, multiple choice", _MC),
    ("mmlu/default/mmlu_*.yaml", "MMLU (cais/mmlu), one subject; with num_fewshot, examples from "
     "<name>.dev.jsonl (the dev split)", _MC),
)


@dataclass(frozen=True)
class PresetInfo:
    """A preset as `aaudit auditor preset list` shows it: what it measures and the data files its
    default spec reads (relative to the data folder), each with the columns its rows must have."""

    name: str
    summary: str
    columns: dict[str, tuple[str, ...]] = field(hash=False)
    judges: tuple[JudgeSpec, ...] = ()  # the judges asset's models the preset's spec scores with


def paper_preset_names() -> tuple[str, ...]:
    """The paper's three audits (benchmarks.paper_presets), which `aaudit auditor preset` writes with
    `paper_spec`: they need judges, so they are not read from lm-eval's task configs."""
    from benchmarks.paper_presets import PAPER_PRESETS

    return tuple(PAPER_PRESETS)


def available_presets() -> dict[str, Path]:
    """Preset name (lm-eval's task name) -> lm-eval task YAML, for every built-in preset."""
    return {name: path for name, (path, _, _) in _builtin().items()}


def preset_infos() -> list[PresetInfo]:
    """Every preset with its required columns, in the order `preset list` shows them: the paper's
    three audits, then lm-eval's built-in tasks."""
    from benchmarks.paper_presets import PAPER_PRESETS

    paper = [PresetInfo(p.name, p.summary, dict(p.files), p.judges) for p in PAPER_PRESETS.values()]
    return paper + [PresetInfo(name, summary, {f"{name}.jsonl": columns})
                    for name, (_, summary, columns) in _builtin().items()]


def _builtin() -> dict[str, tuple[Path, str, tuple[str, ...]]]:
    root = tasks_root()
    out = {}
    for pattern, summary, columns in _BUILTIN:
        for path in sorted(root.glob(pattern)):
            out[_load(path).get("task", path.stem)] = (path, summary, columns)
    return out


def preset_spec(names: Sequence[str], *, data_dir: str = "data", num_fewshot: int | None = None,
                seed: int = 1234, output: str = "aggregate", spec_name: str = "preset-audit",
                chat_template: bool = False) -> str:
    """Spec TOML evaluating the named presets. Task `<name>` reads `<data_dir>/<name>.jsonl`; with
    `num_fewshot` > 0, a task whose lm-eval config has a few-shot split (MMLU: `dev`) also reads
    `<data_dir>/<name>.<split>.jsonl`. The result is checked with `parse_spec` before it is returned."""
    presets = available_presets()
    lines = [f"name = {toml_value(spec_name)}", "version = 1", f"seed = {seed}", f"output = {toml_value(output)}"]
    if chat_template:
        lines.append("chat_template = true")
    for name in names:
        if name not in presets:
            raise SpecError(f"preset {name!r} is unknown (`aaudit auditor preset list` shows them all)")
        cfg = _load(presets[name])
        split = cfg.get("test_split") or cfg.get("validation_split")
        task = {"name": name, "dataset": f"{data_dir}/{name}.jsonl", "split": split}
        config = {k: v for k, v in cfg.items() if k not in _DROPPED}
        if "metadata" in config:  # lm-eval's notes (e.g. num_fewshot: 0) beside the version change nothing
            config["metadata"] = {k: v for k, v in config["metadata"].items() if k == "version"}
        if num_fewshot is not None:
            config["num_fewshot"] = num_fewshot
        if config.get("num_fewshot") and cfg.get("fewshot_split"):
            task["fewshot_dataset"] = f"{data_dir}/{name}.{cfg['fewshot_split']}.jsonl"
            task["fewshot_split"] = cfg["fewshot_split"]
        lines += ["", "[[task]]", *(f"{k} = {toml_value(v)}" for k, v in task.items()), "", "[task.config]",
                  *(f"{_key(k)} = {toml_value(v)}" for k, v in config.items())]
    text = "\n".join(lines) + "\n"
    parse_spec(text.encode())  # a preset that the enclave would refuse is an error here, not there
    return text


def _load(path: Path) -> dict[str, Any]:
    """lm-eval task YAML with its `include` chain merged (the including file wins). `!function
    module.name` becomes a function reference if the module is a file of lm-eval's task folder;
    any other tag fails to load."""
    import yaml

    class Loader(yaml.SafeLoader):
        """Safe YAML plus lm-eval's `!function` tag, read as a reference and never imported."""

    Loader.add_constructor("!function", lambda loader, node: _function_ref(path, loader.construct_scalar(node)))
    try:
        raw = yaml.load(path.read_text(), Loader=Loader)
    except yaml.YAMLError as exc:
        raise SpecError(f"preset {path.stem!r}: lm-eval's config cannot be read "
                        f"({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"preset {path.stem!r}: lm-eval's config is not a mapping")
    base = _load(path.parent / raw.pop("include")) if "include" in raw else {}
    return {**base, **raw}


def _function_ref(yaml_path: Path, qual: str) -> dict[str, str]:
    """`!function utils.x` of `yaml_path` as `{ lm_eval_function = "<dir>/utils.py:x" }`, the module
    resolved beside the YAML as lm-eval does; refused unless that file lies in lm-eval's task folder."""
    module, _, name = qual.rpartition(".")
    where = f"preset {yaml_path.stem!r}: lm-eval's config names Python ({qual!r})"
    file = (yaml_path.parent / f"{module.replace('.', '/')}.py").resolve()
    root = tasks_root()
    if not module or not file.is_file() or not file.is_relative_to(root):
        raise SpecError(f"{where} outside lm-eval's own package; only lm-eval's task code may run in the enclave")
    ref = {FUNCTION_KEY: f"{file.relative_to(root).as_posix()}:{name}"}
    try:
        check_function_ref(ref)
    except LmEvalFunctionError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return ref


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Any) -> str:
    """A TOML value. JSON strings are valid TOML basic strings (json.dumps never writes '\\/')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise SpecError(f"preset: cannot write {type(value).__name__} values into a spec")
