"""Docs that run: every ```sh block of README.md and docs/*.md is executed, in order, one bash script per
document (`set -euo pipefail`), against a real sim enclave, a real log and a real receipt gateway on loopback.

A block that cannot run here says so on its first line (`# not run by tests: <reason>`); the list of
such blocks is fixed below, so a block cannot quietly stop running. The sandbox holds only what the docs
assume their reader already has: the provider's model folder, the auditor's data and spec, the inputs of
`aaudit enclave reference-values`, and the services the docs' readers connect to.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aaudit.demo import stop_servers
from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from tlog.keys import load_or_create

pytestmark = pytest.mark.timeout(400)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
NOT_RUN = "# not run by tests:"
# (document, first command of the block) for every block marked not run; anything else must run.
EXPECTED_NOT_RUN = {
    ("README.md", "make demo"),
    ("README.md", "python - <<'PY'"),
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124"),
    ("docs/DEPLOY.md", "git clean -xfd"),
    ("docs/DEPLOY.md", "qemu-system-x86_64 -machine q35,confidential-guest-support=sev0,memory-backend=ram1 \\"),
    ("docs/DEPLOY.md", "nitro-cli build-enclave --docker-uri aaudit-enclave:cpu --output-file aaudit.eif > build.json"),
    ("docs/DEPLOY.md", "nitro-cli run-enclave --eif-path aaudit.eif --cpu-count 8 --memory 32768"),
    ("docs/TRANSPARENCY_LOG.md", "aaudit log serve --db /var/lib/aaudit/log.db --listen 0.0.0.0:7300 --origin example.com/audits"),
}
# Where a document's script runs, relative to the sandbox (FORMATS.md's check reads a bundle next to its model).
# SPEC.md's checks read the demo's spec and data as `make demo` leaves them in demo-out/.
CWD = {"docs/FORMATS.md": "readme/demo-out", "docs/SPEC.md": "readme"}


def blocks(doc: str) -> list[tuple[str, str]]:
    """The doc's ```sh blocks as (the heading above it, text)."""
    found, heading, fence, lines = [], "", None, []
    for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
        if fence is None and line.startswith("```"):
            fence, lines = line[3:].strip(), []
        elif fence is not None and line == "```":
            if fence == "sh":
                found.append((heading, "\n".join(lines) + "\n"))
            fence = None
        elif fence is not None:
            lines.append(line)
        elif line.startswith("#"):
            heading = line
    return found


def _not_run(block: str) -> str | None:
    first = block.splitlines()[0]
    return first[len(NOT_RUN):].strip() if first.startswith(NOT_RUN) else None


def _first_command(block: str) -> str:
    return next(line for line in block.splitlines() if line and not line.startswith("#")).split("  #")[0].rstrip()


def test_only_the_listed_blocks_are_not_run_and_each_says_why() -> None:
    marked = set()
    for doc in DOCS:
        for _, block in blocks(doc):
            reason = _not_run(block)
            if reason is not None:
                assert len(reason) > 10, f"{doc}: a block not run must say why: {block.splitlines()[0]}"
                marked.add((doc, _first_command(block)))
    assert marked == EXPECTED_NOT_RUN
    assert sum(len(blocks(d)) for d in DOCS) >= 20, "fewer sh blocks than the docs had: did the extraction break?"


def test_the_readme_shows_the_session_walkthrough() -> None:
    """The front page walks through a whole session, and the test below runs it."""
    verbs = set()
    for _, block in blocks("README.md"):
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split()
            if words[:1] == ["aaudit"]:
                verbs.add(" ".join(words[1:3]))
    for needed in ("auditor create-session", "provider join", "provider upload", "auditor upload",
                   "provider approve", "auditor approve", "auditor run", "log publish", "provider provision",
                   "user chat", "user disclose"):
        assert needed in verbs, needed


# Plays the gateway operator of README's "Serving" section (a server, so not a block): its command as the
# README gives it, with the simulated TEE on a free loopback port.
START_GATEWAY = """
start_gateway() {
    aaudit gateway serve --bundle bundle.json --policy policy.toml --log "$LOG" --tee sim --gpu-evidence none \\
        --listen 127.0.0.1:0 --port-file "$SERVICES/gateway.port" --batch-seconds 0.5 > "$SERVICES/gateway.txt" 2>&1 &
    for _ in $(seq 900); do
        [ -s "$SERVICES/gateway.port" ] && break
        kill -0 $! 2>/dev/null || { cat "$SERVICES/gateway.txt" >&2; return 1; }
        sleep 0.1
    done
    GATEWAY=127.0.0.1:$(cat "$SERVICES/gateway.port")
}
"""
HOOKS = {("README.md", "## Serving the audited model"): "start_gateway"}


def script(doc: str) -> str:
    lines = ["set -euo pipefail", START_GATEWAY]
    hooked = set()
    for heading, block in blocks(doc):
        if _not_run(block) is not None:
            continue
        for (hook_doc, prefix), call in HOOKS.items():
            if hook_doc == doc and heading.startswith(prefix) and call not in hooked:
                lines.append(call)
                hooked.add(call)
        lines += [f"echo {shlex.quote(f'>>> {doc}: {_first_command(block)[:100]}')} >&2", block]
    assert hooked == {c for (d, _), c in HOOKS.items() if d == doc}, f"{doc}: a section the test hooks moved"
    return "\n".join(lines)


