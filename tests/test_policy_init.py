"""`aaudit policy init`: a commented policy that loads, pins exactly what was passed, says what it
leaves open, and lets nothing the user typed into the file unchecked."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from aaudit.cli import main
from sealing.identity import generate_identity
from tlog.keys import generate
from verifier import policy

H = {name: (str(i) * 96)[:96] for i, name in enumerate(("a", "b", "c", "d", "e", "f"), 1)}
CODE = "7" * 64
DIGEST = {k: f"sha256:{c * 64}" for k, c in (("model", "a"), ("dataset", "b"), ("spec", "c"))}
LOG = generate("log.example.org/test")


def init(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["policy", "init", *argv])
    return rc, capsys.readouterr().err


EXPECT = [x for kind, value in DIGEST.items() for x in (f"--{kind}-digest", value)]


def test_a_bare_sim_policy_loads_and_says_everything_is_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "p.toml"
    rc, err = init(capsys, "--platform", "sim", "--out", str(out))
    assert rc == 0, err
    pol = policy.load(out)
    assert pol.accepts("sim") and not pol.pins_measurement("sim")
    assert "unpinned: model digest, dataset digest, spec digest, code identity, log" in err
    assert "no launch measurement pinned" in err and "development only" in err
    text = out.read_text()
    assert "allow_simulated = true" in text and "NOT PINNED" in text
    # every key left out is there, commented out, and loads once filled in
    for key in ("# measurements =", "# allow_debug = false", '# max_age = "30d"', "# model_digest =",
                "# code_identity =", "# provider_key = '''", "# [log]", "# [[threshold]]"):
        assert key in text, key


def test_everything_passed_pins_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    provider, _, provider_pub = generate_identity(tmp_path / "keys", "provider")
    auditor, _, _ = generate_identity(tmp_path / "keys", "auditor")
    out = tmp_path / "p.toml"
    rc, err = init(capsys, "--platform", "sev-snp", "--gpu", "--out", str(out),
                   "--measurement", H["a"], "--measurement", "0X" + H["b"].upper(),
                   "--code-identity", CODE, *EXPECT,
                   "--provider-key", str(provider_pub),                      # a .pub file
                   "--auditor-key", auditor.public_raw().hex(),              # the raw key in hex
                   "--log-key", LOG.verifier_key, "--require-log")
    assert rc == 0, err
    pol = policy.load(out)
    assert pol.unpinned("sev-snp") == [] and pol.gpu_required and pol.accepts("nvidia")
    assert pol.platforms["sev-snp"].measurements == (H["a"], H["b"])
    assert pol.code_identities == (CODE,)
    assert pol.expect == {f"{k}_digest": v for k, v in DIGEST.items()}
    assert pol.party_keys == {"provider": provider.public_raw(), "auditor": auditor.public_raw()}
    assert pol.log is not None and pol.log.public_key == LOG.verifier_key and pol.log.require_inclusion
    assert "pins the model, dataset and spec digests, the code and the log" in err
    assert "NOT PINNED" not in out.read_text()


def test_party_keys_in_base64_and_pem_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import base64

    provider, _, provider_pub = generate_identity(tmp_path / "keys", "provider")
    out = tmp_path / "p.toml"
    for value in (base64.b64encode(provider.public_raw()).decode(), provider_pub.read_text()):
        rc, err = init(capsys, "--platform", "sim", "--out", str(out), "--force", "--provider-key", value)
        assert rc == 0, err
        assert policy.load(out).party_keys == {"provider": provider.public_raw()}


def test_reference_values_fragments_of_each_platform(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tdx = tmp_path / "tdx.toml"
    assert main(["enclave", "reference-values", "--platform", "tdx", "--out", str(tdx), "--mrtd", H["a"],
                 "--rtmr0", H["b"], "--rtmr1", H["c"]]) == 0
    out = tmp_path / "p.toml"
    rc, err = init(capsys, "--platform", "tdx", "--reference-values", str(tdx), "--rtmr", "2=" + H["d"],
                   "--out", str(out))
    assert rc == 0, err
    pol = policy.load(out)
    assert pol.pins_measurement("tdx")
    assert pol.platforms["tdx"].measurements == {"mrtd": (H["a"],), "rtmr0": (H["b"],), "rtmr1": (H["c"],),
                                                 "rtmr2": (H["d"],)}
    assert "# Values from tdx.toml (sha256 " in out.read_text()

    # without RTMR2 the kernel command line is open: TDX is then not pinned, and the file and stderr say so
    rc, err = init(capsys, "--platform", "tdx", "--reference-values", str(tdx), "--out", str(out), "--force")
    assert rc == 0 and "no launch measurement pinned" in err and "code identity" in err
    assert "NOT PINNED: no launch measurement" in out.read_text()

    build = tmp_path / "nitro-build.json"
    build.write_text(json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": H["a"],
                                                  "PCR1": H["b"], "PCR2": H["c"]}}))
    frag = tmp_path / "nitro.toml"
    assert main(["enclave", "reference-values", "--platform", "nitro", "--from-json", str(build),
                 "--out", str(frag)]) == 0
    rc, err = init(capsys, "--platform", "nitro", "--reference-values", str(frag), "--pcr", "8=" + H["e"],
                   "--out", str(out), "--force")
    assert rc == 0, err
    assert policy.load(out).platforms["nitro"].pcrs == {0: (H["a"],), 1: (H["b"],), 2: (H["c"],), 8: (H["e"],)}

    snp = tmp_path / "snp.toml"
    assert main(["enclave", "reference-values", "--platform", "sev-snp", "--measurement", H["f"],
                 "--out", str(snp)]) == 0
    rc, err = init(capsys, "--platform", "sev-snp", "--reference-values", str(snp), "--measurement", H["f"],
                   "--out", str(out), "--force")
    assert rc == 0 and policy.load(out).platforms["sev-snp"].measurements == (H["f"],)  # merged, once

    rc, err = init(capsys, "--platform", "tdx", "--reference-values", str(snp), "--out", str(out), "--force")
    assert rc == 2 and "expected one [tdx] table" in err


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "p.toml"
    out.write_text("# mine\n")
    rc, err = init(capsys, "--platform", "sim", "--out", str(out))
    assert rc == 2 and "--force" in err and out.read_text() == "# mine\n"
    rc, err = init(capsys, "--platform", "sim", "--out", str(out), "--force")
    assert rc == 0 and policy.load(out).accepts("sim")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]  # no temporary file left


def test_nitro_with_gpu_is_refused_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc, err = init(capsys, "--platform", "nitro", "--gpu", "--out", str(tmp_path / "p.toml"))
    assert rc == 2 and "no GPU" in err and "docs/POLICY.md" in err
    assert not (tmp_path / "p.toml").exists()


@pytest.mark.parametrize("argv,says", [
    (["--platform", "sev-snp", "--measurement", "ab" * 47], "--measurement: expected 96 hex digits"),
    (["--platform", "sim", "--measurement", "ab" * 48], "--measurement: expected 64 hex digits"),
    (["--platform", "sev-snp", "--mrtd", "ab" * 48], "--mrtd do(es) not apply to --platform sev-snp"),
    (["--platform", "sev-snp", "--rtmr", "0=" + "ab" * 48], "--rtmr do(es) not apply"),
    (["--platform", "nitro", "--pcr", "5=" + "ab" * 48], "INDEX one of 0, 1, 2, 3, 4, 8"),
    (["--platform", "tdx", "--rtmr", "ab" * 48], "expected INDEX=HEX"),
    (["--platform", "sim", "--model-digest", "ab" * 32], f"did you mean sha256:{'ab' * 32}?"),
    (["--platform", "sim", "--spec-digest", "sha256:xyz"], "--spec-digest must be sha256:<64 lowercase hex digits>"),
    (["--platform", "sim", "--code-identity", "zz"], "--code-identity: expected 64 hex digits"),
    (["--platform", "sim", "--require-log"], "--require-log needs --log-key"),
    (["--platform", "sim", "--log-key", "log+00000000+AAAA"], "log key"),
    (["--platform", "sim", "--provider-key", "nope"], "--provider-key: expected the party's .pub file"),
])
def test_bad_values_are_refused_naming_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], says: str):
    rc, err = init(capsys, *argv, "--out", str(tmp_path / "p.toml"))
    assert rc == 2 and says in err, err
    assert "Traceback" not in err and not (tmp_path / "p.toml").exists()


def test_a_private_key_is_never_written_or_quoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The attacker here is a slip: the party's .key file passed where its .pub belongs."""
    _, key_path, _ = generate_identity(tmp_path / "keys", "provider")
    secret = key_path.read_text()
    for value in (str(key_path), secret):
        rc, err = init(capsys, "--platform", "sim", "--provider-key", value, "--out", str(tmp_path / "p.toml"))
        assert rc == 2 and "is a private key" in err
        body = "".join(secret.splitlines()[1:-1])
        assert body[:20] not in err
    assert not (tmp_path / "p.toml").exists()


