"""The demo's tiny model and datasets: deterministic, loadable, well-formed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from benchmarks.spec import parse_spec


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path):
    a = digests(build_tiny_model(tmp_path / "a", seed=0))
    b = digests(build_tiny_model(tmp_path / "b", seed=0))
    c = digests(build_tiny_model(tmp_path / "c", seed=1))
    assert a == b
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(a)
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]  # the tokenizer does not depend on the seed


def test_model_loads_as_a_hugging_face_causal_lm(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    ids = tok("Question: How many bits are in one byte?\nAnswer:", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "Question: How many bits are in one byte?\nAnswer:"  # byte-level: lossless
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_demo_data_is_well_formed(tmp_path: Path):
    paths = write_demo_data(tmp_path)
    mc = [json.loads(line) for line in paths["mc.jsonl"].read_text().splitlines()]
    gen = [json.loads(line) for line in paths["gen.jsonl"].read_text().splitlines()]
    assert 40 <= len(mc) <= 50 and 15 <= len(gen) <= 20
    assert len({r["question"] for r in mc}) == len(mc)
    for r in mc:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4
    # answers spread over the positions, so "always pick A" is no shortcut
    assert {r["answer"] for r in mc} == {0, 1, 2, 3}
    for r in gen:
        assert r["answer"] and "\n" not in r["answer"] and len(r["answer"].split()) == 1
    spec = parse_spec(demo_spec_toml().encode())
    assert set(spec.datasets) == set(paths)
