"""docs/POLICY.md is true: every TOML block loads with the policy parser, the examples marked complete
pin everything a verdict can name, every key its tables name is a key the parser knows, and its
`aaudit policy init` commands run and write what the page says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from enclave.measure import code_identity
from verifier import platforms, policy
from verifier.checkpoint import parse_verifier_key
from verifier.errors import PolicyError

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "POLICY.md").read_text(encoding="utf-8")
MARKED = re.findall(r"<!-- policy-example: ([^>]*?) -->\n```toml\n(.*?)```", DOC, flags=re.S)
# Every platform, with and without GPU evidence where a platform can have it (Nitro cannot).
COMPLETE = {("sim", False), ("sev-snp", False), ("sev-snp", True), ("tdx", False), ("tdx", True), ("nitro", False)}


def _example(flags: str) -> tuple[bool, str, bool]:
    words = flags.split()
    platform = next(w for w in words if w in ("sim", "sev-snp", "tdx", "nitro"))
    return "complete" in words, platform, "gpu" in words


def test_every_toml_block_is_a_marked_example() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC, flags=re.S)
    assert len(blocks) == len(MARKED) >= len(COMPLETE)


@pytest.mark.parametrize("flags,text", MARKED, ids=[m[0] for m in MARKED])
def test_example_loads_and_pins_what_it_says(flags: str, text: str) -> None:
    complete, platform, gpu = _example(flags)
    pol = policy.parse(tomllib.loads(text), f"docs/POLICY.md ({flags})")
    assert pol.accepts(platform) and pol.gpu_required == gpu and pol.accepts("nvidia") == gpu
    assert pol.pins_measurement(platform), "every example pins the launch measurement"
    if complete:
        assert pol.unpinned(platform) == []
        assert set(pol.party_keys) == {"provider", "auditor"}
        assert pol.log is not None
        parse_verifier_key(pol.log.public_key)


def test_there_is_a_complete_example_per_platform_and_gpu() -> None:
    found = {(p, g) for c, p, g in map(_example, (m[0] for m in MARKED)) if c}
    assert found == COMPLETE
    assert "### Nitro has no GPU example" in DOC


def _table_keys(section: str) -> list[str]:
    """The keys named in the first column of the first table after the heading `section`."""
    body = DOC.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    keys = []
    for row in rows:
        for span in re.findall(r"`([^`]*)`", row.split("|")[1]):  # `[sim] measurements`, `max_age = "30d"`
            span = re.sub(r"\[+[a-z-]+\]+", "", span.split("=")[0])
            keys += [w for w in re.split(r"[,\s]+", span) if re.fullmatch(r"[a-z][a-z0-9_]*", w)]
    return keys


@pytest.mark.parametrize("section,platform", [("## Simulator", "sim"), ("## AMD SEV-SNP", "sev-snp"),
                                              ("## Intel TDX", "tdx"), ("## AWS Nitro", "nitro")])
def test_every_key_the_page_names_is_a_key_the_parser_knows(section: str, platform: str) -> None:
    from verifier.platforms import nitro, tdx

    keys = _table_keys(section)
    every = {"sim": {"measurements", "allow_debug"},
             "sev-snp": {"measurements", "allow_debug", "min_tcb", "max_vmpl", "host_data", "id_key_digests"},
             "tdx": {*tdx.MEASUREMENT_KEYS, "allow_debug", "accepted_tcb_statuses"},
             "nitro": {*(f"pcr{i}" for i in nitro.POLICY_PCRS), "allow_debug"}}[platform]
    assert set(keys) == every  # and the other way round: no key of the parser goes unexplained
    for key in keys:
        with pytest.raises(PolicyError) as exc:  # a value of the wrong type: refused, but not as unknown
            platforms.get(platform).parse_policy({key: {"not": "a valid value"}})
        assert "unknown key" not in str(exc.value), key


def test_the_common_keys_are_the_parsers() -> None:
    keys = set(_table_keys("## Keys every policy may have"))
    for key in ("allow_simulated", "max_age", "model_digest", "dataset_digest", "spec_digest", "judges_digest",
                "code_identity", "provider_key", "auditor_key", "public_key", "require_inclusion", "required",
                "driver_versions", "vbios_versions", "original_model_digest", "methods"):
        assert key in keys, key
    for key in ("allow_simulated", "max_age", "expect", "log", "threshold", "nvidia", "prepare"):
        assert key in policy._TOP_KEYS
    assert set(keys) <= {"allow_simulated", "max_age", "model_digest", "dataset_digest", "spec_digest", "judges_digest",
                         "code_identity", "provider_key", "auditor_key", "task", "metric", "min", "max", "public_key",
                         "require_inclusion", "required", "driver_versions", "vbios_versions",
                         "original_model_digest", "methods"}
    # the [nvidia] keys are the module's, the threshold keys the parser's
    platforms.get("nvidia").parse_policy({"driver_versions": ["1.0"], "vbios_versions": ["1.0"]})
    policy.parse({"allow_simulated": True, "threshold": [{"task": "t", "metric": "m", "min": 0, "max": 1}]})


def test_the_page_commands_run_and_write_policies(tmp_path: Path) -> None:
    """The sh blocks, run as written by bash, with `aaudit` being this checkout's CLI."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC, flags=re.S)
    assert blocks
    script = f'aaudit() {{ "{sys.executable}" -m aaudit.cli "$@"; }}\nset -e\n' + "\n".join(blocks)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    dev = policy.load(tmp_path / "enclave-policy.toml")
    assert dev.platforms["sim"].measurements == (code_identity(),)
    third = policy.load(tmp_path / "policy.toml")
    assert third.unpinned("sev-snp") == [] and third.gpu_required
    assert "pins the model, dataset and spec digests, the code and the log" in proc.stderr