def _start(args: list[str], port_file: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", *args, "--port-file", str(port_file)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """The services and the files the docs' readers already have; yields (root, env)."""
    root = tmp_path_factory.mktemp("docs")
    services = root / "services"
    services.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "SERVICES": str(services),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("ENCLAVE", "LOG", "LOG_KEY", "GATEWAY"):
        env.pop(name, None)
    procs = [_start(["log", "serve", "--db", str(services / "log.db"), "--listen", "127.0.0.1:0"],
                    services / "log.port", services / "log.txt", env),
             _start(["enclave", "serve", "--tee", "sim", "--gpu-evidence", "none", "--listen", "127.0.0.1:0"],
                    services / "enclave.port", services / "enclave.txt", env)]
    env.update(LOG=f"127.0.0.1:{(services / 'log.port').read_text().strip()}",
               LOG_KEY=load_or_create(services / "log.db").verifier_key,
               ENCLAVE=f"127.0.0.1:{(services / 'enclave.port').read_text().strip()}", LOG_DB=str(services / "log.db"))

    readme = root / "readme"
    readme.mkdir()
    (readme / ".venv").symlink_to(Path(sys.executable).parent.parent)  # README's `.venv/bin/...` after install
    build_tiny_model(readme / "Llama-3.1-8B-Instruct", seed=7)
    write_demo_data(readme / "my-benchmark-data")
    # The demo data's short-answer task has 18 documents; an aggregate-only spec must allow that few.
    (readme / "audit.toml").write_text(demo_spec_toml().replace('output = "aggregate"\n',
                                                                'output = "aggregate"\nmin_documents = 10\n'))
    # What `make demo` runs once installed (README's first block), for the blocks that re-check demo-out/.
    demo = subprocess.run([sys.executable, "-m", "aaudit.demo", "--out", "demo-out"], cwd=readme, env=env,
                          capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    # docs/SPEC.md imports a locally saved ToxiGen copy: tiny rows of its columns, saved as `datasets` saves them.
    from builtin_rows import preset_rows
    from datasets import Dataset

    Dataset.from_list(preset_rows("toxigen", 30)).save_to_disk(readme / "toxigen-test")  # SPEC.md runs in readme/

    deploy = root / "deploy"
    deploy.mkdir()
    from test_enclave_tools import NITRO_BUILD_OUTPUT, synthetic_ovmf

    synthetic_ovmf(deploy / "OVMF.fd")
    (deploy / "vmlinuz").write_bytes(b"a kernel image")
    (deploy / "aaudit.initrd").write_bytes(b"an initrd")
    tdx = {"mrtd": "11" * 48, "rtmr0": "22" * 48, "rtmr1": "33" * 48, "rtmr2": "44" * 48}
    (deploy / "mr.json").write_text(json.dumps(tdx))  # the shape `dstack-mr -json` prints
    (deploy / "build.json").write_text(json.dumps(NITRO_BUILD_OUTPUT))  # the shape `nitro-cli build-enclave` prints
    env.update({k.upper(): v for k, v in tdx.items()})
    try:
        yield root, env
    finally:
        stop_servers(procs)


def _run(doc: str, root: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["bash", "-c", script(doc)], cwd=cwd, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # what the script left running: the gateway and its engine
        except ProcessLookupError:
            pass
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert done.returncode == 0, f"{doc} failed (exit {done.returncode}):\n{err[-6000:]}"
    assert "Traceback" not in err, err[-6000:]
    return done


@pytest.mark.parametrize("doc", DOCS)
def test_the_doc_runs(doc: str, sandbox) -> None:  # noqa: ANN001
    root, env = sandbox
    if not [b for _, b in blocks(doc) if _not_run(b) is None]:
        pytest.skip(f"{doc} has no sh block to run")
    name = {"README.md": "readme", "docs/DEPLOY.md": "deploy"}.get(doc, Path(doc).stem.lower())
    cwd = root / CWD.get(doc, name)
    if doc == "docs/TRANSPARENCY_LOG.md":  # it publishes, verifies and re-proves a bundle: the demo's, not yet in
        cwd.mkdir(exist_ok=True)           # this log, with the demo's policy pinning this log's key instead
        demo = root / "readme" / "demo-out"
        bundle = json.loads((demo / "bundle.json").read_text())
        del bundle["logEntry"]
        (cwd / "bundle.json").write_text(json.dumps(bundle))
        demo_key = load_or_create(demo / "log" / "log.db").verifier_key
        (cwd / "policy.toml").write_text((demo / "policy.toml").read_text().replace(demo_key, env["LOG_KEY"]))
    done = _run(doc, root, env, cwd)
    if doc == "README.md":
        assert "VERIFIED" in done.stdout and "NOT VERIFIED" not in done.stdout
        disclosure = json.loads((cwd / "disclosure.json").read_text())
        assert disclosure, "the user's disclosure is empty"
