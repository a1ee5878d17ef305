"""Policies that say what they pin: unpinned verdicts are named, party keys can be pinned, and the
simulator needs a policy that allows it.

A weak policy (no digests, no code identity, no log) must not end in a plain VERIFIED and exit 0;
a pinned party key must refuse a bundle whose manifest or approvals use another key.
"""

from __future__ import annotations

import base64

import json
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from bundle_factory import CODE_IDENTITY, make_bundle, pem, publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import step

from enclave.tee.sim import SimAttester
from verifier import policy
from verifier.bundle import verify_bundle
from verifier.cli import main
from verifier.errors import PolicyError
from verifier.models import Status

REPO = Path(__file__).resolve().parents[1]
ALL = ["model digest", "dataset digest", "spec digest", "code identity", "log"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _files(tmp_path: Path, made, policy_text: str) -> tuple[str, str]:  # noqa: ANN001
    (tmp_path / "p.toml").write_text(policy_text)
    return str(made.write(tmp_path)), str(tmp_path / "p.toml")


def test_fully_pinned_policy_verifies_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make_bundle()
    key = publish(made, tmp_path / "log.db")
    bundle, pol = _files(tmp_path, made, made.policy_toml(log_key=key))
    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol)
    assert rc == 0 and out.rstrip().endswith("VERIFIED (audit bundle), WITH WARNINGS ABOVE")  # SIMULATED
    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol, "--json")
    result = json.loads(out)
    assert rc == 0 and result["verified"] and result["unpinned"] == []


def test_weak_policy_fails_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make_bundle()
    bundle, pol = _files(tmp_path, made, made.policy_toml(digests=False, code=False))
    verdict = verify_bundle(made.bundle, policy.load(pol), at=datetime.now(timezone.utc))
    assert verdict.verified and verdict.unpinned == ALL and not verdict.accepted()  # library: no check failed

    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol)
    last = out.rstrip().splitlines()[-1]
    assert rc == 1 and last.startswith("NOT VERIFIED (audit bundle)") and "--allow-unpinned" in last
    assert "model digest, dataset digest, spec digest, code identity, log" in last

    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol, "--allow-unpinned")
    assert rc == 0 and out.rstrip().splitlines()[-1] == \
        "VERIFIED (UNPINNED: model digest, dataset digest, spec digest, code identity, log), WITH WARNINGS ABOVE"

    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol, "--json")
    result = json.loads(out)
    assert rc == 1 and result["verified"] is False and result["checks_passed"] is True and result["unpinned"] == ALL
    rc, out, _ = _run(capsys, "bundle", bundle, "--policy", pol, "--json", "--allow-unpinned")
    assert rc == 0 and json.loads(out)["verified"] is True and json.loads(out)["unpinned"] == ALL


@pytest.mark.parametrize("kwargs, extra, unpinned", [
    ({"digests": False}, "", ["model digest", "dataset digest", "spec digest", "log"]),
    ({"code": False}, f'code_identity = ["{CODE_IDENTITY}"]\n', ["log"]),  # the code identity pins the code
    ({}, "", ["log"]),  # the sim measurement pins the code
    ({"code": False}, "", ["code identity", "log"]),
])
def test_what_counts_as_pinned(kwargs: dict, extra: str, unpinned: list[str]) -> None:
    made = make_bundle()
    pol = policy.parse(tomllib.loads(made.policy_toml(**kwargs, extra=extra)))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    assert verdict.verified and verdict.unpinned == unpinned


def test_log_without_required_inclusion_is_unpinned() -> None:
    made = make_bundle()
    text = made.policy_toml() + '[log]\npublic_key = "log+00000000+AQ=="\nrequire_inclusion = false\n'
    verdict = verify_bundle(made.bundle, policy.parse(tomllib.loads(text)), at=datetime.now(timezone.utc))
    assert verdict.unpinned == ["log"]


# --------------------------------------------------------------------------------------- party keys


