"""Signed audit bundles made in-process, without an enclave run, for verifier tests.

Everything is real: the sim attester's signed evidence bound to the keys and the nonce, the DSSE
signature, the parties' approvals. A test may change the statement's bytes before they are signed
(`edit_payload`), so a bundle can carry, *signed*, what no honest enclave would write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.tee.sim import SimAttester
from verifier import dsse
from verifier.binding import key_binding, statement_binding
from verifier.bundle import MEDIA_TYPE
from verifier.models import b64e, canonical_json, digest_of_listing
from verifier.manifest import AssetRef, EnclaveRef, Parties, RunManifest, SessionRef, approval_message
from verifier.statement import (
    Approval,
    AuditPredicate,
    AuditStatement,
    EngineInfo,
    PlatformInfo,
    Runtime,
    SamplesInfo,
    judge_subjects,
    model_subjects,
)

CODE_IDENTITY = "c0de" * 16
SUITE = "x25519-sha256-aes256gcm"
RESULTS = {"mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.01}}
TLS_PUB = b"\x30" + os.urandom(90)  # stands for a DER SubjectPublicKeyInfo: bound, never parsed


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def pem(key: Ed25519PrivateKey) -> str:
    """The text `aaudit keygen` writes into a party's .pub file."""
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def random_model_listing() -> list[dict[str, Any]]:
    """The listing of a made-up model folder: what an honest enclave would have unsealed."""
    return [{"path": path, "sha256": os.urandom(32).hex(), "size": size}
            for path, size in (("config.json", 512), ("model.safetensors", 1 << 20), ("tokenizer.json", 2048))]


@dataclass
class Made:
    bundle: dict[str, Any]
    provider: Ed25519PrivateKey
    auditor: Ed25519PrivateKey
    digests: dict[str, str] = field(default_factory=dict)  # asset kind -> digest
    model_listing: list[dict[str, Any]] = field(default_factory=list)  # the files the subjects name

    def write(self, folder: Path) -> Path:
        import json

        path = folder / "bundle.json"
        path.write_text(json.dumps(self.bundle))
        return path

    def policy_toml(self, *, digests: bool = True, code: bool = True, log_key: str | None = None,
                    extra: str = "") -> str:
        """A policy for this bundle; pins the digests and code identity unless told not to."""
        text = "allow_simulated = true\n"
        if code:
            text += f'[sim]\nmeasurements = ["{CODE_IDENTITY}"]\n'
        text += "[expect]\n"
        if digests:
            text += "".join(f'{k}_digest = "{v}"\n' for k, v in self.digests.items())
        text += extra
        if log_key is not None:
            text += f'[log]\npublic_key = "{log_key}"\nrequire_inclusion = true\n'
        return text


def make_bundle(*, results: dict[str, Any] | None = None, approvers: dict[str, Ed25519PrivateKey] | None = None,
                edit_payload: Callable[[bytes], bytes] | None = None, provider: Ed25519PrivateKey | None = None,
                model_listing: list[dict[str, Any]] | None = None,
                judges_listing: list[dict[str, Any]] | None = None) -> Made:
    """A bundle of one sim-attested audit; `approvers` overrides who signs each role's approval
    (the manifest still names the real parties); `provider` and `model_listing` (a real model's
    `sealing.digest.file_listing`) name a real provider key and model instead of random ones. The
    subjects are the model's files and the manifest's model digest is their listing's, as an
    honest enclave writes them. `judges_listing` (paths `<judge>/<file>`) adds a judges asset and its
    `judge/` subjects."""
    signing = Ed25519PrivateKey.generate()
    signing_pub = _raw(signing)
    hpke_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
    nonce = os.urandom(32)
    provider, auditor = provider or Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    listing = random_model_listing() if model_listing is None else model_listing
    digests = {"model": digest_of_listing(listing),
               **{kind: "sha256:" + os.urandom(32).hex() for kind in ("dataset", "spec")},
               **({"judges": digest_of_listing(judges_listing)} if judges_listing else {})}
    manifest = RunManifest(
        session=SessionRef("ab" * 16, os.urandom(32), 1),
        enclave=EnclaveRef("sim", CODE_IDENTITY, signing_pub),
        parties=Parties(_raw(provider), _raw(auditor)),
        assets={kind: AssetRef(d, 1) for kind, d in digests.items()},
        output="aggregate",
    )
    digest = manifest.digest()
    signers = {"provider": provider, "auditor": auditor, **(approvers or {})}
    now = datetime.now(timezone.utc).isoformat()
    statement = AuditStatement(
        subject=model_subjects(listing) + judge_subjects(judges_listing or []),
        predicate=AuditPredicate(
            manifest=manifest, manifest_digest=digest,
            approvals=tuple(Approval(role, _raw(key), key.sign(approval_message(digest)))
                            for role, key in signers.items()),
            platform=PlatformInfo("sim", True, CODE_IDENTITY),
            results=RESULTS if results is None else results,
            n_samples={}, configs={}, seeds={},
            samples=SamplesInfo("00" * 32, 0, "RFC9162-SHA256", "RFC 8785 JSON", None),
            runtime=Runtime({}, "cpu", "float32", EngineInfo("hf", "5.0.0", {"batch_size": 1, "dtype": "auto"})),
            started_at=now, finished_at=now, nonce=nonce.hex(), party_nonces={},
        ),
    ).to_json()
    payload = canonical_json(statement)
    if edit_payload is not None:
        payload = edit_payload(payload)
    attester = SimAttester(CODE_IDENTITY)
    bundle = {
        "mediaType": MEDIA_TYPE,
        "envelope": dsse.sign(signing, dsse.IN_TOTO_PAYLOAD_TYPE, payload).to_json(),
        "enclave": {"signingKey": {"alg": "ed25519", "public": b64e(signing_pub)},
                    "hpke": {"suite": SUITE, "public": b64e(hpke_pub)}, "tls": {"public": b64e(TLS_PUB)}},
        "nonce": nonce.hex(),
        "evidence": attester.attest(key_binding(signing_pub, SUITE, hpke_pub, TLS_PUB, nonce)).to_json(),
        "finalEvidence": attester.attest(statement_binding(signing_pub, payload)).to_json(),
    }
    return Made(bundle, provider, auditor, digests, listing)


def publish(made: Made, db: Path) -> str:
    """Append the bundle to a fresh SQLite log at `db` (in process, no server); returns the log's key."""
    from tlog.log import SQLiteLog
    from tlog.publish import publish_bundle

    with SQLiteLog(db, origin="test.example/log") as log:
        key = log.signer.verifier_key
        made.bundle = publish_bundle(log, made.bundle, log_key=key)
    return key


def gateway_policy_toml(made: Made, log_key: str) -> str:
    """An operator's and users' policy for a receipt gateway serving `made`'s audit: the bundle's and
    this checkout's code identities, the provider key, the model digest, and the log's key."""
    import json

    from enclave.measure import code_identity

    text = made.policy_toml(code=False, log_key=log_key)
    measurements = json.dumps([CODE_IDENTITY, code_identity()])
    return (text.replace("[expect]\n", f"[sim]\nmeasurements = {measurements}\n[expect]\n"
                         f"provider_key = '''{pem(made.provider)}'''\n")
            .replace("[expect]\n", f"[expect]\ncode_identity = {measurements}\n", 1))
