"""The demo's own model and benchmarks, built offline in seconds.

`build_tiny_model` makes a seeded, randomly initialised two-layer Llama with a byte-level BPE
tokenizer trained on the demo texts: small enough for CPU tests, real enough that stock `lm_eval
--model hf --model_args pretrained=<dir>` loads it like any Hugging Face checkpoint. Its answers
are near chance; it exists to exercise the pipeline, not to score well.

The two benchmarks were written for this project (no third-party dataset is copied): simple facts
about units, arithmetic and geography as multiple choice, and short-answer questions judged by
exact match.
"""

from __future__ import annotations

import json
from pathlib import Path

# (question, choices, index of the correct choice)
_MC: list[tuple[str, list[str], int]] = [
    ("How many centimetres are in one metre?", ["10", "100", "1000", "60"], 1),
    ("How many grams are in one kilogram?", ["100", "60", "1000", "10"], 2),
    ("How many seconds are in one minute?", ["60", "100", "30", "24"], 0),
    ("How many minutes are in one hour?", ["24", "100", "12", "60"], 3),
    ("How many hours are in one day?", ["12", "24", "60", "7"], 1),
    ("How many days are in a leap year?", ["364", "365", "366", "360"], 2),
    ("How many millilitres are in one litre?", ["1000", "100", "10", "500"], 0),
    ("How many metres are in one kilometre?", ["100", "10", "10000", "1000"], 3),
    ("At sea level, water boils at how many degrees Celsius?", ["90", "100", "0", "212"], 1),
    ("At sea level, water freezes at how many degrees Celsius?", ["32", "-10", "0", "4"], 2),
    ("How many sides does a hexagon have?", ["6", "5", "8", "7"], 0),
    ("How many sides does a triangle have?", ["4", "2", "5", "3"], 3),
    ("How many degrees are in a right angle?", ["45", "90", "180", "360"], 1),
    ("How many degrees are in a full circle?", ["180", "90", "360", "270"], 2),
    ("What is 7 plus 5?", ["12", "11", "13", "75"], 0),
    ("What is 9 times 6?", ["45", "56", "15", "54"], 3),
    ("What is 100 minus 37?", ["73", "63", "67", "137"], 1),
    ("What is 48 divided by 8?", ["8", "7", "6", "5"], 2),
    ("What is the square of 12?", ["144", "124", "24", "121"], 0),
    ("What is 15 percent of 200?", ["15", "20", "35", "30"], 3),
    ("Which number is prime?", ["21", "17", "27", "15"], 1),
    ("What is half of 250?", ["150", "120", "125", "225"], 2),
    ("What is 3 cubed?", ["27", "9", "6", "81"], 0),
    ("Which fraction equals one quarter?", ["1/3", "2/4", "4/1", "2/8"], 3),
    ("What is the capital of France?", ["Lyon", "Paris", "Nice", "Lille"], 1),
    ("What is the capital of Japan?", ["Osaka", "Kyoto", "Tokyo", "Nagoya"], 2),
    ("What is the capital of Kenya?", ["Nairobi", "Mombasa", "Kisumu", "Nakuru"], 0),
    ("What is the capital of Canada?", ["Toronto", "Vancouver", "Montreal", "Ottawa"], 3),
    ("What is the capital of Australia?", ["Sydney", "Canberra", "Perth", "Melbourne"], 1),
    ("What is the capital of Brazil?", ["Rio de Janeiro", "Salvador", "Brasilia", "Recife"], 2),
    ("Which is the largest ocean?", ["Pacific", "Atlantic", "Indian", "Arctic"], 0),
    ("On which continent is Egypt?", ["Asia", "Europe", "Oceania", "Africa"], 3),
    ("Which river flows through Vienna?", ["Rhine", "Danube", "Seine", "Thames"], 1),
    ("Which country has the city of Lisbon?", ["Spain", "Italy", "Portugal", "Greece"], 2),
    ("Which mountain range lies between France and Spain?", ["Pyrenees", "Alps", "Andes", "Urals"], 0),
    ("Which desert covers much of northern Africa?", ["Gobi", "Kalahari", "Atacama", "Sahara"], 3),
    ("What is the chemical symbol for water?", ["O2", "H2O", "CO2", "HO"], 1),
    ("Which planet is closest to the Sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
    ("Which gas do plants take in for photosynthesis?", ["carbon dioxide", "oxygen", "helium", "neon"], 0),
    ("How many legs does a spider have?", ["six", "ten", "four", "eight"], 3),
    ("What is the freezing point of water in Fahrenheit?", ["0", "32", "100", "212"], 1),
    ("How many bytes are in a kilobyte, in the decimal sense?", ["1024", "100", "1000", "8"], 2),
    ("How many bits are in one byte?", ["8", "16", "4", "10"], 0),
    ("Which unit measures electric current?", ["volt", "watt", "ohm", "ampere"], 3),
    ("Which unit measures force?", ["joule", "newton", "pascal", "kelvin"], 1),
    ("What is the SI unit of temperature?", ["celsius", "fahrenheit", "kelvin", "rankine"], 2),
    ("How many weeks are in a year, rounded down?", ["52", "50", "48", "56"], 0),
    ("How many months have 31 days?", ["five", "six", "eight", "seven"], 3),
]

# (question, short answer judged by exact match)
_GEN: list[tuple[str, str]] = [
    ("What is 2 plus 2?", "4"),
    ("What is 10 times 10?", "100"),
    ("What is 81 divided by 9?", "9"),
    ("What is 50 minus 8?", "42"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Peru?", "Lima"),
    ("What colour do you get by mixing blue and yellow?", "green"),
    ("Which planet is known as the red planet?", "Mars"),
    ("How many days are in a week?", "7"),
    ("How many continents are there?", "7"),
    ("What is the opposite of hot?", "cold"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("How many sides does a square have?", "4"),
    ("What is the first letter of the English alphabet?", "A"),
    ("What is 3 times 7?", "21"),
]

# Extra text for the tokenizer so that common words outside the questions merge too.
_TOKENIZER_EXTRA = [
    "Question: Answer: The answer is one two three four five six seven eight nine ten.",
    "A model answers questions about units, numbers, places and science.",
]

SPEC_NAME = "demo-audit"


def mc_records() -> list[dict]:
    return [{"question": q, "choices": c, "answer": a} for q, c, a in _MC]


def gen_records() -> list[dict]:
    return [{"question": q, "answer": a} for q, a in _GEN]


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def write_demo_data(out: Path) -> dict[str, Path]:
    """Write `mc.jsonl` and `gen.jsonl` into `out`; return their paths by file name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"mc.jsonl": out / "mc.jsonl", "gen.jsonl": out / "gen.jsonl"}
    paths["mc.jsonl"].write_bytes(_jsonl(mc_records()))
    paths["gen.jsonl"].write_bytes(_jsonl(gen_records()))
    return paths


def demo_spec_toml(seed: int = 1234, samples_recipient: str | None = None, toxicity_judge: str | None = None) -> str:
    """The demo's audit spec: accuracy on the multiple-choice set, exact match on the short answers.
    With `samples_recipient` (the auditor's samples key) the per-sample records go to the auditor.
    With `toxicity_judge` (a [[judge]] name: a classifier with the label "toxic", e.g.
    `benchmarks.tiny_judges.build_tiny_classifier`) a third task has the judge score the answers."""
    output = (f'output = "aggregate+samples"\nsamples_recipient = "{samples_recipient}"' if samples_recipient
              else 'output = "aggregate"')
    return _DEMO_SPEC.format(name=SPEC_NAME, seed=seed, output=output) + (
        _JUDGED_TASK.format(judge=toxicity_judge) if toxicity_judge else "")


_DEMO_SPEC = '''name = "{name}"
version = 1
seed = {seed}
{output}

[[task]]
name = "aa_demo_mc"
dataset = "mc.jsonl"
split = "test"

[task.config]
output_type = "multiple_choice"
doc_to_text = "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice = "{{{{choices}}}}"
doc_to_target = "answer"
metric_list = [
  {{ metric = "acc", aggregation = "mean", higher_is_better = true }},
  {{ metric = "acc_norm", aggregation = "mean", higher_is_better = true }},
]

[[task]]
name = "aa_demo_gen"
dataset = "gen.jsonl"
split = "test"

[task.config]
output_type = "generate_until"
doc_to_text = "Question: {{{{question}}}}\\nAnswer:"
doc_to_target = "{{{{answer}}}}"
generation_kwargs = {{ until = ["\\n", "Question:"], max_gen_toks = 16, do_sample = false }}
filter_list = [
  {{ name = "strip", filter = [{{ function = "remove_whitespace" }}, {{ function = "take_first" }}] }},
]
metric_list = [
  {{ metric = "exact_match", aggregation = "mean", higher_is_better = true, ignore_case = true, ignore_punctuation = true }},
]
'''
JUDGED_TASK = "aa_demo_tox"
_JUDGED_TASK = '''
[[judge]]
name = "{judge}"
kind = "classifier"

[[task]]
name = "aa_demo_tox"
dataset = "gen.jsonl"
split = "test"

[task.config]
output_type = "generate_until"
doc_to_text = "Question: {{{{question}}}}\\nAnswer:"
doc_to_target = "{{{{answer}}}}"
generation_kwargs = {{ until = ["\\n", "Question:"], max_gen_toks = 16, do_sample = false }}
metric_list = [{{ metric = "judge_toxicity", judge = "{judge}", label = "toxic", threshold = 0.5 }}]
'''


def _training_texts() -> list[str]:
    texts = [f"Question: {q}\nAnswer: {c[a]}" for q, c, a in _MC]
    texts += [f"Question: {q}\nAnswer: {' '.join(c)}" for q, c, _ in _MC]
    texts += [f"Question: {q}\nAnswer: {a}" for q, a in _GEN]
    return texts + _TOKENIZER_EXTRA


BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def build_tiny_model(out: Path, seed: int = 0, *, vocab_size: int = 512) -> Path:
    """Write a tiny seeded Llama (safetensors, config, tokenizer files) into `out`; return `out`.

    Deterministic: the same seed and library versions give the same bytes (the tokenizer's BPE
    training has no randomness, the weights come from a seeded CPU generator).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG as it was
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return out
