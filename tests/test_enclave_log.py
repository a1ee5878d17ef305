"""The enclave's log holds the enclave's lines only: through a whole job, a Ctrl-C reaching the job
process and a SIGTERM mid-job, no git error, no lm-eval or transformers chatter, no progress bars, no
traceback, no C++ abort and no leaked semaphore, and nothing of the auditor's data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from e2e_helpers import approve_both, make_parties, open_session, provision, run

from aaudit.client import EnclaveClient, EnclaveError
from benchmarks.demo_assets import demo_spec_toml
from sealing.stream import seal

ROOT = Path(__file__).resolve().parents[1]
MC_ONLY = "[[task]]".join(demo_spec_toml().split("[[task]]")[:2])  # the demo's multiple-choice task: fast
NOISE = ("fatal: not a git repository", "terminate called", "Traceback", "KeyboardInterrupt", "leaked semaphore",
         "`pretrained` model kwarg", "already-initialized model", "it/s]", "Loading weights", "UserWarning",
         "Running loglikelihood", "Tokenizing")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _job_process(server: int) -> int:
    """The audit job: the fork server's child (the fork server is the enclave server's child)."""
    for child in _children(server):
        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
            jobs = _children(child)
            if jobs:
                return jobs[0]
    raise AssertionError("no job process")


def test_a_job_ctrl_c_and_sigterm_leave_a_clean_log(tmp_path: Path) -> None:
    parties = make_parties(tmp_path / "parties", MC_ONLY)
    cwd = tmp_path / "not-a-checkout"  # lm-eval asked git for a commit here, and git printed "fatal: ..."
    (cwd / "work").mkdir(parents=True)
    port, log = cwd / "port", cwd / "enclave.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "enclave", "serve", "--tee", "sim",
                                 "--gpu-evidence", "none", "--listen", "127.0.0.1:0", "--port-file", str(port),
                                 "--workdir", str(cwd / "work"), "--unsafe-allow-disk-workdir"],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (port.exists() and port.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with EnclaveClient(f"127.0.0.1:{port.read_text()}") as client:
            sid = open_session(client, parties)
            provision(client, parties, sid)
            approve_both(client, parties, sid)
            assert run(client, parties, sid)["envelope"]  # a whole job: lm-eval's end-of-run report included

            # the second job generates long answers, so it is still running when it is interrupted
            recipient = (parties.root / "keys" / "auditor.samples.pub").read_text().strip()
            short = 'until = ["\\n", "Question:"], max_gen_toks = 16'
            slow = demo_spec_toml(samples_recipient=recipient)
            assert short in slow
            (tmp_path / "slow.toml").write_text(slow.replace(short, 'until = ["Question:"], max_gen_toks = 256'))
            parties.sealed["spec"] = seal(tmp_path / "slow.toml", tmp_path / "sealed", "spec")
            provision(client, parties, sid)
            approve_both(client, parties, sid)
            running, outcome = threading.Event(), []

            def second_job() -> None:
                try:
                    run(client, parties, sid, on_progress=lambda p: p.stage == "generate_until" and running.set())
                    outcome.append("finished")
                except EnclaveError as exc:
                    outcome.append(str(exc))

            thread = threading.Thread(target=second_job)
            thread.start()
            assert running.wait(120), log.read_text()
            os.kill(_job_process(proc.pid), signal.SIGINT)  # what a Ctrl-C on the terminal delivers to the job
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            assert proc.wait(30) == 0
            stopped = time.monotonic() - sent
            thread.join(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # the job survived the Ctrl-C (the server stops it), and SIGTERM cancelled it
    assert outcome and "CANCELLED" in outcome[0], outcome
    assert stopped < 10
    time.sleep(1)  # the fork server and the resource tracker end after the server; their last words too
    text = log.read_text(errors="replace")
    assert "enclave listening" in text and "enclave stopping" in text and "job finished" in text, text
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in the enclave's log:\n{text}"
    assert parties.marker.decode() not in text
