"""Tiny seeded rows for every built-in preset, holding exactly the columns `PresetInfo` documents.

Written for the tests (no third-party dataset is copied): each row has the shape of the Hugging Face
dataset the preset's lm-eval task reads, with made-up text. Rows vary in the columns that select
subsets (gender, bias_type, context_condition), so every filtered preset keeps some documents.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from benchmarks.presets import preset_infos

Rows = list[dict[str, Any]]
_UNKNOWN = ["Unknown", "Cannot answer", "Can't be determined", "Not known"]
_CROWS_TYPES = ["race-color", "socioeconomic", "gender", "age", "religion", "disability", "sexual-orientation",
                "nationality", "physical-appearance", "autre"]


def _toxigen(rng: random.Random, n: int) -> Rows:
    return [{"text": f"statement number {i} about a group", "toxicity_ai": rng.uniform(1, 5),
             "toxicity_human": rng.uniform(1, 5)} for i in range(n)]


def _bbq(rng: random.Random, n: int) -> Rows:
    rows = []
    for i in range(n):
        old_first = i % 2 == 0
        groups = [["grandfather", "old"], ["grandson", "nonOld"]]
        names = ["the grandfather", "the grandson"]
        if not old_first:
            groups.reverse()
            names.reverse()
        unknown = _UNKNOWN[i % len(_UNKNOWN)]
        ambig = i % 3 != 0
        rows.append({
            "context": f"A grandfather and his grandson met at stop {i}." + ("" if ambig else " The grandson forgot."),
            "question": "Who forgot things?", "ans0": names[0], "ans1": names[1], "ans2": unknown,
            "label": 2 if ambig else (1 if old_first else 0),
            "context_condition": "ambig" if ambig else "disambig", "category": "Age",
            "question_polarity": "neg" if i % 2 else "nonneg",
            "answer_info": {"ans0": groups[0], "ans1": groups[1], "ans2": [unknown, "unknown"]},
            "additional_metadata": {"stereotyped_groups": ["old"], "subcategory": "None", "version": "a",
                                    "source": "made up"},
        })
    return rows


def _crows(rng: random.Random, n: int) -> Rows:
    return [{"sent_more": f"People of group {i} are bad at sums.", "sent_less": f"People of group {i} are good at sums.",
             "bias_type": _CROWS_TYPES[i % len(_CROWS_TYPES)]} for i in range(n)]


def _targets(i: int, mc2: bool) -> dict[str, Any]:
    choices = [f"True answer {i}.", f"Wrong answer {i}.", f"Other answer {i}."]
    return {"choices": choices, "labels": [1, 1, 0] if mc2 else [1, 0, 0]}


def _winogender(rng: random.Random, n: int) -> Rows:
    genders = [("male", "he"), ("female", "she"), ("neutral", "they")]
    return [{"sentence": f"The nurse told the patient that {genders[i % 3][1]} would leave at {i}.",
             "pronoun": genders[i % 3][1], "occupation": "nurse", "participant": "patient", "label": i % 2,
             "gender": genders[i % 3][0]} for i in range(n)]


def _discrim(rng: random.Random, n: int) -> Rows:
    """At least 10 questions x 15 demographic profiles: lm-eval's mixed-effects regression (random
    effects for 8 coefficients per question) is singular on fewer."""
    races = ["white", "black", "asian", "hispanic", "native american"]
    genders = ["male", "female", "non-binary"]
    return [{"filled_template": f"Should applicant {i} get loan {i // 15}?", "decision_question_id": i // 15,
             "age": 20 + 10 * ((i % 15 + i // 15) % 6), "gender": genders[i % 3], "race": races[i % 5]}
            for i in range(max(n, 150))]


def _mc(rng: random.Random, n: int) -> Rows:
    return [{"question": f" Which option is number {i}? ", "choices": ["one", "two", "three", "four"],
             "answer": i % 4} for i in range(n)]


_MAKERS: dict[str, Callable[[random.Random, int], Rows]] = {
    "toxigen": _toxigen, "bbq": _bbq, "crows_pairs": _crows, "winogender": _winogender,
    "discrim_eval": _discrim, "wmdp": _mc, "mmlu": _mc,
    "truthfulqa_mc1": lambda rng, n: [{"question": f"Question {i}?", "mc1_targets": _targets(i, False)}
                                      for i in range(n)],
    "truthfulqa_mc2": lambda rng, n: [{"question": f"Question {i}?", "mc2_targets": _targets(i, True)}
                                      for i in range(n)],
    "ethics_cm": lambda rng, n: [{"input": f"I took item {i} from a shop.", "label": i % 2} for i in range(n)],
    "ethics_deontology": lambda rng, n: [{"scenario": f"Can you fetch box {i}?", "excuse": "No, I am busy. ",
                                          "label": i % 2} for i in range(n)],
    "ethics_justice": lambda rng, n: [{"scenario": f"I deserve prize {i} because I won.", "label": i % 2}
                                      for i in range(n)],
    "ethics_utilitarianism": lambda rng, n: [{"activity": f"I found coin {i}.", "baseline": f"I lost coin {i}."}
                                             for i in range(n)],
    "ethics_virtue": lambda rng, n: [{"scenario": f"She shared meal {i}.", "trait": "generous", "label": i % 2}
                                     for i in range(n)],
    "simple_cooccurrence_bias": lambda rng, n: [{"sentence": f"The engineer number {i} was a"} for i in range(n)],
}


def preset_rows(name: str, n: int = 6, seed: int = 0) -> Rows:
    """`n` rows for preset `name`, with exactly its documented columns."""
    maker = next(m for prefix, m in sorted(_MAKERS.items(), key=lambda kv: -len(kv[0])) if name.startswith(prefix))
    info = next(i for i in preset_infos() if i.name == name)
    (columns,) = info.columns.values()
    rows = maker(random.Random(f"{seed}:{name}"), n)
    return [{c: row[c] for c in columns} for row in rows]


def jsonl(rows: Rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
