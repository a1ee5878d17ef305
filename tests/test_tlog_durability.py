"""Crash safety: `aaudit log serve` killed with SIGKILL in the middle of a burst of concurrent
publishes loses no acknowledged entry, and the restarted log's checkpoint is consistent with the
last one it acknowledged before the kill."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tlog_support import ORIGIN

from tlog.audit import audit
from tlog.backend import LogError
from tlog.client import LogClient
from verifier.checkpoint import verify_checkpoint
from verifier.merkle import leaf_hash, verify_consistency, verify_inclusion

ROOT = Path(__file__).resolve().parent.parent


def _start(db: Path) -> tuple[subprocess.Popen[str], str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "log", "serve", "--db", str(db),
                             "--listen", "127.0.0.1:0", "--origin", ORIGIN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    key = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("log key:"):
            key = line.split()[-1]
        if line.startswith("listening on"):
            return proc, line.split()[-1], key
    proc.wait(10)
    raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")


def test_acknowledged_entries_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    proc, target, key = _start(db)
    acked: dict[int, tuple[bytes, str]] = {}
    lock = threading.Lock()
    dead = threading.Event()

    def publisher(t: int) -> None:
        with LogClient(target, timeout=5) as client:
            for i in range(10_000):
                data = f'{{"publisher":{t},"n":{i}}}'.encode()
                try:
                    res = client.append(data)
                except LogError:
                    dead.set()
                    return
                with lock:
                    acked[res.index] = (data, res.checkpoint)

    threads = [threading.Thread(target=publisher, args=(t,)) for t in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()                       # SIGKILL, mid-burst: appends are in flight right now
        proc.wait(10)
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert dead.is_set() and len(acked) >= 60

    proc2, target2, key2 = _start(db)
    try:
        assert key2 == key
        with LogClient(target2) as client:
            for index, (data, _) in acked.items():
                assert client.entry(index) == data, f"acknowledged entry {index} lost or changed"
            last = max((verify_checkpoint(note, key) for _, note in acked.values()), key=lambda c: c.size)
            now = verify_checkpoint(client.checkpoint(), key)
            assert now.size >= last.size >= max(acked) + 1
            proof = client.consistency_proof(last.size, now.size)
            assert verify_consistency(last.size, now.size, proof.hashes, last.root, now.root)
            # The restarted log keeps appending on top of the recovered tree.
            res = client.append(b'{"after":"restart"}')
            assert res.index == now.size
            assert verify_inclusion(leaf_hash(b'{"after":"restart"}'), res.index, res.proof.tree_size,
                                    res.proof.hashes, verify_checkpoint(res.checkpoint, key).root)
        assert audit(db, key).size == now.size + 1
    finally:
        proc2.terminate()
        proc2.wait(10)
