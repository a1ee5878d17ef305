"""Each audit job in its own child process, supervised by the enclave server.

The runner changes process-wide state (environment, lm-eval's template environment and log level),
runs spec templates that may loop for ever, and holds the decrypted data and model. In a child
process all of that ends with the job: the server enforces a deadline and a cancel by killing the
child (SIGTERM, then SIGKILL after `GRACE_S`), and a crash costs one job, not the enclave.

Start method: "forkserver", with torch, transformers, datasets and lm-eval preloaded in the fork
server (PRELOAD). A plain fork of the threaded gRPC server could copy a lock held by another thread
and would copy the enclave's keys; "spawn" starts a fresh interpreter and imports torch and lm-eval
for every job. Measured on the 2-core build machine under load: a job that fails on its first step
takes 0.04 s from a warm fork server (tests/test_jobs.py::test_start_overhead prints it), while a
fresh interpreter needs 10 s to import the same modules; the fork server pays that once, at
`prewarm()` or the first job. The fork server is started from the server by exec, never holds the
keys, and forks only from its single Python thread (torch and pyarrow leave idle native threads
that are fork-safe before CUDA is initialised, as in PyTorch's own DataLoader workers). Each child
receives only what `run_job` sends over its pipe: the model folder's path, the spec, the dataset
bytes, the device and the judges folder's path (if the spec names judges). As with any spawn or forkserver child, multiprocessing re-imports the
server's main module as `__mp_main__`, so entry points keep their work (and key creation) under
`if __name__ == "__main__"` or in functions, as `aaudit` does.

Wire protocol on the job's duplex pipe (pickle frames of multiprocessing.Connection):
parent -> child: `(model_dir: str, spec, device, names, judges_dir: str | None)` then one
`send_bytes` per dataset in `names` order (bytes never pass through a file or a second pickle copy);
child -> parent: JSON arrays, never pickles (the child runs a party's templates and model, so the
server does not unpickle what it sends): any number of `["progress", stage, fraction, message]`, then
`["done", {AuditRun's fields}]` or `["failed", message]`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from benchmarks.spec import AuditSpec
from enclave.runner import AuditRun
from verifier.errors import AAuditError

GRACE_S = 1.0  # between SIGTERM and SIGKILL
POLL_S = 0.1  # how often the supervisor looks at the cancel event and the clock
# Imported once in the fork server, so that each job starts without importing them again.
# transformers imports lazily: without its model, tokenizer and generation modules here, every job
# imported ~1,000 modules (transformers' modeling and distributed code, torch._dynamo and
# torch.distributed, sympy) between "loading model" and its first request, 2.2 s of a 7M-parameter
# audit on the 2-core machine. Llama's modeling module is the audited architecture's; a model of
# another architecture imports its own module in the job. None of these initialise CUDA or start a
# thread, so the fork server stays fork-safe.
# transformers' quantizer registry imports torchao (when installed) at every model load: preloaded too,
# after enclave._quiet has turned its import-time warnings off.
PRELOAD = ("enclave._quiet", "enclave.runner", "torch", "transformers", "datasets", "lm_eval", "lm_eval.evaluator",
           "lm_eval.models.huggingface", "lm_eval.tasks", "sacrebleu", "sklearn.metrics",
           "transformers.modeling_utils", "transformers.generation.utils", "transformers.quantizers.auto",
           "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama")


class JobFailed(AAuditError):
    """The job did not produce a run. The message is safe to show to both parties: it never holds
    secrets or data text (an AAuditError's own message, else only an exception's type name)."""


class JobDeadline(JobFailed):
    """The job ran past its deadline and was stopped."""


class JobCancelled(JobFailed):
    """The job was cancelled (by a party, or by the server shutting down) and was stopped."""


def prewarm() -> None:
    """Start the fork server now (at boot); its imports then run in the background instead of
    delaying the first job."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with PRELOAD set before the fork server first starts."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def run_job(model_dir: Path, spec: AuditSpec, datasets: dict[str, bytes], *, device: str | None,
            deadline_s: float, progress: Callable[[str, float, str], None], cancel: threading.Event,
            judges_dir: Path | None = None) -> AuditRun:
    """Run `enclave.runner.run_audit` in a child process and return its `AuditRun`; `judges_dir` is
    the unsealed judges asset (the spec's `[[judge]]` models), None when the spec names none.

    Blocks; calls `progress(stage, fraction, message)` in this thread as the child reports. Raises
    JobDeadline after `deadline_s` seconds (counted from this call), JobCancelled soon after
    `cancel` is set, JobFailed if the child raises or dies.
    """
    names = list(datasets)

    def send(conn: Connection) -> None:
        conn.send((str(model_dir), spec, device, names, None if judges_dir is None else str(judges_dir)))
        for name in names:
            conn.send_bytes(datasets[name])

    return supervise(_child_main, "audit job", send, _parse, deadline_s=deadline_s, progress=progress, cancel=cancel)


