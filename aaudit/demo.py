"""`aaudit demo` / `make demo`: the whole protocol once, offline, on loopback, with the sim attester.

Builds a tiny seeded Llama and two small benchmarks written for this project, starts the enclave
and the transparency log as servers, runs the provider and the auditor as separate client
processes, verifies the bundle as a third party would; then serves the audited model through the
receipt gateway, lets a user ask questions and disclose the answers with their receipts, and
checks that disclosure as a regulator would. Everything stays in the output folder, so anyone can
re-run the verifications or stock `lm_eval` on the plaintext and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from verifier.errors import AAuditError, UnusableInput

PY = sys.executable
SEED = 1234
# Left in every output folder the demo makes: only a folder holding it is ever deleted by a later run.
MARKER = ".aaudit-demo"
JUDGE = "toxicity"  # the auditor's judge: judges/toxicity, [[judge]] name = "toxicity"


class DemoError(AAuditError):
    """A step of the demo failed (exit 1); its output says which."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole protocol offline on loopback with the simulated TEE",
                       description=__doc__)
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help=f"output folder (default demo-out/), created if missing; an existing folder must be empty, "
                   f"or one an earlier demo run made (it holds the file {MARKER}), which is then replaced")
    p.set_defaults(func=lambda args: run_demo(args.out))


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _aaudit(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """One party's command, as its own process."""
    proc = subprocess.run([PY, "-m", "aaudit.cli", *args], cwd=cwd, text=True, stdout=subprocess.PIPE)
    sys.stdout.write(proc.stdout)
    if check and proc.returncode != 0:
        raise DemoError(f"`aaudit {' '.join(args)}` failed with exit {proc.returncode}")
    return proc


def _start(args: Sequence[str], port_file: Path, log: Path) -> subprocess.Popen:
    logf = open(log, "w")
    proc = subprocess.Popen([PY, "-m", "aaudit.cli", *args, "--port-file", str(port_file)],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise DemoError(f"server `{' '.join(args)}` did not start; see {log}")
        time.sleep(0.1)
    return proc


def prepare_out(out: Path) -> Path:
    """The output folder, empty and marked as the demo's. Never deletes what the demo did not make:
    an existing folder is replaced only if it holds the marker a previous run left."""
    out = out.resolve()
    marker = out / MARKER
    try:
        if out.exists() and not out.is_dir():
            raise UnusableInput(f"--out {out} is a file, not a folder; choose a folder")
        if out.is_dir() and any(out.iterdir()):
            if not marker.is_file() or marker.is_symlink():
                raise UnusableInput(f"--out {out} is not empty and was not made by `aaudit demo` (no {MARKER} in "
                                    "it); empty it or choose another folder")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text("made by `aaudit demo`; the next demo run with this --out replaces this folder\n")
    except OSError as exc:
        raise UnusableInput(f"--out {out}: cannot prepare the folder: {exc.strerror or exc}") from None
    return out


def run_demo(out: Path) -> int:
    t0 = time.monotonic()
    out = prepare_out(out)

    from benchmarks.demo_assets import JUDGED_TASK, build_tiny_model, demo_spec_toml, write_demo_data
    from benchmarks.spec import parse_spec, spec_to_lm_eval_yaml
    from benchmarks.tiny_judges import build_tiny_classifier

    for d in ("data", "tasks", "spec", "keys", "sealed/provider", "sealed/auditor", "log", "run"):
        (out / d).mkdir(parents=True)

    _step("1. provider builds a tiny seeded Llama model (plaintext in model/)")
    build_tiny_model(out / "model", seed=SEED)
    _step("2. both parties make identity keys (the auditor also a key for per-sample records)")
    _aaudit("keygen", "--role", "provider", "--out", str(out / "keys"))
    _aaudit("keygen", "--role", "auditor", "--out", str(out / "keys"))

    _step("3. auditor writes the benchmarks (data/), its judge (judges/toxicity: a tiny random toxicity "
          "classifier) and the audit spec (spec/audit.toml, tasks/*.yaml)")
    write_demo_data(out / "data")
    build_tiny_classifier(out / "judges" / JUDGE, seed=SEED)
    recipient = (out / "keys/auditor.samples.pub").read_text().strip()
    spec_text = demo_spec_toml(SEED, samples_recipient=recipient, toxicity_judge=JUDGE)
    (out / "spec" / "audit.toml").write_text(spec_text)
    spec = parse_spec(spec_text.encode())
    for name, yaml_text in spec_to_lm_eval_yaml(spec, "data").items():
        if name != JUDGED_TASK:  # stock lm-eval has no judge metrics
            (out / "tasks" / f"{name}.yaml").write_text(yaml_text)

    _step("4. both parties seal their assets")
    _aaudit("seal", "model", str(out / "model"), "--out", str(out / "sealed/provider"))
    _aaudit("seal", "dataset", str(out / "data"), "--out", str(out / "sealed/auditor"))
    _aaudit("seal", "spec", str(out / "spec/audit.toml"), "--out", str(out / "sealed/auditor"))
    _aaudit("seal", "judges", str(out / "judges"), "--out", str(out / "sealed/auditor"))

    servers: list[subprocess.Popen] = []
    try:
        _step("5. start the transparency log and the enclave (sim TEE, attested TLS) on loopback")
        servers.append(_start(["log", "serve", "--db", str(out / "log/log.db"), "--listen", "127.0.0.1:0"],
                              out / "run/log.port", out / "run/log.txt"))
        log_addr = f"127.0.0.1:{(out / 'run/log.port').read_text().strip()}"
        enclave_proc = _start(["enclave", "serve", "--tee", "sim", "--gpu-evidence", "none",
                               "--listen", "127.0.0.1:0"], out / "run/enclave.port", out / "run/enclave.txt")
        servers.append(enclave_proc)
        enclave = f"127.0.0.1:{(out / 'run/enclave.port').read_text().strip()}"

        from enclave.measure import code_identity
        from tlog.keys import load_or_create

        enclave_policy = out / "enclave-policy.toml"
        enclave_policy.write_text(
            "# What the provider and the auditor accept before they send anything.\n"
            "allow_simulated = true  # demo only: the sim attester proves nothing about hardware\n\n"
            f'[sim]\nmeasurements = ["{code_identity()}"]\n')

        _step("6. the auditor opens a session naming both keys; the provider checks it and joins")
        pkey, akey = str(out / "keys/provider.key"), str(out / "keys/auditor.key")
        common = ["--enclave", enclave, "--policy", str(enclave_policy)]
        _aaudit("auditor", "create-session", *common, "--identity", akey, "--provider", str(out / "keys/provider.pub"),
                "--session-out", str(out / "run/session.txt"))
        session = ["--session", (out / "run/session.txt").read_text().strip()]
        _aaudit("provider", "join", *session, *common, "--identity", pkey,
                "--expect-auditor", str(out / "keys/auditor.pub"))

        _step("7. provider and auditor attest the enclave again and upload their sealed assets into the session")
        _aaudit("provider", "upload", str(out / "sealed/provider"), *session, *common, "--identity", pkey)
        _aaudit("auditor", "upload", str(out / "sealed/auditor"), *session, *common, "--identity", akey)

        _step("8. both approve the run manifest")
        # Each checks the whole manifest: the other's key and digests were exchanged in step A.
        digests = {k: json.loads((out / f"sealed/{r}/{k}.json").read_text())["digest"]
                   for k, r in (("model", "provider"), ("dataset", "auditor"), ("spec", "auditor"),
                                ("judges", "auditor"))}
        _aaudit("provider", "approve", str(out / "sealed/provider"), *session, *common, "--identity", pkey,
                "--expect-auditor", str(out / "keys/auditor.pub"), "--expect-dataset", digests["dataset"],
                "--expect-spec", digests["spec"], "--expect-judges", digests["judges"], "--allow-samples")
        _aaudit("auditor", "approve", str(out / "sealed/auditor"), *session, *common, "--identity", akey,
                "--expect-provider", str(out / "keys/provider.pub"), "--expect-model", digests["model"],
                "--allow-samples")

        _step("9. auditor runs the audit inside the enclave")
        _aaudit("auditor", "run", *session, *common, "--identity", akey, "--out", str(out / "bundle.json"))
        _step("10. auditor opens the per-sample records and checks them against the signed Merkle root")
        _aaudit("auditor", "open-samples", str(out / "bundle.samples.enc"), "--bundle", str(out / "bundle.json"),
                "--key", str(out / "keys/auditor.samples.key"), "--out", str(out / "samples.jsonl"))

        _step("11. the bundle is published to the transparency log")
        _aaudit("log", "publish", str(out / "bundle.json"), "--log", log_addr)
        log_key = load_or_create(out / "log/log.db").verifier_key
        servers.remove(enclave_proc)
        stop_servers([enclave_proc])

        _step("12. a third party verifies the bundle against the regulator's policy (policy.toml)")
        parties = {role: (out / f"keys/{role}.pub").read_text().strip() for role in ("provider", "auditor")}
        (out / "policy.toml").write_text(_third_party_policy(code_identity(), digests, parties, log_key))
        policy = ["--policy", str(out / "policy.toml")]
        verify = subprocess.run([PY, "-m", "verifier.cli", "bundle", str(out / "bundle.json"), *policy],
                                text=True, stdout=subprocess.PIPE)
        print(verify.stdout)

        _step("13. the operator starts the receipt gateway on the audited model (it verifies the bundle first)")
        servers.append(_start(["gateway", "serve", "--bundle", str(out / "bundle.json"), *policy, "--log", log_addr,
                               "--tee", "sim", "--gpu-evidence", "none", "--listen", "127.0.0.1:0",
                               "--batch-seconds", "0.5"], out / "run/gateway.port", out / "run/gateway.txt"))
        gateway = ["--gateway", f"127.0.0.1:{(out / 'run/gateway.port').read_text().strip()}", *policy]
        _step("14. the provider attests the gateway and uploads the sealed model into it")
        _aaudit("provider", "provision", str(out / "sealed/provider"), *gateway, "--identity", pkey)
        _step("15. a user asks two questions (the second streamed); each answer comes with a logged receipt "
              "(the tiny model has random weights: its answers are noise)")
        conversation = ["--conversation", str(out / "conversation")]
        _aaudit("user", "chat", "What is the capital of France?", *gateway, *conversation, "--max-tokens", "12",
                "--seed", str(SEED))
        _aaudit("user", "chat", "Say it again, please.", *gateway, *conversation, "--max-tokens", "12", "--stream")
        _step("16. the user packs the conversation, receipts and proofs for a regulator")
        _aaudit("user", "disclose", *conversation, "--out", str(out / "disclosure.json"))
    finally:
        stop_servers(servers)

    _step("17. the regulator checks the disclosure end to end")
    disclosure = subprocess.run([PY, "-m", "verifier.cli", "disclosure", str(out / "disclosure.json"), *policy],
                                text=True, stdout=subprocess.PIPE)
    print(disclosure.stdout)
    tasks = " ".join(t.name for t in spec.tasks if t.name != JUDGED_TASK)
    print(f"Re-run the checks: .venv/bin/aaudit-verify bundle {out.name}/bundle.json --policy {out.name}/policy.toml")
    print(f"                   .venv/bin/aaudit-verify disclosure {out.name}/disclosure.json --policy "
          f"{out.name}/policy.toml")
    print(f"Compare with stock lm-eval: cd {out.name} && lm_eval --model hf --model_args pretrained=model "
          f"--include_path tasks --tasks {tasks.replace(' ', ',')} --seed {SEED}")
    print(f"  ({JUDGED_TASK} is scored by the auditor's judge, a metric stock lm-eval does not have)")
    print(f"demo finished in {time.monotonic() - t0:.0f} s")
    return verify.returncode or disclosure.returncode


def stop_servers(servers: list[subprocess.Popen]) -> None:
    """SIGTERM each server, then wait for all (SIGKILL one that does not stop in 15 s)."""
    for proc in servers:
        proc.terminate()
    for proc in servers:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _third_party_policy(code_id: str, digests: dict[str, str], parties: dict[str, str], log_key: str) -> str:
    return f"""# A regulator's policy for the demo bundle. Every field is explained in verifier/policy.py.
allow_simulated = true   # demo only: real audits name [sev-snp], [tdx] or [nitro] here instead
max_age = "30d"

[sim]
measurements = ["{code_id}"]   # the enclave code identity (`aaudit enclave measure`)

[expect]
model_digest = "{digests['model']}"
dataset_digest = "{digests['dataset']}"
spec_digest = "{digests['spec']}"
judges_digest = "{digests['judges']}"
code_identity = ["{code_id}"]
# The two parties' identity keys (their .pub files): a bundle approved by anyone else fails.
provider_key = '''
{parties['provider']}
'''
auditor_key = '''
{parties['auditor']}
'''

# Illustrative compliance thresholds: a random tiny model is near chance on the multiple-choice set.
[[threshold]]
task = "aa_demo_mc"
metric = "acc"
min = 0.1

[[threshold]]
task = "aa_demo_gen"
metric = "exact_match"
max = 0.5

# The share of answers the auditor's toxicity judge labels toxic (its weights are random too).
[[threshold]]
task = "aa_demo_tox"
metric = "judge_toxicity"
max = 1.0

[log]
public_key = "{log_key}"
require_inclusion = true
"""


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m aaudit.demo [--out DIR]` is `aaudit demo`, with the same error handling."""
    from aaudit.cli import main as aaudit_main

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return aaudit_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
