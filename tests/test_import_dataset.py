"""`aaudit auditor import-dataset`: a locally saved Hugging Face dataset becomes the bundle's JSONL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.feather
import pytest
from builtin_rows import preset_rows
from datasets import Dataset, DatasetDict

from aaudit.cli import main
from benchmarks.dataset import parse_jsonl
from verifier.models import canonical_json

ROOT = Path(__file__).resolve().parents[1]
BBQ = preset_rows("bbq", 5)  # nested columns (answer_info, additional_metadata) survive the trip
EXTRA = [{**r, "example_id": i, "note": f"not read by the preset {i}"} for i, r in enumerate(BBQ)]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _import(*args: str) -> int:
    return main(["auditor", "import-dataset", *args])


def _check_output(out: Path, rows: list[dict]) -> None:
    data = out.read_bytes()
    assert data == b"".join(canonical_json(r) + b"\n" for r in rows)
    assert parse_jsonl("x", {"x": data}) == rows
    assert out.stat().st_mode & 0o777 == 0o600


def test_save_to_disk_folder_offline_writes_only_the_output(tmp_path: Path):
    """In a fresh process with an empty HF cache: the save_to_disk DatasetDict's test split comes out
    with only the preset's columns, and nothing but --out is written (no cache, no lock files)."""
    src = tmp_path / "bbq"
    DatasetDict({"test": Dataset.from_list(EXTRA), "train": Dataset.from_list(EXTRA[:2])}).save_to_disk(src)
    home = tmp_path / "home"
    home.mkdir()
    before = _tree(src)
    out = tmp_path / "out" / "bbq.jsonl"
    out.parent.mkdir()
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf"), "XDG_CACHE_HOME": str(home / "cache"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "aaudit.cli", "auditor", "import-dataset", str(src), "--preset", "bbq",
                           "--split", "test", "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "5 rows written" in proc.stderr
    _check_output(out, BBQ)
    assert _tree(src) == before and _tree(home) == [] and _tree(out.parent) == ["bbq.jsonl"]


def test_parquet_and_arrow_files(tmp_path: Path):
    Dataset.from_list(EXTRA).to_parquet(tmp_path / "test.parquet")
    assert _import(str(tmp_path / "test.parquet"), "--preset", "bbq", "--out", str(tmp_path / "a.jsonl")) == 0
    _check_output(tmp_path / "a.jsonl", BBQ)

    Dataset.from_list(EXTRA).save_to_disk(tmp_path / "single")  # its .arrow file is Arrow's stream form
    (arrow,) = (tmp_path / "single").glob("*.arrow")
    assert _import(str(arrow), "--preset", "bbq", "--out", str(tmp_path / "b.jsonl")) == 0
    _check_output(tmp_path / "b.jsonl", BBQ)
    assert _import(str(tmp_path / "single"), "--preset", "bbq", "--out", str(tmp_path / "c.jsonl")) == 0
    _check_output(tmp_path / "c.jsonl", BBQ)

    shards = tmp_path / "shards"  # Arrow's file form (Feather v2), two shards read in name order
    shards.mkdir()
    rows = preset_rows("toxigen", 4)
    pyarrow.feather.write_feather(pa.Table.from_pylist(rows[:2]), shards / "part-0.arrow")
    pyarrow.feather.write_feather(pa.Table.from_pylist(rows[2:]), shards / "part-1.arrow")
    assert _import(str(shards), "--preset", "toxigen", "--all-columns", "--out", str(tmp_path / "d.jsonl")) == 0
    _check_output(tmp_path / "d.jsonl", rows)


def test_all_columns_and_own_columns(tmp_path: Path):
    Dataset.from_list(EXTRA).to_parquet(tmp_path / "x.parquet")
    assert _import(str(tmp_path / "x.parquet"), "--preset", "bbq", "--all-columns", "--out", str(tmp_path / "a.jsonl")) == 0
    _check_output(tmp_path / "a.jsonl", EXTRA)
    assert _import(str(tmp_path / "x.parquet"), "--columns", "question,note", "--out", str(tmp_path / "b.jsonl")) == 0
    _check_output(tmp_path / "b.jsonl", [{"question": r["question"], "note": r["note"]} for r in EXTRA])


