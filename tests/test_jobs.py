"""Audit jobs in supervised child processes: results as in-process, deadlines, cancel, shutdown,
no keys and no plaintext files in the child's reach."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, gen_records, mc_records, write_demo_data
from benchmarks.spec import AuditSpec, parse_spec
from enclave.jobs import JobCancelled, JobDeadline, JobFailed, prewarm, run_job
from enclave.keys import BootKeys
from verifier.models import canonical_json

ROOT = Path(__file__).resolve().parent.parent
MARKER = mc_records()[0]["question"].encode()  # a plaintext string of the auditor's data
MC_TASK = "[[task]]".join(demo_spec_toml().split("[[task]]")[:2])
# The demo's generation task scored with bleu (bootstrapped stderr) as well as exact match.
BLEU_SPEC = demo_spec_toml().replace(
    '  { metric = "exact_match",', '  { metric = "bleu" },\n  { metric = "exact_match",')


def mc_spec(doc_to_text: str) -> AuditSpec:
    toml = MC_TASK.replace('doc_to_text = "Question: {{question}}\\nAnswer:"',
                           "doc_to_text = " + json.dumps(doc_to_text), 1)
    assert toml != MC_TASK
    return parse_spec(toml.encode())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    build_tiny_model(root / "model")
    write_demo_data(root)
    prewarm()
    return root


def data(demo: Path, spec: AuditSpec) -> dict[str, bytes]:
    return {name: (demo / name).read_bytes() for name in spec.datasets}


def job(demo: Path, spec: AuditSpec, *, deadline_s: float = 300, cancel: threading.Event | None = None,
        progress: Callable[[str, float, str], None] = lambda stage, fraction, message: None) -> Any:
    return run_job(demo / "model", spec, data(demo, spec), device="cpu", deadline_s=deadline_s,
                   progress=progress, cancel=cancel or threading.Event())


def test_template_building_a_huge_string_fails_fast_naming_the_task(demo: Path):
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"TemplateLimit: task 'aa_demo_mc': str \* 10000000000 would exceed"):
        job(demo, mc_spec("{{ 'x' * 10**10 }}{{question}}"))
    assert time.monotonic() - started < 60


def test_template_that_loops_for_ever_ends_at_the_deadline(demo: Path):
    spec = mc_spec("{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
                   "{% endfor %}{% endfor %}{% endfor %}{{question}}")
    started = time.monotonic()
    with pytest.raises(JobDeadline, match="ran past its deadline of 6 s and was stopped"):
        job(demo, spec, deadline_s=6)
    assert time.monotonic() - started < 6 + 3
    assert not [p for p in multiprocessing.active_children() if p.name == "audit-job"]


def test_failure_messages_never_quote_the_data(demo: Path):
    """A non-AAuditError from the child is reported by type only: here lm-eval's SecurityError for
    a data-driven escape, whose message could quote the document."""
    rows = [{**r, "key": "__class__"} for r in mc_records()]
    spec = mc_spec("{{ question[key] }}")
    with pytest.raises(JobFailed) as info:
        run_job(demo / "model", spec, {"mc.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()},
                device="cpu", deadline_s=300, progress=lambda s, f, m: None, cancel=threading.Event())
    assert str(info.value) == "SecurityError"
    with pytest.raises(JobFailed, match="DatasetError: mc.jsonl: line 1: not JSON") as info:
        run_job(demo / "model", spec, {"mc.jsonl": MARKER + b"\n"}, device="cpu", deadline_s=300,
                progress=lambda s, f, m: None, cancel=threading.Event())
    assert MARKER.decode() not in str(info.value)


@pytest.fixture(scope="module")
def good(demo: Path) -> dict[str, Any]:
    """A full job after the failing ones above: the same supervisor still runs jobs."""
    events: list[tuple[str, float, str, float]] = []
    started = time.monotonic()
    run = job(demo, parse_spec(BLEU_SPEC.encode()),
              progress=lambda s, f, m: events.append((s, f, m, time.monotonic() - started)))
    return {"run": run, "events": events}


def test_a_later_job_runs_and_bootstraps_bleu_in_process(good: dict[str, Any]):
    run = good["run"]
    assert run.n_samples["aa_demo_gen"] == {"original": 18, "effective": 18}
    assert isinstance(run.results["aa_demo_gen"]["bleu_stderr,strip"], float)
    assert 0.0 <= run.results["aa_demo_mc"]["acc,none"] <= 1.0
    stages = [s for s, _, _, _ in good["events"]]
    assert stages[0] == "loading model" and stages[-1] == "done"
    assert ("generate_until", "18/18 requests (phase 2 of 2)") in {(s, m) for s, _, m, _ in good["events"]}


def test_records_hash_reference_text_keep_the_prediction(good: dict[str, Any]):
    records = [r for r in good["run"].records if r["task"] == "aa_demo_gen"]
    answers = [row["answer"] for row in gen_records()]
    for rec in records:
        reference, prediction = rec["metrics"]["bleu"]
        assert reference == hashlib.sha256(canonical_json(answers[rec["doc_id"]])).hexdigest()
        assert prediction == rec["response"]
    public = canonical_json(good["run"].records)
    assert not [a for a in answers if json.dumps(a).encode() in public and len(a) > 3]


def test_start_overhead(demo: Path):
    """A whole job that fails on its first step (the dataset check), with the fork server warm:
    the cost of starting a job process, sending it the inputs and hearing back (printed)."""
    def failing_job() -> float:
        started = time.monotonic()
        with pytest.raises(JobFailed, match="DatasetError"):
            run_job(demo / "model", parse_spec(MC_TASK.encode()), {"mc.jsonl": b"[1]\n"}, device="cpu",
                    deadline_s=300, progress=lambda s, f, m: None, cancel=threading.Event())
        return time.monotonic() - started

    failing_job()  # waits for the fork server's imports if they are still running
    overhead = min(failing_job() for _ in range(3))
    print(f"job start overhead (warm fork server): {overhead:.3f} s")
    assert overhead < 3


def test_cancel_stops_the_child_within_two_seconds(demo: Path):
    cancel = threading.Event()
    pids: list[int] = []
    set_at: list[float] = []

    def cancel_mid_run(stage: str, fraction: float, message: str) -> None:
        if stage.startswith("loglikelihood") and not cancel.is_set():
            pids.extend(p.pid for p in multiprocessing.active_children() if p.name == "audit-job")
            set_at.append(time.monotonic())
            cancel.set()

    with pytest.raises(JobCancelled, match="cancelled"):
        job(demo, parse_spec(BLEU_SPEC.encode()), cancel=cancel, progress=cancel_mid_run)
    assert time.monotonic() - set_at[0] < 2.0
    assert len(pids) == 1 and not Path(f"/proc/{pids[0]}").exists()


def readable_memory(pid: int) -> bytes:
    """Every readable mapping of a process (the scan a debugger would do)."""
    out = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                out.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(out)


def test_the_child_never_holds_the_enclave_keys(demo: Path):
    """Scan the job process's whole memory mid-run: the dataset is there (so the scan works), the
    enclave's private keys, alive in this process, are not."""
    keys = BootKeys.generate()
    secrets = [keys.signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
               keys.hpke._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())]
    assert all(s in readable_memory(os.getpid()) for s in secrets)
    cancel, found = threading.Event(), {}

    def scan(stage: str, fraction: float, message: str) -> None:
        if stage.startswith("loglikelihood") and not cancel.is_set():
            (child,) = [p for p in multiprocessing.active_children() if p.name == "audit-job"]
            os.kill(child.pid, signal.SIGSTOP)
            try:
                memory = readable_memory(child.pid)
            finally:
                os.kill(child.pid, signal.SIGCONT)
            found.update(marker=MARKER in memory, keys=[s in memory for s in secrets])
            cancel.set()

    with pytest.raises(JobCancelled):
        job(demo, parse_spec(MC_TASK.encode()), cancel=cancel, progress=scan)
    assert found == {"marker": True, "keys": [False, False]}


