"""Audit specs for benchmarks that ship with lm-eval, pointed at the auditor's local copies.

A preset is read from lm-eval's own task YAML (so prompts, choices and metrics are the published
ones) and turned into a spec: the Hugging Face dataset reference is replaced by a JSONL file of the
auditor's bundle, whose rows must carry the same columns as that dataset (MMLU and WMDP:
`question`, `choices`, `answer`; TruthfulQA: `question`, `mc1_targets`). Only declarative tasks can
be presets: one whose YAML names Python (`!function`) is refused, since that code would run in the
enclave. Runs on the auditor's machine; needs lm-eval installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from benchmarks.spec import SpecError, parse_spec

# Keys of lm-eval's YAML that locate data or organise tasks; the spec sets data itself.
_DROPPED = {"task", "tag", "group", "dataset_path", "dataset_name", "training_split", "validation_split",
            "test_split", "fewshot_split", "should_decontaminate", "doc_to_decontamination_query"}
_FIXED = ("truthfulqa/truthfulqa_mc1.yaml", "wmdp/wmdp_bio.yaml", "wmdp/wmdp_chem.yaml", "wmdp/wmdp_cyber.yaml")
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def available_presets() -> dict[str, Path]:
    """Preset name -> lm-eval task YAML: the 57 MMLU subjects, WMDP and TruthfulQA MC1."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    files = [root / f for f in _FIXED] + sorted((root / "mmlu" / "default").glob("mmlu_*.yaml"))
    return {p.stem: p for p in files if p.is_file()}


def preset_spec(names: Sequence[str], *, data_dir: str = "data", num_fewshot: int | None = None,
                seed: int = 1234, output: str = "aggregate", spec_name: str = "preset-audit") -> str:
    """Spec TOML evaluating the named presets. Task `<name>` reads `<data_dir>/<name>.jsonl`; with
    `num_fewshot` > 0, a task whose lm-eval config has a few-shot split (MMLU: `dev`) also reads
    `<data_dir>/<name>.<split>.jsonl`. The result is checked with `parse_spec` before it is returned."""
    presets = available_presets()
    lines = [f"name = {_toml(spec_name)}", "version = 1", f"seed = {seed}", f"output = {_toml(output)}"]
    for name in names:
        if name not in presets:
            raise SpecError(f"preset {name!r} is unknown (known: truthfulqa_mc1, wmdp_*, mmlu_<subject>)")
        cfg = _load(presets[name])
        split = cfg.get("test_split") or cfg.get("validation_split")
        task = {"name": name, "dataset": f"{data_dir}/{name}.jsonl", "split": split}
        config = {k: v for k, v in cfg.items() if k not in _DROPPED}
        if num_fewshot is not None:
            config["num_fewshot"] = num_fewshot
        if config.get("num_fewshot") and cfg.get("fewshot_split"):
            task["fewshot_dataset"] = f"{data_dir}/{name}.{cfg['fewshot_split']}.jsonl"
            task["fewshot_split"] = cfg["fewshot_split"]
        lines += ["", "[[task]]", *(f"{k} = {_toml(v)}" for k, v in task.items()), "", "[task.config]",
                  *(f"{_key(k)} = {_toml(v)}" for k, v in config.items())]
    text = "\n".join(lines) + "\n"
    parse_spec(text.encode())  # a preset that the enclave would refuse is an error here, not there
    return text


def _load(path: Path) -> dict[str, Any]:
    """lm-eval task YAML with its `include` chain merged (the including file wins). Plain YAML
    only: a `!function` tag fails to load, which is the point."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as exc:
        raise SpecError(f"preset {path.stem!r}: lm-eval's config names Python code ({exc.problem}); "
                        "it cannot run in the enclave") from None
    base = _load(path.parent / raw.pop("include")) if "include" in raw else {}
    return {**base, **raw}


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml(key)


def _toml(value: Any) -> str:
    """A TOML value. JSON strings are valid TOML basic strings (json.dumps never writes '\\/')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise SpecError(f"preset: cannot write {type(value).__name__} values into a spec")
