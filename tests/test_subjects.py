"""The statement's subjects are the model's files (docs/FORMATS.md, "Subjects: one per model file").

A standard tool matches them by sha256; the verifier holds them to the manifest's model digest, so
an enclave (or a bug) that names other files than the ones both parties approved is caught at the
"model subjects" step even though its signature verifies. The OpenSSF model-signing tool, run for
real, lists the same per-file digests, and its subject digest follows from ours by the documented rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealing.digest import file_listing
from tests.bundle_factory import Made, make_bundle
from verifier import policy
from verifier.bundle import verify_bundle
from verifier.errors import ParseError
from verifier.models import digest_of_listing
from verifier.statement import parse_statement


def _verify(made: Made) -> dict[str, tuple[str, str]]:
    pol = policy.parse(tomllib.loads(made.policy_toml()))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    return {s.name: (s.status.value, s.reason) for s in verdict.steps}


def _statement(made: Made) -> Any:
    return parse_statement(base64.b64decode(made.bundle["envelope"]["payload"]))


def _edit_subjects(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Callable[[bytes], bytes]:
    """An `edit_payload` that rewrites the subject list before the enclave key signs the statement."""
    def edit(payload: bytes) -> bytes:
        statement = json.loads(payload)
        statement["subject"] = change(statement["subject"])
        return json.dumps(statement).encode()   # not JCS: it could not carry the 2**53 case
    return edit


def _other_sha(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subjects[1]["digest"]["sha256"] = hashlib.sha256(b"the weights of another model").hexdigest()
    return subjects


def _extra_file(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    extra = {"name": "model/zz-adapter.safetensors", "digest": {"sha256": "ab" * 32}, "annotations": {"size": 7}}
    return [*subjects, extra]


def _resized(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subjects[0]["annotations"]["size"] += 1
    return subjects


def _renamed(subjects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subjects[0]["name"] = "model/config.json.bak"
    return subjects


def test_honest_subjects_name_every_model_file_and_verify() -> None:
    made = make_bundle()
    steps = _verify(made)
    assert steps["model subjects"][0] == "ok", steps["model subjects"]
    assert "3 model files" in steps["model subjects"][1]
    st = _statement(made)
    assert [(s.name, s.digest, s.annotations.size) for s in st.subject] == [
        ("model/" + e["path"], {"sha256": e["sha256"]}, e["size"]) for e in made.model_listing]
    assert st.subject_digest == st.digest_of("model") == made.digests["model"]
    pol = policy.parse(tomllib.loads(made.policy_toml()))
    claims = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc)).claims
    assert claims["model_digest"] == made.digests["model"], "the claim stays the project's digest"


@pytest.mark.parametrize("attack", [
    _other_sha,                                  # a file with other bytes than the approved model's
    lambda subjects: subjects[:-1],              # a file of the model left out
    _extra_file,                                 # a file the model never had
    _resized,                                    # the right sha256 with another size
    _renamed,                                    # the right bytes under another name
], ids=["other-sha256", "file-dropped", "file-added", "size-changed", "renamed"])
def test_subjects_that_disagree_with_the_model_digest_fail_model_subjects(attack) -> None:  # noqa: ANN001
    """Signed by the enclave key and approved by both parties, yet refused: the subjects no longer
    list the model whose digest the parties approved."""
    made = make_bundle(edit_payload=_edit_subjects(attack))
    steps = _verify(made)
    failed = {name for name, (status, _) in steps.items() if status == "failed"}
    assert failed == {"model subjects"}, steps
    reason = steps["model subjects"][1]
    assert made.digests["model"] in reason and "subjects and model digest disagree" in reason
    assert steps["report signature"][0] == steps["provider approval"][0] == "ok"


@pytest.mark.parametrize("change, needle", [
    (lambda s: [{"name": "model", "digest": {"sha256": "00" * 32}}], "subject[0].annotations is missing"),
    (lambda s: [], "no subject; expected one per model file"),
    (lambda s: [s[1], s[0], s[2]], "subject[1]: subjects must be sorted by name, each file once"),
    (lambda s: [s[0], s[0], s[1], s[2]], "subject[1]: subjects must be sorted by name, each file once"),
    (lambda s: [{**s[0], "name": "config.json"}, *s[1:]], "subject[0]: name must be model/<path of a model file>"),
    (lambda s: [{**s[0], "name": "model/"}, *s[1:]], "subject[0]: name must be model/"),
    (lambda s: [{**s[0], "digest": {**s[0]["digest"], "sha512": "00" * 64}}, *s[1:]],
     'subject[0]: digest must be exactly {"sha256": <64 lowercase hex>}'),
    (lambda s: [{**s[0], "digest": {"sha256": s[0]["digest"]["sha256"].upper()}}, *s[1:]], "64 lowercase hex"),
    (lambda s: [{**s[0], "annotations": {"size": -1}}, *s[1:]], "annotations.size must be a byte count"),
    (lambda s: [{**s[0], "annotations": {"size": 2**53}}, *s[1:]], "annotations.size must be a byte count"),
    (lambda s: [{**s[0], "annotations": {"size": 1, "mediaType": "x"}}, *s[1:]], "unknown field(s) 'mediaType'"),
])
def test_malformed_subjects_fail_the_statement_step(change, needle: str) -> None:  # noqa: ANN001
    made = make_bundle(edit_payload=_edit_subjects(change))
    steps = _verify(made)
    assert steps["statement"][0] == "failed" and needle in steps["statement"][1], steps["statement"]
    assert "model subjects" not in steps  # nothing is compared on a statement that did not parse
    with pytest.raises(ParseError, match="statement"):
        _statement(made)


# --- the OpenSSF model-signing tool ---------------------------------------------------------------
def _model_folder(root: Path) -> Path:
    """Files whose order differs between our listing (code points) and model-signing's (path
    components), and a git file that model-signing leaves out unless told not to."""
    folder = root / "model"
    for path, data in {"config.json": b'{"hidden_size": 64}', "tok.json": b"{}", "tok/merges.txt": b"a b\n",
                       "model.safetensors": os.urandom(4096), ".gitattributes": b"*.safetensors lfs\n"}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def _openssf_sign(folder: Path, root: Path, *flags: str) -> dict[str, Any]:
    """Sign `folder` with the real `model_signing` CLI and an EC key; returns its in-toto statement."""
    key = root / "key.pem"
    if not key.exists():
        key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    signature = root / f"model{len(flags)}.sig"
    proc = subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", str(folder), "--private_key", str(key),
                           "--signature", str(signature), *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(base64.b64decode(json.loads(signature.read_text())["dsseEnvelope"]["payload"]))


def test_openssf_model_signing_lists_the_same_file_digests(tmp_path: Path) -> None:
    pytest.importorskip("model_signing", reason="the dev extra installs model-signing (pyproject.toml)")
    folder = _model_folder(tmp_path)
    made = make_bundle(model_listing=file_listing(folder))
    assert _verify(made)["model subjects"][0] == "ok"
    ours = _statement(made).subject

    theirs = _openssf_sign(folder, tmp_path, "--no-ignore-git-paths")
    assert theirs["predicateType"] == "https://model_signing/signature/v1.0"
    resources = theirs["predicate"]["resources"]
    assert sorted((r["name"], r["algorithm"], r["digest"]) for r in resources) == \
        sorted((s.path, "sha256", s.digest["sha256"]) for s in ours), "one for one, same sha256"

    # Their subject digest from our subjects: raw digests concatenated in path-component order.
    by_components = sorted(ours, key=lambda s: PurePosixPath(s.path).parts)
    assert [s.path for s in by_components] != [s.path for s in ours], "the two orders differ for this folder"
    recomputed = hashlib.sha256(b"".join(bytes.fromhex(s.digest["sha256"]) for s in by_components)).hexdigest()
    assert theirs["subject"][0]["digest"]["sha256"] == recomputed
    assert "sha256:" + recomputed != made.digests["model"], "their root is not our model digest"
    assert digest_of_listing(_statement(made).model_listing) == made.digests["model"]

    # By default the tool leaves git files out; our listing (what was sealed) keeps them.
    default = _openssf_sign(folder, tmp_path)
    assert {r["name"] for r in default["predicate"]["resources"]} == {s.path for s in ours} - {".gitattributes"}
