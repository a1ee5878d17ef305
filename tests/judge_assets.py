"""Tiny judges, model and paper-preset data shared by tests/test_judges.py and tests/test_paper_presets.py,
and the direct computations (outside lm-eval and benchmarks.judges) their numbers are checked against."""

from __future__ import annotations

import functools
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.demo_assets import build_tiny_model
from benchmarks.tiny_judges import build_tiny_judges, write_tiny_paper_data


def build_assets(root: Path) -> dict[str, Path]:
    """The tiny audited model, the judges folder and the data folder under `root`."""
    build_tiny_model(root / "model", seed=1)
    build_tiny_judges(root / "judges", seed=0)
    write_tiny_paper_data(root / "data", seed=0, n=20)
    return {"model": root / "model", "judges": root / "judges", "data": root / "data"}


def bundle(data: Path) -> dict[str, bytes]:
    """The data files as the runner gets them, named as the presets' specs name them (data/<file>)."""
    return {f"data/{p.name}": p.read_bytes() for p in sorted(data.glob("*.jsonl"))}


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """The aggregate and stderr lm-eval reports for a "mean" metric: sample standard deviation / sqrt(n)."""
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def direct_toxic_probability(folder: Path, texts: list[str], label: str) -> list[float]:
    """The classifier's softmax probability of `label`, one text at a time, with plain transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
    index = model.config.label2id[label]
    out = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tok(text, return_tensors="pt", truncation=True, max_length=128)).logits[0]
            out.append(torch.softmax(logits, -1)[index].item())
    return out


def direct_embedding(folder: Path, text: str) -> Any:
    """The encoder's sentence embedding without sentence-transformers: BERT, mean over the
    attention mask, then the Dense module's weights read from its safetensors, and tanh."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    dense = load_file(folder / "2_Dense" / "model.safetensors")
    enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    mask = enc["attention_mask"][0].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(0) / mask.sum()
    return torch.tanh(pooled @ dense["linear.weight"].T + dense["linear.bias"])


def direct_cosine(folder: Path, a: str, b: str) -> float:
    import torch

    return torch.nn.functional.cosine_similarity(direct_embedding(folder, a), direct_embedding(folder, b), dim=0).item()


def direct_choice_logprob(folder: Path, prompt: str, choice: str) -> float:
    """Sum of log-probabilities of the choice's tokens after the prompt, one unpadded sequence."""
    import torch

    tok, model = _causal_lm(folder)
    ctx, cont = tok(prompt).input_ids, tok(choice, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
    return sum(logprobs[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


@functools.cache
def _causal_lm(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