def _keys(provider: Ed25519PrivateKey, auditor: Ed25519PrivateKey) -> str:
    return f"provider_key = '''\n{pem(provider)}'''\nauditor_key = '''{pem(auditor)}'''\n"


def test_pinned_party_keys_pass(tmp_path: Path) -> None:
    made = make_bundle()
    pol = policy.parse(tomllib.loads(made.policy_toml(extra=_keys(made.provider, made.auditor))))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    assert verdict.verified, [(s.name, s.reason) for s in verdict.failures]
    assert step(verdict, "provider key").status is Status.OK and step(verdict, "auditor key").status is Status.OK


def test_the_keygen_pub_file_is_the_policy_value(tmp_path: Path) -> None:
    from sealing.identity import generate_identity

    identity, _, pub = generate_identity(tmp_path, "provider")
    pol = policy.parse(tomllib.loads(f"allow_simulated = true\n[expect]\nprovider_key = '''{pub.read_text()}'''\n"))
    assert pol.party_keys == {"provider": identity.public_raw()}


def test_other_manifest_keys_fail_naming_the_role() -> None:
    made = make_bundle()
    stranger = Ed25519PrivateKey.generate()
    pol = policy.parse(tomllib.loads(made.policy_toml(extra=_keys(made.provider, stranger))))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    assert [s.name for s in verdict.failures] == ["auditor key"]
    assert "the manifest names auditor key" in verdict.failures[0].reason


def test_approvals_by_other_keys_fail_naming_the_role() -> None:
    """The attack of issue 8 (b): a stranger approves as auditor. The manifest still names the real
    auditor, so the stranger's approval is an extra one, by a key the policy does not pin."""
    stranger = Ed25519PrivateKey.generate()
    made = make_bundle(approvers={"auditor": stranger})
    pol = policy.parse(tomllib.loads(made.policy_toml(extra=_keys(made.provider, made.auditor))))
    verdict = verify_bundle(made.bundle, pol, at=datetime.now(timezone.utc))
    names = [s.name for s in verdict.failures]
    assert "auditor key" in names and "provider key" not in names
    assert "not the policy's auditor key" in step(verdict, "auditor key").reason


@pytest.mark.parametrize("value", ["", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 7])
def test_malformed_party_keys_are_refused(value: object) -> None:
    with pytest.raises(PolicyError, match=r"provider_key.*(\.pub file|base64 form)"):
        policy.parse({"allow_simulated": True, "expect": {"provider_key": value}})


def test_a_party_key_may_be_the_base64_form_keygen_prints() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    pinned = policy.parse({"allow_simulated": True, "expect": {"provider_key": base64.b64encode(
        key.public_bytes_raw()).decode()}}).party_keys["provider"]
    assert pinned == key.public_bytes_raw()


def test_a_non_ed25519_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    text = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(PolicyError, match="auditor_key"):
        policy.parse({"allow_simulated": True, "expect": {"auditor_key": text}})


# ---------------------------------------------------------------------------------------- the simulator


def test_sim_evidence_without_a_policy_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: a sim verdict is accepted only when the policy says allow_simulated = true."""
    evidence = tmp_path / "sim.json"
    evidence.write_bytes(SimAttester(CODE_IDENTITY).attest(bytes(64)).blob)
    rc, out, _ = _run(capsys, "evidence", "--platform", "sim", "--evidence", str(evidence))
    assert rc == 1 and "allow_simulated = true" in " ".join(out.split())
    (tmp_path / "p.toml").write_text("allow_simulated = true\n")
    rc, out, _ = _run(capsys, "evidence", "--platform", "sim", "--evidence", str(evidence), "--policy",
                      str(tmp_path / "p.toml"))
    assert rc == 0 and "SIMULATED" in out


def test_installed_command_reports_unpinned(tmp_path: Path) -> None:
    """The same through a real process: the exit status and the last line."""
    made = make_bundle()
    bundle, pol = _files(tmp_path, made, made.policy_toml())
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "bundle", bundle, "--policy", pol],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not pin log;" in proc.stdout.splitlines()[-1]
