"""What each task of a spec will report, from the spec and the auditor's bundle: for the manifest.

With `output = "aggregate"` only lm-eval's aggregates leave the enclave, but an aggregate over one
document is that document's score (`byte_perplexity` of a one-document task is the model's exact
log-likelihood of one prompt of the auditor's choosing). So the run manifest lists, per task, how
many documents lm-eval will score and which result keys it will report, for the provider to read
before approving, and `check_aggregate` refuses tasks below the spec's `min_documents` or the
operator's floor, whichever is higher.

Documents are counted twice: `documents`, the rows lm-eval scores (after the task's own
`process_docs`, when it names lm-eval's, see `scored_documents`), and `distinct`, how many of them
differ in the columns the task's templates read (twenty copies of one question are one document);
the minimum applies to `distinct`. A count bounds what one result reveals, not what several reveal together or what documents of
known score hide: two tasks that differ in one document give its score by difference, and padding
with documents whose score the auditor can predict leaves one real document in the aggregate.
docs/SPEC.md says so; the provider weighs it when approving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.dataset import DatasetError, hf_dataset, parse_jsonl
from benchmarks.lm_eval_functions import LmEvalFunctionError, resolve_functions
from benchmarks.spec import AuditSpec, SpecError, TaskSpec
from verifier.models import canonical_json

NO_FILTER = "none"  # the filter name lm-eval reports results under when a task has no filter_list


@dataclass(frozen=True)
class TaskSummary:
    """One task as the manifest shows it: documents lm-eval will score (rows of the task's evaluated
    file) and the result keys it will report, `<metric>,<filter>` as lm-eval 0.4 names them (each
    also has a `<metric>_stderr,<filter>` beside it)."""

    name: str
    documents: int
    distinct: int               # documents that differ in the columns the task's templates read
    metrics: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "documents": self.documents, "distinct": self.distinct,
                "metrics": list(self.metrics)}


def summarize_tasks(spec: AuditSpec, datasets: dict[str, bytes]) -> tuple[TaskSummary, ...]:
    """A summary per task, in spec order; `datasets` maps bundle file -> bytes. Reads every file a
    task uses (few-shot files too), so a bad bundle is refused before anyone approves it; errors
    name the task and file, never content."""
    rows: dict[str, list[dict[str, Any]]] = {}
    out = []
    for task in spec.tasks:
        for name in task.files.values():
            if name not in rows:
                try:
                    rows[name] = parse_jsonl(name, datasets)
                except DatasetError as exc:
                    raise DatasetError(f"task {task.name!r}: {exc}") from None
        docs = scored_documents(task, rows[task.dataset])
        columns = used_columns(task)
        distinct = len({canonical_json({c: d.get(c) for c in columns} if columns is not None else d) for d in docs})
        out.append(TaskSummary(task.name, len(docs), distinct, result_keys(task)))
    return tuple(out)


def scored_documents(task: TaskSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents lm-eval scores from the rows of the task's evaluated file: the rows themselves,
    or, when the task names lm-eval's own `process_docs` (Winogender's and CrowS-Pairs' subsets
    filter rows, BBQ adds columns), what that function returns for them, run here exactly as lm-eval
    runs it. Otherwise rows that the function drops would count towards `min_documents`. Only then
    are `datasets` and the lm-eval module imported; the dataset stays in memory."""
    ref = task.config.get("process_docs")
    if ref is None:
        return rows
    try:
        processed = resolve_functions(ref)(hf_dataset(rows))
    except LmEvalFunctionError as exc:
        raise LmEvalFunctionError(f"task {task.name!r}: process_docs: {exc}") from None
    return processed.to_list()


def used_columns(task: TaskSpec) -> frozenset[str] | None:
    """The document columns the task's prompt, target and choices read: a plain column name, or the
    variables its Jinja template uses (None when that cannot be told: then whole rows count)."""
    from jinja2 import TemplateSyntaxError, meta

    from benchmarks.spec import _template_env

    columns: set[str] = set()
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        value = task.config.get(key)
        if not isinstance(value, str):
            if value is not None and not isinstance(value, (int, list)):
                return None
            continue
        if "{" not in value:
            columns.add(value)  # lm-eval reads a bare string as a column name when the row has it
            continue
        try:
            columns |= meta.find_undeclared_variables(_template_env().parse(value))
        except (TemplateSyntaxError, RecursionError):  # parse_spec checked it; whole rows count if not
            return None
    return frozenset(columns)


def result_keys(task: TaskSpec) -> tuple[str, ...]:
    """The keys lm-eval puts in the task's results, stderr keys and "alias" left out: every metric
    of `metric_list` under every filter of `filter_list` (or under "none")."""
    filters = [f["name"] for f in task.config.get("filter_list", [])] or [NO_FILTER]
    return tuple(f"{m['metric']},{f}" for f in filters for m in task.config["metric_list"])


def check_aggregate(spec: AuditSpec, summaries: tuple[TaskSummary, ...], floor: int) -> None:
    """Under `output = "aggregate"`, refuse a task with fewer than max(spec min_documents, `floor`)
    documents. `summaries` must be `summarize_tasks(spec, ...)`; `floor` is the operator's."""
    if [s.name for s in summaries] != spec.task_names:
        raise ValueError("check_aggregate needs the summaries of this spec's tasks, in spec order")
    if spec.output != "aggregate":
        return
    need = max(spec.min_documents, floor)
    for s in summaries:
        if s.distinct < need:
            raise SpecError(f"task {s.name!r} has {s.distinct} distinct documents ({s.documents} rows); output = "
                            f"\"aggregate\" needs at least "
                            f"{need} (spec min_documents {spec.min_documents} / operator floor {floor}) so that "
                            "no result is one document's score")
