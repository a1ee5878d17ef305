"""PROVISIONAL: replaced by the aggregate branch's module of the same name."""

from __future__ import annotations

import json
from dataclasses import dataclass

from benchmarks.spec import AuditSpec, SpecError


@dataclass(frozen=True)
class TaskSummary:
    name: str
    documents: int
    metrics: tuple[str, ...]


def summarize_tasks(spec: AuditSpec, datasets: dict[str, bytes]) -> tuple[TaskSummary, ...]:
    out = []
    for t in spec.tasks:
        name = t.files.get("test") or next(iter(t.files.values()))
        if name not in datasets:
            raise SpecError(f"task {t.name} reads {name!r}, which is not in the dataset bundle")
        docs = sum(1 for line in datasets[name].decode().split("\n") if line.strip())
        metrics = tuple(f"{m['metric']},none" for m in t.config.get("metric_list", []))
        out.append(TaskSummary(t.name, docs, metrics))
    return tuple(out)


def check_aggregate(spec: AuditSpec, summaries: tuple[TaskSummary, ...], floor: int) -> None:
    need = max(spec.min_documents, floor)
    for s in summaries:
        if spec.output == "aggregate" and s.documents < need:
            raise SpecError(f"task {s.name} has {s.documents} documents; output aggregate needs {need}")
    _ = json
