"""A spec as stock lm-eval tasks: one YAML per task and the `lm_eval` command line that reproduces
the enclave's numbers from the plaintext model and data (`aaudit auditor export-lm-eval`).

The YAML is `spec_to_lm_eval_yaml`'s (the task config the runner gives lm-eval, with the data read
by lm-eval's `json` loader instead of from memory); the command line loads the model as the
enclave does (`lm_eval_cli_args`) and seeds Python, numpy, torch and the few-shot sampler with the
spec's seed, as `run_audit` does.
"""

from __future__ import annotations

import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from benchmarks.judges import METRIC_JUDGE_KIND
from benchmarks.spec import AuditSpec, lm_eval_cli_args, lm_eval_prompt_args, spec_to_lm_eval_yaml
from verifier.errors import UnusableInput

README = "README.md"


def lm_eval_command(spec: AuditSpec, include_path: str, model_dir: str) -> list[str]:
    """`lm_eval ...` for the spec's tasks as `export_lm_eval` writes them to `include_path`."""
    return ["lm_eval", *lm_eval_cli_args(spec.engine, model_dir), *lm_eval_prompt_args(spec), "--include_path",
            include_path, "--tasks", ",".join(spec.task_names), "--seed", str(spec.seed)]


def export_lm_eval(spec: AuditSpec, out: Path, *, data_dir: str, model_dir: str) -> list[Path]:
    """Write `<task>.yaml` per task and a README with the command into `out`; return the paths.
    Existing files are never overwritten (a folder of tasks from another spec would mix in)."""
    files = {f"{name}.yaml": text for name, text in spec_to_lm_eval_yaml(spec, data_dir).items()}
    files[README] = _readme(spec, str(out), data_dir, model_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnusableInput(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    clash = sorted(name for name in files if (out / name).exists())
    if clash:
        raise UnusableInput(f"--out {out} already holds {', '.join(clash)}; remove them or choose another folder")
    written = []
    for name, text in files.items():
        try:
            (out / name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UnusableInput(f"--out {out}: cannot write {name} ({exc.strerror or exc})") from None
        written.append(out / name)
    return written


def _readme(spec: AuditSpec, include_path: str, data_dir: str, model_dir: str) -> str:
    try:
        lm_eval = f"lm-eval {version('lm_eval')}"
    except PackageNotFoundError:  # the YAML is still lm-eval 0.4's; only the version line is missing
        lm_eval = "lm-eval"
    command = shlex.join(lm_eval_command(spec, include_path, model_dir))
    own = project_metrics(spec)
    note = (f"\nTasks {', '.join(own)} use the project's own metrics, which stock lm-eval does not register: "
            "reproduce them with `benchmarks.judges.judge_metrics` around `lm_eval.simple_evaluate` (docs/SPEC.md, "
            "\"Judges and judge metrics\").\n") if own else ""
    return f"""# Spec {spec.name!r} (version {spec.version}) as stock lm-eval tasks

Written by `aaudit auditor export-lm-eval` for {lm_eval}. One YAML per task: the task config the
enclave gives lm-eval, with the data read by lm-eval's `json` loader from `{data_dir}`
(a relative path is relative to the folder `lm_eval` runs in). With the plaintext model in
`{model_dir}`, this reproduces the audit's numbers:

    {command}

`--seed` seeds Python, numpy, torch and the few-shot sampler with the spec's seed, as the enclave
does; the model options are the spec's `[engine]`. Add `--log_samples --output_path OUT` for the
per-sample records. The `datasets` library keeps an Arrow copy of the data in its cache
(`HF_DATASETS_CACHE`): keep that on a private disk, or delete it after the run.
{note}"""


def project_metrics(spec: AuditSpec) -> list[str]:
    """The tasks that score with the project's own metrics (judges, ROUGE-L), which `lm_eval` alone lacks."""
    return [t.name for t in spec.tasks if any(m["metric"] in METRIC_JUDGE_KIND for m in t.config["metric_list"])]
