"""Messages that name the fix (issue 11): weak enclave policies warn before anything is sent, and each
mistake a newcomer made (a .pub as identity, a bare digest, the log and the enclave swapped, a
restarted enclave, no port) is refused with what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_helpers import RunningEnclave
from tlog_support import running_log

from aaudit.cli import main
from aaudit.client import AttestationRefused, EnclaveClient, EnclaveError, ExpectedRun
from enclave.measure import code_identity
from enclave.service import EnclaveService, serve
from enclave.tee.select import make_attester
from enclave.workdir import make_workdir
from sealing.identity import generate_identity, generate_samples_key
from tlog.backend import LogError
from tlog.client import LogClient
from verifier import policy
from verifier.errors import UnusableInput, VerificationError

SNP = "ab" * 48
TDX = {k: c * 96 for k, c in (("mrtd", "1"), ("rtmr0", "2"), ("rtmr1", "3"), ("rtmr2", "4"))}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    generate_identity(folder, "provider")
    generate_identity(folder, "auditor")
    generate_samples_key(folder, "auditor")
    return folder


@pytest.fixture(scope="module")
def enclave() -> RunningEnclave:
    running = RunningEnclave()
    yield running
    running.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def join(keys: Path, policy_file: Path, target: str = "127.0.0.1:1") -> list[str]:
    return ["provider", "join", "--session", "0" * 32, "--enclave", target, "--policy", str(policy_file),
            "--identity", str(keys / "provider.key"), "--expect-auditor", str(keys / "auditor.pub")]


# --- weak enclave policies -------------------------------------------------------------------------

@pytest.mark.parametrize("text,warnings", [
    ("allow_simulated = true\n",
     ["pins no measurement for sim: any enclave image would be trusted with your model", "allow_simulated = true"]),
    (f'allow_simulated = true\n[sim]\nmeasurements = ["{"c" * 64}"]\n', ["allow_simulated = true"]),
    (f'[sev-snp]\nmeasurements = ["{SNP}"]\n[tdx]\nmrtd = ["{TDX["mrtd"]}"]\n',
     ["pins no measurement for tdx: any enclave image would be trusted with your model"]),
    ("[sev-snp]\n[nitro]\npcr1 = [\"" + "d" * 96 + "\"]\n",
     ["pins no measurement for sev-snp", "pins no measurement for nitro"]),
    (f'[sev-snp]\nmeasurements = ["{SNP}"]\n[tdx]\n' + "".join(f'{k} = ["{v}"]\n' for k, v in TDX.items()), []),
])
def test_a_party_is_warned_before_anything_is_sent(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str],
                                                   text: str, warnings: list[str]) -> None:
    path = tmp_path / "enclave-policy.toml"
    path.write_text(text)
    rc, err = run(capsys, *join(keys, path))
    assert rc == 1 and "unreachable" in err  # nothing listens there: the warnings came first
    lines = [line for line in err.splitlines() if line.startswith("WARNING: ")]
    assert len(lines) == len(warnings), err
    for line, expected in zip(lines, warnings):
        assert line.startswith(f"WARNING: {path} ") and expected in line, line
    if warnings:
        assert err.index("WARNING") < err.index("unreachable")


def test_the_auditor_is_warned_about_its_dataset_and_spec(tmp_path: Path, keys: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[sev-snp]\n")
    rc, err = run(capsys, "auditor", "create-session", "--enclave", "127.0.0.1:1", "--policy", str(path),
                  "--identity", str(keys / "auditor.key"), "--provider", str(keys / "provider.pub"))
    assert rc == 1 and "would be trusted with your dataset and spec" in err


def test_an_enclave_reporting_another_code_identity_is_refused(enclave: RunningEnclave) -> None:
    """`[expect] code_identity` in a party's policy is checked at attestation, not only in bundles."""
    base = {"allow_simulated": True, "sim": {"measurements": [code_identity()]}}
    with enclave.client() as client:
        with pytest.raises(AttestationRefused, match="code identity"):
            client.attest(policy.parse({**base, "expect": {"code_identity": ["e" * 64]}}))
        assert client.attest(policy.parse({**base, "expect": {"code_identity": [code_identity()]}}))


# --- a public key where the private key belongs ----------------------------------------------------

