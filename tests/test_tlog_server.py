"""The log served over real gRPC sockets: publish, get, prove, and what verifiers make of it."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import grpc
import pytest
from helpers import step as _step
from tlog_support import bundle, running_log

from protos import log_pb2, log_pb2_grpc
from tlog.backend import MAX_ENTRY_BYTES, InvalidRequest, LogError, NotFound
from tlog.client import LogClient, publish
from tlog.server import GRPC_OPTIONS
from verifier.checkpoint import verify_checkpoint
from verifier.errors import UnusableInput
from verifier.logentry import verify_log_entry
from verifier.merkle import leaf_hash, verify_consistency, verify_inclusion
from verifier.models import Status, Verdict, b64e, log_entry_bytes
from verifier.policy import LogPolicy


def _verdict(b: dict, key: str, require: bool = True) -> Verdict:
    v = Verdict("bundle")
    verify_log_entry(b, LogPolicy(key, require), v, None)
    return v


def test_publish_get_prove_and_verify(tmp_path: Path) -> None:
    with running_log(tmp_path / "log.db") as r:
        published = [publish(bundle(i), r.target, log_key=r.key) for i in range(6)]
        assert [p["logEntry"]["index"] for p in published] == list(range(6))
        assert r.client.entry(3) == log_entry_bytes(bundle(3))

        for p in published:
            v = _verdict(p, r.key)
            assert v.verified, v.to_json()
            assert [s.name for s in v.steps if s.status is Status.OK] == ["log entry", "log checkpoint", "log inclusion"]
            assert _step(v, "log witness").status is Status.SKIPPED
            assert v.claims["log"]["index"] == p["logEntry"]["index"]

        cp = verify_checkpoint(r.client.checkpoint(), r.key)
        assert cp.size == 6 and cp.origin == "test.example/log"
        proof, note = r.client.inclusion_proof(2)
        assert note is not None and verify_checkpoint(note, r.key) == cp
        assert verify_inclusion(leaf_hash(log_entry_bytes(bundle(2))), 2, 6, proof.hashes, cp.root)
        old = verify_checkpoint(published[2]["logEntry"]["checkpoint"], r.key)
        cons = r.client.consistency_proof(old.size)
        assert (cons.first, cons.second) == (3, 6)
        assert verify_consistency(3, 6, cons.hashes, old.root, cp.root)
        assert not verify_consistency(3, 6, cons.hashes, old.root, leaf_hash(b"x"))

        past, past_note = r.client.inclusion_proof(1, tree_size=4)
        assert past.tree_size == 4 and verify_checkpoint(past_note, r.key).size == 4

        with pytest.raises(NotFound, match="no entry 6"):
            r.client.entry(6)
        with pytest.raises(NotFound, match="beyond"):
            r.client.inclusion_proof(1, tree_size=7)
        with pytest.raises(NotFound, match="dropped history"):
            r.client.consistency_proof(9)


def test_tampering_fails_with_reasons(tmp_path: Path) -> None:
    with running_log(tmp_path / "log.db") as r:
        for i in range(4):
            publish(bundle(i), r.target)
        good = publish(bundle(9), r.target)

    proof = copy.deepcopy(good)
    proof["logEntry"]["inclusionProof"][0] = b64e(leaf_hash(b"forged"))
    v = _verdict(proof, r.key)
    assert not v.verified and "inclusion proof does not lead" in _step(v, "log inclusion").reason

    entry = copy.deepcopy(good)
    entry["payload"] = "a different result"
    v = _verdict(entry, r.key)
    assert not v.verified and "bundle or its proof was altered" in _step(v, "log inclusion").reason

    sig = copy.deepcopy(good)
    note = sig["logEntry"]["checkpoint"]
    sig["logEntry"]["checkpoint"] = note.replace(f"\n{good['logEntry']['treeSize']}\n", "\n1000\n")
    sig["logEntry"]["treeSize"] = 1000
    v = _verdict(sig, r.key)
    assert not v.verified and "does not verify" in _step(v, "log checkpoint").reason

    with running_log(tmp_path / "other.db", origin="test.example/log") as other:
        other_key = other.key  # same name, another key: an impostor log
    v = _verdict(good, other_key)
    assert not v.verified and "not signed by the trusted log key" in _step(v, "log checkpoint").reason

    malformed = copy.deepcopy(good)
    malformed["logEntry"]["index"] = "0"
    v = _verdict(malformed, r.key)
    assert not v.verified and "malformed" in _step(v, "log entry").reason

    unpublished = bundle(1)
    v = _verdict(unpublished, r.key, require=True)
    assert not v.verified and "requires a transparency-log entry" in _step(v, "log entry").reason
    v = _verdict(unpublished, r.key, require=False)
    assert _step(v, "log entry").status is Status.SKIPPED


def test_concurrent_publishers_get_distinct_indices_and_valid_proofs(tmp_path: Path) -> None:
    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with running_log(tmp_path / "log.db") as r:
        def worker(t: int) -> None:
            try:
                for i in range(8):
                    out = publish(bundle(t * 100 + i), r.target)
                    with lock:
                        results.append(out)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(p["logEntry"]["index"] for p in results) == list(range(64))
        for p in results:
            assert _verdict(p, r.key).verified
            assert r.client.entry(p["logEntry"]["index"]) == log_entry_bytes(p)
        assert verify_checkpoint(r.client.checkpoint(), r.key).size == 64


def test_size_limits_and_errors_are_clear(tmp_path: Path) -> None:
    with running_log(tmp_path / "log.db") as r:
        with pytest.raises(InvalidRequest, match="at most"):
            r.client.append(b"x" * (MAX_ENTRY_BYTES + 1))
        with pytest.raises(InvalidRequest, match="empty"):
            r.client.append(b"")
        stub = log_pb2_grpc.TransparencyLogStub(grpc.insecure_channel(r.target, options=GRPC_OPTIONS))
        with pytest.raises(grpc.RpcError) as exc:   # the server checks too, whoever the client is
            stub.Append(log_pb2.AppendRequest(entry=b"y" * (MAX_ENTRY_BYTES + 100)), timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            stub.Append(log_pb2.AppendRequest(entry=b"z" * (MAX_ENTRY_BYTES + 10000)), timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert r.log.size == 0
        with pytest.raises(UnusableInput, match="already published"):
            publish(publish(bundle(1), r.target), r.target)
        port = r.target.rsplit(":", 1)[1]
    with pytest.raises(LogError, match="cannot reach the log"):
        LogClient(f"127.0.0.1:{port}", timeout=2).checkpoint()


def test_cli_publish_get_prove_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aaudit.cli import main

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle(7)))
    with running_log(tmp_path / "log.db") as r:
        publish(bundle(1), r.target)
        assert main(["log", "publish", str(path), "--log", r.target, "--log-key", r.key]) == 0
        published = json.loads(path.read_text())
        assert published["logEntry"]["index"] == 1 and published["logEntry"]["logKey"] == r.key
        assert _verdict(published, r.key).verified
        assert main(["log", "publish", str(path), "--log", r.target]) == 2   # already published
        capsys.readouterr()

        assert main(["log", "get", "1", "--log", r.target]) == 0
        assert capsys.readouterr().out.encode() == log_entry_bytes(published) + b"\n"
        assert main(["log", "checkpoint", "--log", r.target, "--log-key", r.key]) == 0
        assert verify_checkpoint(capsys.readouterr().out, r.key).size == 2

        publish(bundle(2), r.target)
        assert main(["log", "prove", "1", "--log", r.target, "--from-size", "2"]) == 0
        proof = json.loads(capsys.readouterr().out)
        assert (proof["treeSize"], proof["consistencyProof"]["fromSize"]) == (3, 2)
        assert main(["log", "prove", "--bundle", str(path), "--log", r.target, "--from-size", "2"]) == 0
        refreshed = json.loads(path.read_text())
        assert refreshed["logEntry"]["treeSize"] == 3 and refreshed["logEntry"]["consistencyProof"]["fromSize"] == 2
        assert _verdict(refreshed, r.key).verified

        assert main(["log", "get", "99", "--log", r.target]) == 1
        assert "no entry 99" in capsys.readouterr().err
        assert main(["log", "checkpoint", "--log", r.target, "--log-key", r.key.replace("+A", "+B", 1)]) == 2


@pytest.mark.parametrize("command", ["serve", "publish", "get", "checkpoint", "prove", "audit"])
def test_every_log_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from aaudit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["log", command, "--help"])
    assert exc.value.code == 0 and "usage: aaudit log " + command in capsys.readouterr().out


def test_negative_numbers_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aaudit.cli import main

    with running_log(tmp_path / "log.db") as r:
        publish(bundle(1), r.target)
        assert main(["log", "get", "-1", "--log", r.target]) == 2
        assert main(["log", "prove", "0", "--tree-size", "-3", "--log", r.target]) == 2
        assert main(["log", "prove", "0", "--from-size", "-3", "--log", r.target]) == 2
        assert "non-negative" in capsys.readouterr().err
