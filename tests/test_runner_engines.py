"""The spec's engine settings as the runner applies them, on the tiny demo model on CPU.

A bf16 checkpoint runs in bf16 unless the spec asks otherwise (and so is held at its file size,
not upcast to twice it); `batch_size = "auto"` runs lm-eval's batch finder and the statement
records what it found; an engine this image lacks is refused before anything is read."""

from __future__ import annotations

import json
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from benchmarks.spec import parse_spec
from enclave.runner import EngineUnavailable, _Counter, _engine_lm, engine_problem, run_audit

# The demo's multiple-choice task only: the engine, not the task mix, is under test.
MC_TOML = demo_spec_toml().split("\n[[task]]\nname = \"aa_demo_gen\"")[0]


def spec(engine: str = "") -> Any:
    return parse_spec((MC_TOML + ("\n[engine]\n" + engine + "\n" if engine else "")).encode())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/ (float32, as the demo builds it), model-bf16/ (the same weights saved in bfloat16), data."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("engines")
    build_tiny_model(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.bfloat16)
    model.save_pretrained(root / "model-bf16")
    AutoTokenizer.from_pretrained(root / "model").save_pretrained(root / "model-bf16")
    write_demo_data(root)
    return root


def data(demo: Path) -> dict[str, bytes]:
    return {"mc.jsonl": (demo / "mc.jsonl").read_bytes()}


def test_the_bf16_copy_says_bfloat16_in_its_config(demo: Path):
    assert json.loads((demo / "model-bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_bf16_checkpoint_runs_in_bf16_on_cpu_with_dtype_auto(demo: Path):
    run = run_audit(demo / "model-bf16", spec(), data(demo), device="cpu")
    assert (run.device, run.dtype) == ("cpu", "bfloat16")
    assert run.engine == {"name": "hf", "version": version("transformers"),
                          "settings": {"batch_size": 1, "dtype": "auto", "parallelize": False}}
    assert 0.0 <= run.results["aa_demo_mc"]["acc,none"] <= 1.0


def test_spec_float32_upcasts_a_bf16_checkpoint(demo: Path):
    run = run_audit(demo / "model-bf16", spec('dtype = "float32"'), data(demo), device="cpu")
    assert run.dtype == "float32" and run.engine["settings"]["dtype"] == "float32"


def parameter_bytes(model_dir: Path, dtype: str) -> int:
    lm = _engine_lm(model_dir, spec(f'dtype = "{dtype}"'), "cpu", _Counter([], lambda *a: None))
    return sum(p.numel() * p.element_size() for p in lm.model.parameters())


def test_bf16_checkpoint_is_held_at_its_file_size_not_twice_it(demo: Path):
    """Deliverable bound: a bf16 checkpoint on CPU holds its weights in bf16 (the safetensors file's
    size, give or take its header), where an upcast to float32 holds twice that."""
    file_bytes = (demo / "model-bf16" / "model.safetensors").stat().st_size
    auto, upcast = parameter_bytes(demo / "model-bf16", "auto"), parameter_bytes(demo / "model-bf16", "float32")
    assert auto <= file_bytes < upcast
    assert upcast == 2 * auto


def test_batch_size_auto_runs_the_finder_and_records_its_choice(demo: Path):
    auto = run_audit(demo / "model", spec('batch_size = "auto"\nmax_batch_size = 8'), data(demo), device="cpu")
    # On CPU nothing runs out of memory, so lm-eval's finder keeps its starting size.
    assert auto.engine["settings"] == {"batch_size": "auto", "max_batch_size": 8, "dtype": "auto",
                                       "parallelize": False, "detected_batch_sizes": [8]}
    fixed = run_audit(demo / "model", spec("batch_size = 8"), data(demo), device="cpu")
    assert fixed.engine["settings"] == {"batch_size": 8, "dtype": "auto", "parallelize": False}
    assert auto.results == fixed.results and auto.samples_root == fixed.samples_root


@pytest.mark.skipif(find_spec("vllm") is not None, reason="this environment has vLLM")
def test_vllm_where_it_is_missing_is_refused_before_anything_is_read(demo: Path):
    vllm = spec('name = "vllm"\ntensor_parallel_size = 2')
    problem = engine_problem(vllm.engine)
    assert problem is not None and engine_problem(spec().engine) is None
    for fragment in ('[engine] name = "vllm"', "vLLM is not installed", "GPU image", '[engine] name = "hf"',
                     "upload it again"):
        assert fragment in problem
    with pytest.raises(EngineUnavailable) as info:  # bytes that are not JSONL: never parsed
        run_audit(demo / "missing-model", vllm, {"mc.jsonl": b"\xff not json"}, device="cpu")
    assert str(info.value) == problem


@pytest.mark.skipif(find_spec("ray") is not None, reason="this environment has Ray")
def test_vllm_data_parallel_needs_ray(demo: Path, monkeypatch: pytest.MonkeyPatch):
    import enclave.runner as runner

    monkeypatch.setattr(runner, "find_spec", lambda name: None if name == "ray" else object())
    problem = engine_problem(spec('name = "vllm"\ndata_parallel_size = 2').engine)
    assert problem is not None and "Ray" in problem and "data_parallel_size = 1" in problem
    assert engine_problem(spec('name = "vllm"').engine) is None
