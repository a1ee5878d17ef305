"""What each task of a spec will report, from the spec and the auditor's bundle: for the manifest.

With `output = "aggregate"` only lm-eval's aggregates leave the enclave, but an aggregate over one
document is that document's score (`byte_perplexity` of a one-document task is the model's exact
log-likelihood of one prompt of the auditor's choosing). So the run manifest lists, per task, how
many documents lm-eval will score and which result keys it will report, for the provider to read
before approving, and `check_aggregate` refuses tasks below the spec's `min_documents` or the
operator's floor, whichever is higher.

A count bounds what one result reveals, not what several reveal together or what documents of
known score hide: two tasks that differ in one document give its score by difference, and padding
with documents whose score the auditor can predict leaves one real document in the aggregate.
docs/SPEC.md says so; the provider weighs it when approving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.dataset import DatasetError, parse_jsonl
from benchmarks.spec import AuditSpec, SpecError, TaskSpec

NO_FILTER = "none"  # the filter name lm-eval reports results under when a task has no filter_list


@dataclass(frozen=True)
class TaskSummary:
    """One task as the manifest shows it: documents lm-eval will score (rows of the task's evaluated
    file) and the result keys it will report, `<metric>,<filter>` as lm-eval 0.4 names them (each
    also has a `<metric>_stderr,<filter>` beside it)."""

    name: str
    documents: int
    metrics: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "documents": self.documents, "metrics": list(self.metrics)}


def summarize_tasks(spec: AuditSpec, datasets: dict[str, bytes]) -> tuple[TaskSummary, ...]:
    """A summary per task, in spec order; `datasets` maps bundle file -> bytes. Reads every file a
    task uses (few-shot files too), so a bad bundle is refused before anyone approves it; errors
    name the task and file, never content."""
    counts: dict[str, int] = {}
    out = []
    for task in spec.tasks:
        for name in task.files.values():
            if name not in counts:
                try:
                    counts[name] = len(parse_jsonl(name, datasets))
                except DatasetError as exc:
                    raise DatasetError(f"task {task.name!r}: {exc}") from None
        out.append(TaskSummary(name=task.name, documents=counts[task.dataset], metrics=result_keys(task)))
    return tuple(out)


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
        if s.documents < need:
            raise SpecError(f"task {s.name!r} has {s.documents} documents; output = \"aggregate\" needs at least "
                            f"{need} (spec min_documents {spec.min_documents} / operator floor {floor}) so that "
                            "no result is one document's score")
