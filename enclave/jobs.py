"""PROVISIONAL: replaced by the jobs branch (child-process jobs with deadline and cancel)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from verifier.errors import AAuditError


class JobFailed(AAuditError):
    """The job ended without a result."""


class JobDeadline(JobFailed):
    """The job ran past its deadline."""


class JobCancelled(JobFailed):
    """A party cancelled the job."""


def run_job(model_dir: Path, spec: Any, datasets: dict[str, bytes], *, device: str | None, deadline_s: float,
            progress: Callable[[str, float], None], cancel: threading.Event) -> Any:
    from enclave.runner import run_audit

    if cancel.is_set():
        raise JobCancelled("cancelled")
    return run_audit(model_dir, spec, datasets, progress=progress, device=device)
