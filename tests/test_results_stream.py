"""Issue 12, streamed results: an `aggregate+samples` audit whose per-sample records are larger than
a gRPC message may be (64 MiB) comes back through the real service and client in bounded messages,
and `aaudit auditor result` + `open-samples` still check it against the signed statement.

A real job on this CPU cannot generate 64 MiB of text in seconds (records carry hashes, the model's
output and per-sample metrics: about 300 bytes per multiple-choice document), so the job here is
the real lm-eval job on the tiny model whose generation responses are then lengthened to 4 MiB
each, as a long-generation task on a large model would produce, before the enclave encrypts, signs
and streams them. Everything after the evaluation is the production path.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import KINDS, RunningEnclave, approve_both, make_parties, open_session, provision, run

from aaudit.cli import main as aaudit_main
from enclave.measure import code_identity
from enclave.service import SAMPLES_CHUNK_BYTES
from verifier.merkle import root_hash
from verifier.models import canonical_json
from verifier.statement import parse_statement

LONG_RESPONSE = 4 << 20  # characters of text per generation record


def _lengthened(run_job: Any) -> Any:
    """The real job, whose generation responses then run on to `LONG_RESPONSE` characters."""

    def job(*args: Any, **kwargs: Any) -> Any:
        run = run_job(*args, **kwargs)
        filler = "".join(chr(ord("a") + i % 26) for i in range(4096))
        records = [{**r, "response": (r["response"] + " " + filler * (LONG_RESPONSE // len(filler)))[:LONG_RESPONSE]}
                   if isinstance(r["response"], str) else r for r in run.records]
        return replace(run, records=records, samples_root=root_hash([canonical_json(r) for r in records]).hex())

    return job


def test_more_than_64_mib_of_records_stream_back_in_bounded_messages(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import enclave.service
    from protos import enclave_pb2 as pb

    monkeypatch.setattr(enclave.service, "run_job", _lengthened(enclave.service.run_job))
    parties = make_parties(tmp_path / "parties")
    service = RunningEnclave()
    try:
        with service.client() as c:
            sid = open_session(c, parties)
            provision(c, parties, sid)
            approve_both(c, parties, sid)
            bundle = run(c, parties, sid)
            streamed = c.samples
            assert streamed is not None and len(streamed) > 64 << 20, "more than one gRPC message may carry"
            events = list(c._stub.GetResult(pb.ResultRequest(session_id=sid)))
            assert events[-1].WhichOneof("event") == "bundle" and json.loads(events[-1].bundle) == bundle
            chunks = [ev.samples_chunk for ev in events[:-1]]
            assert all(ev.WhichOneof("event") == "samples_chunk" for ev in events[:-1])
            assert all(0 < len(ch) <= SAMPLES_CHUNK_BYTES for ch in chunks) and len(chunks) > 16
            assert b"".join(chunks) == streamed, "GetResult streams the same ciphertext the run did"
            del chunks, events

        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(f'allow_simulated = true\n[sim]\nmeasurements = ["{code_identity()}"]\n[expect]\n'
                               + "".join(f'{k}_digest = "{parties.sealed[k].digest}"\n' for k in KINDS))
        out = tmp_path / "bundle.json"
        capsys.readouterr()
        assert aaudit_main(["auditor", "result", "--session", sid, "--enclave", service.target, "--policy",
                            str(policy_file), "--out", str(out)]) == 0, capsys.readouterr()
    finally:
        service.stop()
    enc = tmp_path / "bundle.samples.enc"
    assert enc.read_bytes() == streamed, "the CLI writes the reassembled ciphertext"
    assert aaudit_main(["auditor", "open-samples", str(enc), "--bundle", str(out), "--key", str(parties.samples_key),
                        "--out", str(tmp_path / "samples.jsonl")]) == 0
    lines = (tmp_path / "samples.jsonl").read_bytes().splitlines()
    samples = parse_statement(base64.b64decode(bundle["envelope"]["payload"])).predicate.samples
    assert len(lines) == samples.count == 49 + 18 and sum(map(len, lines)) > 64 << 20
    assert sum(1 for line in lines if len(line) > LONG_RESPONSE) == 18, "every generation record came back whole"
    assert root_hash(lines).hex() == samples.merkle_root
    assert samples.delivery is not None and samples.delivery.ciphertext_sha256 == hashlib.sha256(streamed).hexdigest()
    truncated = tmp_path / "truncated.enc"
    truncated.write_bytes(streamed[:-SAMPLES_CHUNK_BYTES])  # a stream that lost its last chunk
    assert aaudit_main(["auditor", "open-samples", str(truncated), "--bundle", str(out), "--key",
                        str(parties.samples_key), "--out", str(tmp_path / "t.jsonl")]) == 1
    assert "sha256 differs" in capsys.readouterr().err