SHUTDOWN = """
import signal, sys, threading
from pathlib import Path
from benchmarks.spec import parse_spec
from enclave.jobs import JobCancelled, run_job
import multiprocessing

if __name__ == "__main__":
    demo, spec = Path(sys.argv[1]), parse_spec(Path(sys.argv[2]).read_bytes())
    datasets = {n: (demo / n).read_bytes() for n in spec.datasets}
    run = run_job(demo / "model", spec, datasets, device="cpu", deadline_s=300, progress=lambda s, f, m: None,
                  cancel=threading.Event())
    print("root", run.samples_root, flush=True)
    stop, told = threading.Event(), []
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # the server's shutdown path: cancel the job

    def running(stage, fraction, message):
        if stage.startswith("loglikelihood") and fraction > 0.1 and not told:
            (child,) = multiprocessing.active_children()
            print("running", child.pid, flush=True)
            told.append(child.pid)

    try:
        run_job(demo / "model", spec, datasets, device="cpu", deadline_s=300, progress=running, cancel=stop)
    except JobCancelled:
        print("cancelled", flush=True)
"""


def test_no_plaintext_on_disk_and_sigterm_stops_the_job(demo: Path, tmp_path: Path):
    """A server process whose HOME, TMPDIR, HF_HOME and working directory are empty folders runs a
    job to the end (nothing there holds the data afterwards, nothing printed quotes it), then
    turns SIGTERM into a cancel mid-job: it and its job process end within seconds."""
    homes = {k: tmp_path / k.lower() for k in ("HOME", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME")}
    for d in homes.values():
        d.mkdir()
    (tmp_path / "spec.toml").write_text(MC_TASK)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
           **{k: str(v) for k, v in homes.items()}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SHUTDOWN, str(demo), str(tmp_path / "spec.toml")],
                            cwd=homes["TMPDIR"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(b"running"):
                break
        assert lines and lines[-1].startswith(b"running"), (lines, proc.stderr.read()[-3000:])
        child = int(lines[-1].split()[1])
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    assert re.fullmatch(rb"root [0-9a-f]{64}\n", lines[0])
    assert out == b"cancelled\n" and proc.returncode == 0, err[-3000:]
    # "cancelled" shows the job was stopped, not finished; the bound is on the whole process's exit (torch's
    # teardown included), which took 6 s once on 2 cores shared with another test run.
    assert stopped < 15 and not Path(f"/proc/{child}").exists()
    assert MARKER not in b"".join(lines) + out + err
    written = [p for d in homes.values() for p in d.rglob("*") if p.is_file()]
    assert not [p for p in written if MARKER in p.read_bytes()], written
    assert not [p for p in written if "datasets" in p.parts], written


def test_the_server_never_unpickles_what_a_job_sends():
    """A job process runs a party's templates and model; if it were subverted, a pickle from it
    could run code in the server, which holds the keys. Only checked JSON messages are accepted."""
    import pickle

    from enclave.jobs import _parse

    class Boom:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    for bad in (pickle.dumps(("done", Boom())), b'["done", {"results": {}}]', b'["progress", 1, 2]', b'["progress", "x", 0.5]',
                b'["failed", {"x": 1}]', b'["other"]', b"[]", b"\xff"):
        with pytest.raises(JobFailed, match="sent a malformed message"):
            _parse(bad)
    assert _parse(b'["progress", "loading model", 0.0, ""]') == ["progress", "loading model", 0.0, ""]
