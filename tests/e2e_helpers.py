"""A real enclave service on loopback and the assets the parties seal for it, for end-to-end tests."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from aaudit.client import EnclaveClient, ExpectedRun
from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from enclave.measure import code_identity
from enclave.service import EnclaveService, serve
from enclave.session import Limits
from enclave.tee.select import make_attester
from enclave.workdir import make_workdir
from sealing.identity import generate_identity, generate_samples_key
from sealing.stream import SealedAsset, seal
from verifier import policy

KINDS = ("model", "dataset", "spec")


@dataclass
class Parties:
    root: Path
    marker: bytes
    sealed: dict[str, SealedAsset]
    provider: object
    auditor: object
    enclave_policy: policy.Policy
    samples_key: Path


def make_parties(root: Path, spec_toml: str | None = None) -> Parties:
    """`spec_toml`: the audit spec (default: the demo's, with per-sample records for the auditor)."""
    build_tiny_model(root / "model", seed=secrets.randbelow(2**31))  # unique weights: see marker below
    write_demo_data(root / "data")
    # A record no other run has, so a search for leaked plaintext cannot hit another run's files.
    marker = {"question": f"Which word marks run {uuid.uuid4().hex}?", "choices": ["alpha", "beta", "gamma", "delta"],
              "answer": 0}
    with open(root / "data" / "mc.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(marker, sort_keys=True) + "\n")
    recipient, samples_key, _ = generate_samples_key(root / "keys", "auditor")
    (root / "spec").mkdir()
    (root / "spec" / "audit.toml").write_text(spec_toml or demo_spec_toml(samples_recipient=recipient))
    sealed = {
        "model": seal(root / "model", root / "sealed", "model"),
        "dataset": seal(root / "data", root / "sealed", "dataset"),
        "spec": seal(root / "spec" / "audit.toml", root / "sealed", "spec"),
    }
    provider, _, _ = generate_identity(root / "keys", "provider")
    auditor, _, _ = generate_identity(root / "keys", "auditor")
    pol = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]}}, "enclave-policy")
    return Parties(root, marker["question"].encode(), sealed, provider, auditor, pol, samples_key)


class RunningEnclave:
    """An enclave service with the sim attester, served over attested TLS on 127.0.0.1."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.workdir = make_workdir()
        self.service = EnclaveService(make_attester("sim"), code_identity(), self.workdir, limits=limits)
        self.server = serve(self.service, "127.0.0.1:0")
        self.target = f"127.0.0.1:{self.server.bound_port}"

    def client(self) -> EnclaveClient:
        return EnclaveClient(self.target)

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
        self.service.close()


def open_session(client: EnclaveClient, parties: Parties) -> str:
    """The auditor creates a session naming both keys; the provider checks it and joins."""
    enclave = client.attest(parties.enclave_policy)
    info = client.create_session(enclave, "auditor", parties.auditor, parties.provider.public_raw())
    client.join_session(enclave, info.session_id, "provider", parties.provider, parties.auditor.public_raw())
    return info.session_id


def provision(client: EnclaveClient, parties: Parties, sid: str, kinds: tuple[str, ...] = KINDS) -> None:
    enclave = client.attest(parties.enclave_policy)
    for kind in kinds:
        who = parties.provider if kind == "model" else parties.auditor
        client.upload(enclave, sid, parties.sealed[kind], who)


def expected(parties: Parties, role: str, allow_samples: bool = True) -> ExpectedRun:
    other = parties.auditor if role == "provider" else parties.provider
    return ExpectedRun({k: a.digest for k, a in parties.sealed.items()},
                       {"auditor" if role == "provider" else "provider": other.public_raw()}, allow_samples)


def approve_both(client: EnclaveClient, parties: Parties, sid: str) -> None:
    enclave = client.attest(parties.enclave_policy)
    client.approve(enclave, sid, "provider", parties.provider, expected(parties, "provider"))
    client.approve(enclave, sid, "auditor", parties.auditor, expected(parties, "auditor"))


def run(client: EnclaveClient, parties: Parties, sid: str, **kwargs: object) -> dict:
    """The auditor starts the approved job and follows it to its bundle."""
    enclave = client.attest(parties.enclave_policy)
    return client.run(enclave, sid, "auditor", parties.auditor, nonce(), **kwargs)  # type: ignore[arg-type]


def nonce() -> bytes:
    return os.urandom(32)
