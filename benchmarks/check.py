"""Check an audit spec on the auditor's own machine before sealing it, so that a mistake costs
seconds here rather than an enclave session, two approvals and a failed job.

Two levels, each a `Verdict` of steps (rendered like the verifier's):

- `check_spec`: what the enclave checks when the spec is uploaded (`parse_spec`: TOML, keys,
  limits, every template compiled in the sandbox, metrics and filters allowed). `aaudit seal spec`
  runs it and refuses to seal a spec the enclave would refuse.
- `check_data`: the spec against the plaintext data (`aaudit auditor check SPEC --data DIR`). Per
  task: its files exist and are JSONL of objects (`parse_jsonl`, the enclave's parser); every row
  has every column the task's templates read; every template renders for every row in the
  runner's own environment (`lm_eval_environment`: lm-eval's filters in the limited sandbox) and
  resolves as lm-eval resolves it (a bare column name, `ast.literal_eval` of choices, digits as an
  index); a multiple-choice target is a valid choice of its row; the few-shot source has enough
  rows; the document count meets `min_documents` (`summarize_tasks` / `check_aggregate`, what the
  enclave enforces).

Every message names the task, the file, the line and the template key or column, never a value of
the row: the data is the auditor's secret, and the output of a check ends up in logs and CI. For
the same reason a template's own exception is reported by type only (its message can quote data).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

from benchmarks.dataset import DatasetError, parse_jsonl, record_line
from benchmarks.judges import METRIC_JUDGE_KIND
from benchmarks.spec import AuditSpec, SpecError, TaskSpec, parse_spec
from benchmarks.summary import check_aggregate, result_keys, summarize_tasks
from benchmarks.templates import TemplateLimit, TemplateUndefined, lm_eval_environment
from verifier.models import Verdict
from verifier.errors import UnusableInput

__all__ = ["TEMPLATE_KEYS", "check_data", "check_spec", "lm_eval_function"]

# The keys of a task config that lm-eval renders per document; few-shot examples use all but
# `description`, which is rendered for the evaluated document only.
TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "description", "gen_prefix")
_FEWSHOT_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix")
SHOWN = 3  # problems spelled out per step; the rest are counted
_MEMO = 10_000  # distinct rendered choice lists remembered per task


def check_spec(data: bytes, subject: str) -> tuple[Verdict, AuditSpec | None]:
    """The spec alone, as the enclave checks it on upload; the parsed spec when it passes."""
    verdict = Verdict(subject)
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        verdict.fail("spec parses", str(exc))
        return verdict, None
    templates = sum(isinstance(t.config.get(k), str) for t in spec.tasks for k in TEMPLATE_KEYS)
    verdict.ok("spec parses", f"{spec.name!r} version {spec.version}, {len(spec.tasks)} task(s), output "
               f"{spec.output}: keys and limits allowed, {templates} template(s) compile in the enclave's sandbox, "
               "metrics and filters allowed for their output types")
    verdict.claims["spec"] = {"name": spec.name, "version": spec.version, "output": spec.output,
                              "min_documents": spec.min_documents if spec.output == "aggregate" else None,
                              "tasks": {t.name: {"output_type": t.config["output_type"],
                                                 "results": list(result_keys(t))} for t in spec.tasks}}
    return verdict, spec


def lm_eval_function(value: Any) -> str | None:
    """The name of the lm-eval function a config value refers to (`!function utils.x`, as
    lm-eval's built-in task YAML writes it, or the function itself once resolved), else None.
    Such a value is lm-eval's own code, run as stock lm-eval runs it: the check cannot render it."""
    if isinstance(value, str) and value.lstrip().startswith("!function"):
        return value.split(None, 1)[1].strip() if len(value.split(None, 1)) == 2 else "?"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return None


def check_data(verdict: Verdict, spec: AuditSpec, folder: Path, *, floor: int) -> None:
    """Add the steps of each task checked against the JSONL files under `folder` (the folder that
    will be sealed as the dataset); `floor` is the enclave operator's least documents per task."""
    env = lm_eval_environment()
    parsed: dict[str, list[dict[str, Any]] | str] = {}  # file -> rows, or why it is unusable
    raw: dict[str, bytes] = {}
    for name in spec.datasets:
        path = folder / name
        try:
            raw[name] = path.read_bytes()
        except FileNotFoundError:
            parsed[name] = f"{name!r} is not in {folder}"
        except IsADirectoryError:
            parsed[name] = f"{name!r} in {folder} is a folder, not a JSONL file"
        except OSError as exc:
            parsed[name] = f"{name!r} in {folder} cannot be read ({exc.strerror or type(exc).__name__})"
        else:
            try:
                parsed[name] = parse_jsonl(name, raw)
            except DatasetError as exc:
                parsed[name] = str(exc)
    read = set(spec.datasets)
    unread = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jsonl")
                    if p.is_file() and p.relative_to(folder).as_posix() not in read)
    if unread:
        verdict.warn(f"no task reads {', '.join(unread[:5])}{' and more' if len(unread) > 5 else ''} in {folder}; "
                     "sealing the folder seals it too")
    documents: dict[str, Any] = {}
    for task in spec.tasks:
        _TaskCheck(task, env, parsed, raw, verdict).run()
        if all(isinstance(parsed[f], list) for f in task.files.values()):
            documents[task.name] = _documents(verdict, spec, task, raw, floor)
    verdict.claims["documents"] = documents