def supervise(child_main: Callable[[Connection], None], what: str, send: Callable[[Connection], None],
              parse: Callable[[bytes], list], *, deadline_s: float, progress: Callable[[str, float, str], None],
              cancel: threading.Event) -> Any:
    """Start `child_main` in a child of the fork server, `send` it its inputs over the pipe, relay its
    progress, and return what it reports as done (messages read with `parse`). The one supervisor of
    every kind of job (`what`: "audit job", "prepare job"): a deadline, a cancel and a dead child
    end it the same way, the child stopped."""
    deadline = time.monotonic() + deadline_s
    context = _context()
    ours, theirs = context.Pipe(duplex=True)
    child = context.Process(target=child_main, args=(theirs,), name=what.replace(" ", "-"), daemon=True)
    try:
        child.start()
        theirs.close()
        send(ours)
        while True:
            if cancel.is_set():
                raise JobCancelled(f"the {what} was cancelled and its process stopped")
            if time.monotonic() >= deadline:
                raise JobDeadline(f"the {what} ran past its deadline of {deadline_s:g} s and was stopped")
            if not ours.poll(POLL_S):
                continue
            kind, *fields = parse(ours.recv_bytes())
            if kind == "done":
                child.join(GRACE_S)  # let it exit on its own; _stop below ends it otherwise
                return fields[0]
            if kind == "failed":
                raise JobFailed(fields[0])
            progress(*fields)
    except (EOFError, OSError):  # the child closed its end without a verdict: it died
        if child.pid is not None:
            child.join(GRACE_S)
        raise JobFailed(f"the {what}'s process ended unexpectedly ({_exit_reason(child.exitcode)})") from None
    finally:
        _stop(child)
        ours.close()


def _stop(child: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM, then SIGKILL after GRACE_S; returns once the child is gone (or was never started)."""
    if child.pid is None:
        return
    if child.exitcode is None:
        child.terminate()
        child.join(GRACE_S)
    if child.exitcode is None:
        child.kill()
        child.join()


def parse_message(data: bytes, done: Callable[[dict[str, Any]], Any], what: str) -> list:
    """One message from a job's child, checked: `["progress", str, number, str]`, `["failed", str]`
    or `["done", {...}]`, whose fields `done` turns into the job's result (raising TypeError or
    ValueError when they are not what the job reports). JSON, never pickles: the child ran code
    near the parties' files."""
    try:
        kind, *fields = json.loads(data)
        if kind == "progress" and len(fields) == 3 and isinstance(fields[0], str) \
                and isinstance(fields[1], (int, float)) and isinstance(fields[2], str):
            return [kind, *fields]
        if kind == "failed" and len(fields) == 1 and isinstance(fields[0], str):
            return [kind, *fields]
        if kind == "done" and len(fields) == 1 and isinstance(fields[0], dict):
            return [kind, done(fields[0])]
    except (ValueError, TypeError):
        pass
    raise JobFailed(f"the {what}'s process sent a malformed message and was stopped")


def _parse(data: bytes) -> list:
    return parse_message(data, lambda fields: AuditRun(**fields), "audit job")


def _send(conn: Connection, *message: object) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _child_main(conn: Connection) -> None:
    """The job process: receive the inputs, run the audit, send progress and the verdict."""
    _die_with_parent()
    _detach()
    model_dir, spec, device, names, judges_dir = conn.recv()
    datasets = {name: conn.recv_bytes() for name in names}
    try:
        from enclave.runner import run_audit

        run = run_audit(Path(model_dir), spec, datasets, device=device,
                        judges_dir=None if judges_dir is None else Path(judges_dir),
                        progress=lambda stage, fraction, message: _send(conn, "progress", stage, float(fraction),
                                                                        message))
    except AAuditError as exc:
        _send(conn, "failed", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # any other message may quote data; only the type is safe to show
        _send(conn, "failed", type(exc).__name__)
    else:
        _send(conn, "done", dataclasses.asdict(run))
    conn.close()


def _detach() -> None:
    """Keep the job's own output out of the enclave's log, and its signals with the supervisor.

    The libraries a job runs print progress bars and warnings, some quoting documents (the
    auditor's secret), to a log the host operator reads: the job's stdout and stderr go to
    /dev/null, and only what `run_job` reports leaves the job. A Ctrl-C on the enclave's terminal
    reaches the whole process group; the job ignores it, since the server stops it (SIGTERM) as it
    shuts down. tqdm's bars share a lock that it makes as a multiprocessing semaphore; a job
    stopped by SIGTERM could not release it, and the resource tracker would report it leaked at
    shutdown, so the job uses a thread lock (it draws bars from one process only).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the fork server, which exits with the
    enclave server) goes, so that a killed server leaves no job running."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
