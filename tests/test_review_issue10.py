"""Attacks on issue 10's judges and step B (independent review): each test tries one and shows
what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.judges import JudgeError, check_judge_folder
from benchmarks.tiny_judges import build_tiny_classifier


def _shard_out(folder: Path, outside: Path, *, absolute: bool) -> None:
    """Move `folder`'s weights to `outside` and leave an index whose weight map names them there."""
    from safetensors import safe_open

    outside.mkdir(parents=True, exist_ok=True)
    shutil.move(folder / "model.safetensors", outside / "model.safetensors")
    with safe_open(str(outside / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    target = str(outside / "model.safetensors") if absolute else \
        str(Path("..") / ".." / outside.parent.name / outside.name / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map":
                                                                      {k: target for k in keys}}))


@pytest.mark.parametrize("absolute", [False, True])
def test_judge_index_cannot_load_weights_from_outside_its_folder(tmp_path: Path, absolute: bool) -> None:
    """A malicious auditor's judge whose safetensors index names `../../model-<id>/model.safetensors`
    (or an absolute path) would load another asset on the enclave's tmpfs, e.g. the audited
    model's weights, as its own: transformers joins the shard names to the folder unchecked."""
    judges = tmp_path / "judges"
    build_tiny_classifier(judges / "tox", seed=1)
    _shard_out(judges / "tox", tmp_path / "model-0123" / "weights", absolute=absolute)
    # control: the same files loaded directly do read the outside weights (the attack is real)
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(judges / "tox", use_safetensors=True, local_files_only=True)
    with pytest.raises(JudgeError, match="outside the folder"):
        check_judge_folder(judges, "tox", "classifier")


def test_judge_index_naming_its_own_shards_is_accepted(tmp_path: Path) -> None:
    judges = tmp_path / "judges"
    build_tiny_classifier(judges / "tox", seed=1)
    _shard_out(judges / "tox", judges / "tox" / "shards", absolute=False)
    index = judges / "tox" / "model.safetensors.index.json"
    weight_map = {k: "shards/model.safetensors" for k in json.loads(index.read_text())["weight_map"]}
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert check_judge_folder(judges, "tox", "classifier") == (judges / "tox").resolve()
    (judges / "tox" / "model.safetensors.index.json").write_text("[1]")
    with pytest.raises(JudgeError, match="not a JSON weight index"):
        check_judge_folder(judges, "tox", "classifier")


def test_prepare_refuses_a_model_whose_index_reads_another_folder(tmp_path: Path) -> None:
    """A malicious provider's M whose index names weights outside M (the auditor's judges live on
    the same tmpfs) would get them quantised into Mq, which is sealed to the provider."""
    from benchmarks.demo_assets import build_tiny_model
    from enclave.jobs import JobFailed
    from enclave.prepare import quantise

    model = build_tiny_model(tmp_path / "model-m", seed=3)
    _shard_out(model, tmp_path / "judges-0123" / "tox", absolute=False)
    with pytest.raises(JobFailed, match="outside the folder"):
        quantise(model, tmp_path / "mq", "cast:float32", device="cpu")
    assert not (tmp_path / "mq").exists()


def test_prepare_refuses_a_model_whose_checkpoint_lacks_weights(tmp_path: Path) -> None:
    """A stranger's M of a few bytes whose config describes a large model: transformers would
    initialise the missing weights at random, so the prepare job would write an Mq far beyond the
    tmpfs it reserved (output_bound of M's bytes) and sign a link M -> Mq that M does not determine."""
    import torch
    from safetensors.torch import save_file

    from benchmarks.demo_assets import build_tiny_model
    from enclave.jobs import JobFailed
    from enclave.prepare import output_bound, quantise

    model = build_tiny_model(tmp_path / "model-m", seed=3)
    config = json.loads((model / "config.json").read_text())
    config.update(num_hidden_layers=4, hidden_size=128, intermediate_size=512)
    (model / "config.json").write_text(json.dumps(config))
    save_file({"unused": torch.zeros(1)}, str(model / "model.safetensors"))
    m_bytes = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert output_bound("cast:float32", m_bytes) < 4 << 20  # what the enclave would reserve for Mq
    with pytest.raises(JobFailed, match="lacks"):
        quantise(model, tmp_path / "mq", "cast:float32", device="cpu")
    assert not (tmp_path / "mq").exists()


def test_audit_refuses_a_model_whose_index_reads_another_folder(tmp_path: Path) -> None:
    """The audited model's index, like a judge's, may name only its own files: the run stops before
    any weights load."""
    from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
    from benchmarks.spec import parse_spec
    from enclave.runner import run_audit
    from verifier.errors import UnusableInput

    build_tiny_model(tmp_path / "model", seed=3)
    _shard_out(tmp_path / "model", tmp_path / "judges-0123" / "tox", absolute=False)
    data = {p.name: p.read_bytes() for p in write_demo_data(tmp_path / "data").values()}
    with pytest.raises(UnusableInput, match="the model folder: model.safetensors.index.json names a weight file "
                                            "outside the folder"):
        run_audit(tmp_path / "model", parse_spec(demo_spec_toml().encode()), data, device="cpu")