class _Problems:
    """Problems of one step, grouped by file and kind: the first few kinds spelled out with the
    first lines that have them, the rest counted."""

    def __init__(self, raw: dict[str, bytes]) -> None:
        self.raw, self.count = raw, 0
        self.kinds: dict[tuple[str, str], list[int]] = {}  # (file, what) -> row indices

    def add(self, file: str, index: int, what: str) -> None:
        self.count += 1
        rows = self.kinds.get((file, what))
        if rows is not None:
            rows.append(index)
        elif len(self.kinds) < SHOWN:
            self.kinds[(file, what)] = [index]

    def reason(self) -> str:
        parts = []
        for (file, what), rows in self.kinds.items():
            lines = ", ".join(str(record_line(self.raw[file], i)) for i in rows[:SHOWN])
            more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
            parts.append(f"{file} line{'s' if len(rows) > 1 else ''} {lines}{more}: {what}")
        rest = self.count - sum(len(rows) for rows in self.kinds.values())
        return "; ".join(parts) + (f"; and {rest} more problem(s)" if rest else "")


class _Unresolvable(UnusableInput):
    """A template rendered, but not to what lm-eval needs (a list of choices, an index)."""


class _TaskCheck:
    """The data steps of one task: columns, templates rendered, targets, few-shot source."""

    def __init__(self, task: TaskSpec, env: Any, parsed: dict[str, Any], raw: dict[str, bytes],
                 verdict: Verdict) -> None:
        self.task, self.env, self.parsed, self.raw, self.verdict = task, env, parsed, raw, verdict
        self.cfg = task.config
        self.step = f"task {task.name}"
        self.output_type = self.cfg["output_type"]
        self.has_choice = self.cfg.get("doc_to_choice") is not None
        self.choice_memo: dict[str, Any] = {}
        # The project's metrics (judges, ROUGE-L) score one reference per document: a list fails the job
        self.one_reference = sorted(m["metric"] for m in self.cfg["metric_list"] if m["metric"] in METRIC_JUDGE_KIND)

    def run(self) -> None:
        files = list(dict.fromkeys(self.task.files.values()))
        bad = [self.parsed[f] for f in files if isinstance(self.parsed[f], str)]
        if bad:
            self.verdict.fail(f"{self.step}: data files", "; ".join(bad))
            for what in ("columns", "templates render"):
                self.verdict.skip(f"{self.step}: {what}", "not checked: a data file is unusable")
            return
        self.verdict.ok(f"{self.step}: data files", ", ".join(
            f"{f}: {len(self.parsed[f])} rows, JSONL of objects" for f in files))
        # lm-eval's `features`: every column of the evaluated file (a row without one reads None there)
        self.features = dict.fromkeys(k for row in self.parsed[self.task.dataset] for k in row)
        self.keys = [k for k in TEMPLATE_KEYS if k in self.cfg]
        functions = {k: fn for k in self.keys if (fn := lm_eval_function(self.cfg[k])) is not None}
        if functions:
            self.verdict.skip(f"{self.step}: lm-eval functions", "not checked: lm-eval function " + ", ".join(
                f"{fn} ({k})" for k, fn in functions.items()) + "; it ships with lm-eval and runs as stock lm-eval "
                "runs it")
        self.keys = [k for k in self.keys if k not in functions]
        self.templates = {k: self._compile(k) for k in self.keys if self._is_template(k)}
        self._columns(files)
        self._render(files)
        self._fewshot()

    def _is_template(self, key: str) -> bool:
        value = self.cfg[key]
        return isinstance(value, str) and value not in self.features

    def _compile(self, key: str) -> Any:
        template = self.env.from_string(self.cfg[key])
        template.owner = key  # so a limit or undefined variable names the key
        # The same globals as a plain dict: Jinja copies them into every render's context, and
        # copying its ChainMap costs more than the rendering of a short prompt.
        template.globals = dict(template.globals)
        return template

    def _columns(self, files: list[str]) -> None:
        """Every column a template reads (or a key names) is in every row that lm-eval renders it for."""
        used: dict[str, list[str]] = {}  # column -> keys reading it
        for key in self.keys:
            value = self.cfg[key]
            if not isinstance(value, str):
                continue
            if value in self.features:
                used.setdefault(value, []).append(key)
            elif key in self.templates:
                names = _variables(self.env, value) - set(self.env.globals)
                for name in sorted(names):
                    used.setdefault(name, []).append(key)
                if not names and key in ("doc_to_text", "doc_to_target", "doc_to_choice") and value.isidentifier():
                    self.verdict.warn(f"task {self.task.name!r}: {key} {value!r} is not a column of "
                                      f"{self.task.dataset}, so lm-eval reads it as literal text")
        problems = _Problems(self.raw)
        self.lacking: dict[str, set[int]] = {f: set() for f in files}
        for file in files:
            keys_here = set(self._keys_for(file))
            wanted = {c: [k for k in ks if k in keys_here] for c, ks in used.items()}
            wanted = {c: ks for c, ks in wanted.items() if ks}
            need = set(wanted)
            for i, row in enumerate(self.parsed[file]):
                if not need <= row.keys():
                    self.lacking[file].add(i)
                    for col in sorted(need - row.keys()):
                        problems.add(file, i, f"no column {col!r} ({', '.join(wanted[col])} reads it)")
        if problems.count:
            self.verdict.fail(f"{self.step}: columns", problems.reason())
        else:
            self.verdict.ok(f"{self.step}: columns", (f"{', '.join(sorted(used))} in every row" if used
                                                      else "the templates read no column"))

    def _keys_for(self, file: str) -> list[str]:
        """The keys lm-eval renders for rows of `file`: the few-shot file only serves as examples."""
        keys = list(self.keys)
        if file != self.task.dataset:
            keys = [k for k in keys if k in _FEWSHOT_KEYS]
        if file == self.task.dataset or self.cfg.get("num_fewshot", 0) > 0:
            return keys
        return []

    def _render(self, files: list[str]) -> None:
        """Render every template for every row and check what lm-eval would make of the result."""
        rendered, targets = _Problems(self.raw), _Problems(self.raw)
        rows_done = 0
        for file in files:
            keys = self._keys_for(file)
            if not keys:
                continue
            columns = dict.fromkeys(k for row in self.parsed[file] for k in row)  # this file's own dataset
            for i, row in enumerate(self.parsed[file]):
                if i in self.lacking[file]:
                    continue
                doc = row if len(row) == len(columns) else {c: row.get(c) for c in columns}
                values: dict[str, Any] = {}
                for key in keys:
                    try:
                        values[key] = self._value(key, doc)
                    except _Unresolvable as exc:
                        rendered.add(file, i, f"{key}: {exc}")
                    except (TemplateUndefined, TemplateLimit) as exc:
                        rendered.add(file, i, str(exc))
                    except Exception as exc:  # noqa: BLE001 - any error of the auditor's template, by type only
                        rendered.add(file, i, f"{key}: rendering raised {type(exc).__name__} (its message is not "
                                     "shown: it may quote the row)")
                for key in ("description", "gen_prefix"):
                    if key in values and not isinstance(values[key], (str, type(None))):
                        rendered.add(file, i, f"{key} gives {_kind(values[key])}, not text")
                        values.pop(key)
                if len(values) == len(keys):
                    rows_done += 1
                    problem = self._target_problem(values)
                    if problem is not None:
                        targets.add(file, i, problem)
        skipped = sum(len(s) for s in self.lacking.values())
        note = f" ({skipped} row(s) lacking a column not rendered)" if skipped else ""
        if rendered.count:
            self.verdict.fail(f"{self.step}: templates render", rendered.reason() + note)
        else:
            self.verdict.ok(f"{self.step}: templates render", f"{', '.join(self.keys)} resolve for {rows_done} "
                            f"row(s) in the enclave's sandbox, as lm-eval resolves them{note}")
        if self.output_type not in _TARGET_RULE and not self.one_reference:
            return
        if targets.count:
            self.verdict.fail(f"{self.step}: targets", targets.reason())
        elif rendered.count or skipped:
            self.verdict.skip(f"{self.step}: targets", "checked only for the rows that rendered: fix those first")
        else:
            self.verdict.ok(f"{self.step}: targets", _TARGET_RULE.get(
                self.output_type, f"every reference is one text, as {', '.join(self.one_reference)} needs"))

    def _value(self, key: str, doc: dict[str, Any]) -> Any:
        """What lm-eval 0.4's ConfigurableTask makes of `key` for the document `doc`."""
        value = self.cfg[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, list, dict)):
            raise _Unresolvable("the value is not a template, a column name, a number or a list")
        if isinstance(value, int) or isinstance(value, list):
            return value
        if isinstance(value, dict):
            return list(value.values())
        if value in (doc if key == "description" else self.features):
            return doc[value]
        text = self.templates[key].render(**doc)
        if key == "doc_to_choice":
            return self._choices(text)
        if key in ("doc_to_text", "doc_to_target") and text.isdigit() and self.has_choice:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):  # digits literal_eval does not read, e.g. superscripts
                raise _Unresolvable("renders to digits that are not a number; lm-eval would fail on it") from None
        if key == "doc_to_target" and len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return text
        return text

    def _choices(self, text: str) -> Any:
        """`ast.literal_eval(text)`, as lm-eval reads rendered choices; remembered, since choice
        lists repeat across rows and parsing is most of the cost of a row."""
        if text in self.choice_memo:
            return self.choice_memo[text]
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise _Unresolvable("does not render to a Python list literal (lm-eval reads it with "
                                "ast.literal_eval)") from None
        if len(self.choice_memo) < _MEMO:
            self.choice_memo[text] = value
        return value

    def _target_problem(self, values: dict[str, Any]) -> str | None:
        """Why the resolved values are unusable for the task's output type, or None."""
        text, target = values.get("doc_to_text"), values.get("doc_to_target")
        if self.one_reference and isinstance(target, list) and len(target) != 1:
            return f"doc_to_target gives a list; {', '.join(self.one_reference)} scores one reference per document"
        if self.output_type != "multiple_choice":
            if self.output_type in ("loglikelihood", "loglikelihood_rolling") and "doc_to_target" in values \
                    and not isinstance(target, str):
                return f"doc_to_target gives {_kind(target)}; {self.output_type} scores a text continuation"
            return None
        if "doc_to_choice" not in values:
            return None
        choices = values["doc_to_choice"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            return f"doc_to_choice gives {_kind(choices)}, not a non-empty list of strings"
        if _is_int(text):  # lm-eval's "multiple inputs": the text picks the context, the target is a continuation
            gold, key = text, "doc_to_text"
        elif "doc_to_target" in values:
            gold, key = target, "doc_to_target"
        else:
            return None
        if isinstance(gold, list):
            if not gold or not all(_is_int(g) and 0 <= g < len(choices) for g in gold):
                return f"{key} gives a list that is not of indices of the row's choices"
        elif _is_int(gold):
            if not 0 <= gold < len(choices):
                return f"{key} gives an index outside the row's choices"
        elif isinstance(gold, str):
            if gold not in choices:
                return f"{key} gives a label that is not one of the row's choices"
        else:
            return f"{key} gives {_kind(gold)}, neither a choice index nor a choice label"
        return None

    def _fewshot(self) -> None:
        """Enough rows for `num_fewshot` examples: lm-eval's samplers fail on fewer."""
        n = self.cfg.get("num_fewshot", 0)
        step = f"{self.step}: few-shot examples"
        if not n:
            return
        if self.task.fewshot_dataset is not None:
            have = len(self.parsed[self.task.fewshot_dataset])
            self.verdict.check(step, have >= n, f"{n} per document from {self.task.fewshot_dataset} ({have} rows)",
                               f"num_fewshot is {n} but {self.task.fewshot_dataset} has {have} row(s)")
            return
        have = len(self.parsed[self.task.dataset])
        if self.verdict.check(step, have >= n, f"{n} per document drawn from {self.task.dataset} itself ({have} rows)",
                              f"num_fewshot is {n} but {self.task.dataset}, the examples' source without a "
                              f"fewshot_dataset, has {have} row(s)"):
            self.verdict.warn(f"task {self.task.name!r}: few-shot examples come from the evaluated file itself, so "
                              "a document can be its own example (lm-eval's rule without a separate few-shot "
                              "split); set fewshot_dataset to keep them apart")


# What the targets step checks, per output type (a generation's reference is compared as text,
# whatever it is).
_TARGET_RULE = {
    "multiple_choice": "every doc_to_choice is a non-empty list of strings and every target a valid choice of its "
                       "row (an index in range or one of the labels)",
    "loglikelihood": "every doc_to_target is a text continuation",
    "loglikelihood_rolling": "every doc_to_target is a text",
}


def _documents(verdict: Verdict, spec: AuditSpec, task: TaskSpec, raw: dict[str, bytes], floor: int) -> dict[str, Any]:
    """The enclave's own count for the manifest and its `min_documents` rule, for this task."""
    one = dataclasses.replace(spec, tasks=(task,))
    (summary,) = summarize_tasks(one, {f: raw[f] for f in task.files.values()})
    step = f"task {task.name}: documents"
    counted = f"{summary.documents} documents, {summary.distinct} distinct in the columns the templates read"
    try:
        check_aggregate(one, (summary,), floor)
    except SpecError as exc:
        verdict.fail(step, str(exc))
    else:
        verdict.ok(step, counted + (f"; output = \"aggregate\" needs {max(spec.min_documents, floor)}"
                                    if spec.output == "aggregate" else "; no minimum for aggregate+samples"))
    return {"documents": summary.documents, "distinct": summary.distinct}


def _variables(env: Any, source: str) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(env.parse(source)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    """A value's kind for a message, never the value: a row's content is secret."""
    if value is None:
        return "nothing (null)"
    names: dict[type, str] = {str: "text", bool: "a boolean", int: "a number", float: "a number",
                              list: "a list", dict: "an object", tuple: "a tuple"}
    return names.get(type(value), f"a {type(value).__name__}")