def test_a_pub_file_as_identity_says_to_pass_the_private_key(tmp_path: Path, keys: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[sev-snp]\nmeasurements = ["{SNP}"]\n')
    argv = join(keys, path)
    argv[argv.index("--identity") + 1] = str(keys / "provider.pub")
    rc, err = run(capsys, *argv)
    assert rc == 2 and "is a public key" in err and f"{keys / 'provider.key'}" in err, err
    assert "chmod" not in err


def test_a_samples_pub_as_key_names_the_samples_key(tmp_path: Path, keys: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "s.enc").write_bytes(b"x")
    rc, err = run(capsys, "auditor", "open-samples", str(tmp_path / "s.enc"), "--bundle", str(tmp_path / "b.json"),
                  "--key", str(keys / "auditor.samples.pub"), "--out", str(tmp_path / "out.jsonl"))
    assert rc == 2 and "is a public key" in err and "auditor.samples.key" in err and "chmod" not in err


# --- digests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["ab" * 32, "AB" * 32, "SHA256:" + "ab" * 32])
def test_a_digest_without_its_prefix_gets_the_fixed_value(tmp_path: Path, keys: Path,
                                                          capsys: pytest.CaptureFixture[str], given: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[sev-snp]\nmeasurements = ["{SNP}"]\n')
    rc, err = run(capsys, "auditor", "approve", str(tmp_path), "--session", "0" * 32, "--enclave", "127.0.0.1:1",
                  "--policy", str(path), "--identity", str(keys / "auditor.key"), "--expect-provider",
                  str(keys / "provider.pub"), "--expect-model", given)
    assert rc == 2, err
    assert "--expect-model must be sha256:<64 lowercase hex digits>" in err
    assert f"did you mean sha256:{'ab' * 32}?" in err


def test_a_digest_that_is_not_one_is_refused_without_a_guess(tmp_path: Path, keys: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[sev-snp]\nmeasurements = ["{SNP}"]\n')
    rc, err = run(capsys, "provider", "approve", str(tmp_path), "--session", "0" * 32, "--enclave", "127.0.0.1:1",
                  "--policy", str(path), "--identity", str(keys / "provider.key"), "--expect-auditor",
                  str(keys / "auditor.pub"), "--expect-dataset", "sha256:" + "ab" * 32, "--expect-spec", "sha256:abc")
    assert rc == 2 and "--expect-spec must be sha256:" in err and "did you mean" not in err


# --- the log and the enclave swapped --------------------------------------------------------------

def test_the_log_reached_as_the_enclave(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_log(tmp_path / "log.db") as log:
        with pytest.raises(EnclaveError, match=r"not an aaudit enclave serving attested TLS: is it the "
                                               r"transparency log\?"):
            EnclaveClient(log.target)
        with EnclaveClient(log.target, insecure_plaintext=True) as client:
            with pytest.raises(EnclaveError) as exc:
                client.manifest("0" * 32)
        assert f"{log.target} answers but is not an aaudit enclave (is it the transparency log?)" in str(exc.value)
        assert "Method not found" not in str(exc.value)
        rc, err = run(capsys, "manifest", "--session", "0" * 32, "--enclave", log.target,
                      "--insecure-plaintext-loopback")
        assert rc == 1 and "is it the transparency log?" in err


def test_a_log_command_pointed_at_the_enclave(enclave: RunningEnclave, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(capsys, "log", "checkpoint", "--log", enclave.target)
    assert rc == 1 and "speaks TLS, so it is not an aaudit transparency log" in err and "is it the enclave?" in err
    service = EnclaveService(make_attester("sim"), code_identity(), make_workdir(), tls=False)
    server = serve(service, "127.0.0.1:0")
    try:
        with LogClient(f"127.0.0.1:{server.bound_port}") as client:
            with pytest.raises(LogError, match=r"answers but is not an aaudit transparency log \(is it the enclave\?\)"):
                client.checkpoint()
    finally:
        server.stop(grace=None).wait()
        service.close()


# --- a restarted enclave -----------------------------------------------------------------------------

def test_a_restarted_enclave_says_to_create_a_session_and_upload_again(tmp_path: Path) -> None:
    parties = {role: generate_identity(tmp_path, role)[0] for role in ("provider", "auditor")}
    pol = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]}})
    first = RunningEnclave()
    port = first.server.bound_port
    with first.client() as client:
        attested = client.attest(pol)
        sid = client.create_session(attested, "auditor", parties["auditor"],
                                    parties["provider"].public_raw()).session_id
        client.join_session(attested, sid, "provider", parties["provider"], parties["auditor"].public_raw())
        # a session with nothing uploaded says who uploads what
        with pytest.raises(VerificationError) as exc:
            client.approve(attested, sid, "provider", parties["provider"],
                           ExpectedRun({"model": "sha256:" + "a" * 64, "dataset": "sha256:" + "b" * 64,
                                        "spec": "sha256:" + "c" * 64}, {"auditor": parties["auditor"].public_raw()}))
        assert "missing asset(s): model, dataset, spec; upload into this session with `aaudit provider upload` and " \
               "`aaudit auditor upload`" in str(exc.value)
    first.stop()
    # the same address, a new boot: the session is gone
    service = EnclaveService(make_attester("sim"), code_identity(), make_workdir())
    server = serve(service, f"127.0.0.1:{port}")
    try:
        with EnclaveClient(f"127.0.0.1:{port}") as client:
            client.attest(pol)
            with pytest.raises(EnclaveError) as exc:
                client.manifest(sid)
        message = str(exc.value)
        for fix in ("the enclave restarted", "Create a new session", "both parties upload again"):
            assert fix in message, message
    finally:
        server.stop(grace=None).wait()
        service.close()


# --- HOST:PORT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::1]", "127.0.0.1:", "127.0.0.1:0", "host:443x",
                                    "::1:80", "http://127.0.0.1:50051"])
def test_a_target_without_a_port_is_refused(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str],
                                            target: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[sev-snp]\nmeasurements = ["{SNP}"]\n')
    rc, err = run(capsys, *join(keys, path, target))
    assert rc == 2 and "--enclave needs HOST:PORT (e.g. 127.0.0.1:50051)" in err, err
    rc, err = run(capsys, "manifest", "--session", "0" * 32, "--enclave", target)
    assert rc == 2 and "--enclave needs HOST:PORT (e.g. 127.0.0.1:50051)" in err, err
    rc, err = run(capsys, "log", "checkpoint", "--log", target)
    assert rc == 2 and "--log needs HOST:PORT (e.g. 127.0.0.1:7300)" in err, err
    with pytest.raises(UnusableInput, match="needs HOST:PORT"):
        EnclaveClient(target, insecure_plaintext=True)


def test_an_ipv6_target_with_a_port_is_accepted() -> None:
    EnclaveClient("[::1]:50051", insecure_plaintext=True).close()
    LogClient("[::1]:7300").close()