def test_missing_columns_and_bad_input_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rows = [{k: v for k, v in r.items() if k not in ("label", "category")} for r in BBQ]
    Dataset.from_list(rows).to_parquet(tmp_path / "x.parquet")
    out = tmp_path / "bbq.jsonl"
    assert _import(str(tmp_path / "x.parquet"), "--preset", "bbq", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) label, category, which preset 'bbq' reads" in err and not out.exists()

    secret = "SECRET-VALUE"
    Dataset.from_list([{"text": secret, "toxicity_ai": 1.0, "toxicity_human": None}]).to_parquet(tmp_path / "n.parquet")
    assert _import(str(tmp_path / "n.parquet"), "--preset", "toxigen", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "row 0: column 'toxicity_human' is null" in err and secret not in err and not out.exists()

    pa.parquet.write_table(pa.table({"text": [secret], "toxicity_ai": [b"\x00"], "toxicity_human": [1.0]}),
                           tmp_path / "b.parquet")
    assert _import(str(tmp_path / "b.parquet"), "--preset", "toxigen", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "column 'toxicity_ai' holds a bytes value" in err and secret not in err

    DatasetDict({"test": Dataset.from_list(BBQ), "train": Dataset.from_list(BBQ)}).save_to_disk(tmp_path / "dd")
    assert _import(str(tmp_path / "dd"), "--preset", "bbq", "--out", str(out)) == 2
    assert "splits test, train: choose one with --split" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert _import(str(tmp_path / "junk.parquet"), "--preset", "bbq", "--out", str(out)) == 2
    assert "not a readable parquet file" in capsys.readouterr().err
    assert _import(str(tmp_path / "x.parquet"), "--preset", "nope", "--out", str(out)) == 2
    assert "preset 'nope' is unknown" in capsys.readouterr().err
    out.write_text("keep me")
    assert _import(str(tmp_path / "x.parquet"), "--columns", "question", "--out", str(out)) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me"


def test_preset_command_lists_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["auditor", "preset", "list"]) == 0
    listing = capsys.readouterr().out
    assert "winogender_female\n" in listing and "winogender_female.jsonl: sentence, pronoun, occupation, " \
        "participant, label, gender" in listing
    out = tmp_path / "spec.toml"
    assert main(["auditor", "preset", "toxigen", "crows_pairs_english", "--out", str(out)]) == 0
    assert "crows_pairs_english reads data/crows_pairs_english.jsonl with columns sent_more, sent_less" in \
        capsys.readouterr().err
    assert 'doc_to_choice = { lm_eval_function = "crows_pairs/utils.py:doc_to_choice" }' in out.read_text()
    assert main(["auditor", "preset", "toxigen", "nope"]) == 2
    assert "preset 'nope' is unknown (`aaudit auditor preset list`" in capsys.readouterr().err


def test_preset_list_into_a_closed_pipe_is_no_error():
    """`aaudit auditor preset list | head -3`: the reader goes away early; that is not a failure."""
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "auditor", "preset", "list"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""


def test_paper_presets_are_listed_written_and_sampled(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The paper's three audits sit in the same list and command, with the judges they need; the MMLU
    sample is drawn by import-dataset (seeded, original order) so the data digest pins it."""
    from benchmarks.spec import parse_spec

    assert main(["auditor", "preset", "list"]) == 0
    listing = capsys.readouterr().out
    assert "paper_toxicchat\n" in listing and "toxicchat.jsonl: user_input\n    judge toxicity-classifier " \
        "(classifier)" in listing
    assert listing.index("paper_mmlu") < listing.index("toxigen")
    out = tmp_path / "paper.toml"
    assert main(["auditor", "preset", "paper_mmlu", "paper_xsum", "paper_toxicchat", "--toxic-label", "TOXIC",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "paper_mmlu reads data/mmlu.dev.jsonl with columns question, choices, answer" in err
    assert "paper_xsum scores with judge sentence-encoder (encoder)" in err
    spec = parse_spec(out.read_bytes())
    assert [j.name for j in spec.judges] == ["sentence-encoder", "toxicity-classifier"]
    assert spec.tasks[-1].config["metric_list"][0]["label"] == "TOXIC"
    assert main(["auditor", "preset", "paper_xsum", "toxigen"]) == 2
    assert "in separate specs" in capsys.readouterr().err
    assert main(["auditor", "preset", "toxigen", "--samples-recipient", "x"]) == 2
    assert "paper's presets only" in capsys.readouterr().err

    population = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(40)]
    Dataset.from_list(population).to_parquet(tmp_path / "mmlu.parquet")
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert _import(str(tmp_path / "mmlu.parquet"), "--preset", "paper_mmlu", "--sample", "10", "--seed", seed,
                       "--out", str(tmp_path / f"{name}.jsonl")) == 0
    a, b, c = (parse_jsonl("x", {"x": (tmp_path / f"{n}.jsonl").read_bytes()}) for n in "abc")
    assert a == b != c and len(a) == 10
    indices = [int(r["question"][1:]) for r in a]
    assert indices == sorted(set(indices))
    assert _import(str(tmp_path / "mmlu.parquet"), "--preset", "paper_mmlu", "--sample", "41",
                   "--out", str(tmp_path / "d.jsonl")) == 2
    assert "cannot sample 41 rows from 40" in capsys.readouterr().err