def test_what_a_user_types_cannot_add_keys_to_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A value that tries to close its string and add a table (here: accept any SEV-SNP enclave) is refused:
    every value is checked against its format before it is written, and the file is parsed back."""
    out = tmp_path / "p.toml"
    for flag, value in (("--provider-key", "x'''\n[sev-snp]\n"), ("--measurement", H["a"][:-2] + '"]\n[tdx]\n#'),
                        ("--log-key", 'a+b+c"\n[sev-snp]\n#')):
        rc, err = init(capsys, "--platform", "sim", flag, value, "--out", str(out))
        assert rc == 2, (flag, err)
        assert not out.exists()


def test_the_file_has_comments_for_every_key_the_parser_knows(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Uncommenting every example line of a generated file gives a policy the parser accepts: the
    commented lines are real keys in a real format, not prose."""
    for platform, gpu in (("sim", True), ("sev-snp", True), ("tdx", True), ("nitro", False)):
        out = tmp_path / f"{platform}.toml"
        rc, err = init(capsys, "--platform", platform, *(["--gpu"] if gpu else []), "--out", str(out))
        assert rc == 0, err
        lines = []
        for line in out.read_text().splitlines():
            if re.match(r"# (?:[a-z_0-9]+ = |\[|'''$|-----|\.\.\.$)", line):  # a key, a table or a PEM line
                line = line[2:]
            lines.append(line)
        text = "\n".join(lines).replace("<96 hex digits>", "a" * 96).replace("<64 hex digits>", "b" * 64)
        text = text.replace("...", "MCowBQYDK2VwAyEAHe6Y4wcluv03u5tr53VbLEMopxAma04tQvpsEjcp82c=")
        text = text.replace("<name+keyid+base64>", LOG.verifier_key)
        data = tomllib.loads(text)
        pol = policy.parse(data, str(out))
        assert pol.unpinned(platform) == [], platform
