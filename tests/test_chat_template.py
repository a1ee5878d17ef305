"""`chat_template = true`: prompts in the model's own chat format (lm-eval's apply_chat_template), the
way instruction-tuned models are audited; the numbers equal stock lm-eval's with the same options."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, write_demo_data
from benchmarks.spec import SpecError, lm_eval_prompt_args, parse_spec, spec_to_lm_eval_yaml
from enclave.runner import run_audit

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _spec(extra: str, mc_only: bool = False) -> str:
    text = demo_spec_toml().replace('output = "aggregate"', f'output = "aggregate"\n{extra}', 1)
    return "[[task]]".join(text.split("[[task]]")[:2]) if mc_only else text


def test_chat_keys_parse_and_are_refused_alone():
    spec = parse_spec(_spec('chat_template = true\nfewshot_as_multiturn = true\nsystem_instruction = "Be brief."').encode())
    assert (spec.chat_template, spec.fewshot_as_multiturn, spec.system_instruction) == (True, True, "Be brief.")
    assert lm_eval_prompt_args(spec) == ["--apply_chat_template", "--fewshot_as_multiturn", "--system_instruction",
                                         "Be brief."]
    plain = parse_spec(demo_spec_toml().encode())
    assert not plain.chat_template and lm_eval_prompt_args(plain) == []
    for extra, message in (('chat_template = "yes"', "`chat_template` must be true or false"),
                           ("fewshot_as_multiturn = true", "set chat_template = true"),
                           ('system_instruction = "x"', "set chat_template = true"),
                           ('chat_template = true\nsystem_instruction = ""', "1 to 8192 characters")):
        with pytest.raises(SpecError, match=message):
            parse_spec(_spec(extra).encode())


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    model = build_tiny_model(root / "model", seed=4)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = CHAT
    tok.save_pretrained(model)
    write_demo_data(root / "data")
    return model, root / "data"


def test_chat_prompts_equal_stock_lm_eval_with_the_same_options(chat_model: tuple[Path, Path], tmp_path: Path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, data = chat_model
    datasets = {"mc.jsonl": (data / "mc.jsonl").read_bytes()}
    chat = parse_spec(_spec('chat_template = true\nsystem_instruction = "Answer briefly."', mc_only=True).encode())
    plain = parse_spec(_spec("", mc_only=True).encode())
    ran = run_audit(model, chat, datasets, device="cpu")
    before = run_audit(model, plain, datasets, device="cpu")
    hashes = {r["prompt_hash"] for r in ran.records}
    assert hashes.isdisjoint({r["prompt_hash"] for r in before.records}), "the chat format changes every prompt"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in spec_to_lm_eval_yaml(chat, str(data)).items():
        (tasks / f"{name}.yaml").write_text(text)
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=str(model), batch_size=1, device="cpu"),
                                  tasks=chat.task_names, task_manager=TaskManager(include_defaults=False,
                                                                                  include_path=str(tasks)),
                                  random_seed=chat.seed, numpy_random_seed=chat.seed, torch_random_seed=chat.seed,
                                  fewshot_random_seed=chat.seed, apply_chat_template=True,
                                  system_instruction="Answer briefly.")
    for task in chat.task_names:
        for metric, value in ran.results[task].items():
            if isinstance(value, float):
                assert out["results"][task][metric] == pytest.approx(value), (task, metric)


def test_a_model_without_a_chat_template_is_refused_before_loading(tmp_path: Path):
    from verifier.errors import UnusableInput

    model = build_tiny_model(tmp_path / "model", seed=4)
    data = {p.name: p.read_bytes() for p in write_demo_data(tmp_path / "data").values()}
    with pytest.raises(UnusableInput, match="the model folder has no chat template"):
        run_audit(model, parse_spec(_spec("chat_template = true").encode()), data, device="cpu")
