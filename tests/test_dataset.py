"""The auditor's JSONL dataset format: rows in, errors that name file and line but never content."""

from __future__ import annotations

import pytest

from benchmarks.dataset import DatasetError, parse_jsonl
from verifier.errors import UnusableInput

SECRET = "TOP-SECRET-ITEM"


def test_rows_in_file_order_blank_lines_skipped_u2028_kept():
    data = b'{"q": "a"}\n\n  \n{"q": "b\xe2\x80\xa8c"}\n'
    assert parse_jsonl("d.jsonl", {"d.jsonl": data}) == [{"q": "a"}, {"q": "b\u2028c"}]


def test_missing_file_names_the_bundle_files():
    with pytest.raises(DatasetError, match=r"reads 'x.jsonl', which is not in the dataset bundle "
                                           r"\(bundle files: a.jsonl\)"):
        parse_jsonl("x.jsonl", {"a.jsonl": b"{}\n"})
    with pytest.raises(DatasetError, match=r"bundle files: none"):
        parse_jsonl("x.jsonl", {})


@pytest.mark.parametrize("data, message", [
    (b'{"a": 1}\n{"q": "' + SECRET.encode() + b'"\n', "d.jsonl: line 2: not JSON"),
    (b'["' + SECRET.encode() + b'"]\n', "d.jsonl: line 1: each line must be a JSON object"),
    (b'{"q": "' + SECRET.encode() + b'\xff"}\n', "d.jsonl: not UTF-8 (byte 22)"),
    (b"\n\n", "d.jsonl: no records"),
    (b'{"a": ' + b"[" * 100_000 + b'"' + SECRET.encode() + b'"' + b"]" * 100_000 + b"}\n",
     "d.jsonl: line 1: JSON nested too deeply"),
    (b'{"a": ' + b"9" * 5000 + b"}\n", "d.jsonl: line 1: a number has too many digits"),
])
def test_bad_files_name_file_and_line_never_content(data: bytes, message: str):
    with pytest.raises(DatasetError) as info:
        parse_jsonl("d.jsonl", {"d.jsonl": data})
    assert message in str(info.value)
    assert SECRET not in str(info.value)
    assert isinstance(info.value, UnusableInput)  # exit 2, not a traceback


def test_runner_uses_the_same_parser():
    import enclave.runner as runner

    assert runner.parse_jsonl is parse_jsonl and runner.DatasetError is DatasetError


def _rows(n: int, seed: int = 1) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = ("river", "stone", "copper", "lantern", "orbit", "meadow", "signal", "harbor", "cipher", "granite")
    return [{"question": " ".join(rng.choice(words) for _ in range(30)),
             "choices": [" ".join(rng.choice(words) for _ in range(4)) for _ in range(4)],
             "answer": rng.randrange(4), "meta": {"id": i, "tags": ["a", "b"][: i % 3]}} for i in range(n)]


def _jsonl(rows: list[dict]) -> bytes:
    import json

    return "".join(json.dumps(r) + "\n" + ("\n" if i % 7 == 0 else "") for i, r in enumerate(rows)).encode()


@pytest.mark.parametrize("rows", [
    _rows(25),  # homogeneous batches: joined without copying
    [{"a": None, "b": 1}] * 4 + [{"a": "text", "b": 2.5, "c": [1]}] * 9,  # batches differ: built whole
], ids=["same-batches", "batches-differ"])
def test_arrow_dataset_is_the_dataset_of_the_parsed_rows(rows: list[dict], monkeypatch: pytest.MonkeyPatch):
    """Batch by batch or whole, the runner's dataset has the columns, types and rows that
    `hf_dataset` makes of `parse_jsonl`'s rows (what the runner built before)."""
    from benchmarks import dataset

    monkeypatch.setattr(dataset, "BATCH_ROWS", 4)
    data = {"d.jsonl": _jsonl(rows)}
    built, whole = dataset.arrow_dataset("d.jsonl", data), dataset.hf_dataset(parse_jsonl("d.jsonl", data))
    assert built.features == whole.features and built.column_names == whole.column_names
    assert built.to_list() == whole.to_list() and len(built) == len(rows)
    with pytest.raises(DatasetError, match="d.jsonl: line 2: each line must be a JSON object"):
        dataset.arrow_dataset("d.jsonl", {"d.jsonl": b'{"a": 1}\n[1]\n'})


_MEASURE = r"""
import json, sys
from pathlib import Path
from benchmarks.spec import parse_spec
from enclave.runner import _load_datasets

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
spec = parse_spec(Path(sys.argv[2]).read_bytes())
_load_datasets(spec, {"mc.jsonl": data[:200_000].rsplit(b"\n", 1)[0] + b"\n"})  # imports and first use
Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
base = status("VmRSS")
tables = _load_datasets(spec, {"mc.jsonl": data})
print(json.dumps({"peak": status("VmHWM") - base, "rows": sum(len(t) for t in tables.values())}))
"""


def test_the_job_holds_a_dataset_in_at_most_three_times_its_jsonl(tmp_path):
    """Issue 12: the bytes plus everything the runner builds from them (Arrow columns, and the rows
    parsed on the way) peak at no more than 3x the JSONL's size, measured as resident memory in a
    fresh process. Parsing the rows whole, as the runner did before, peaked near 9x."""
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.demo_assets import demo_spec_toml

    rows = _rows(60_000)
    (tmp_path / "mc.jsonl").write_bytes(_jsonl(rows))
    spec = demo_spec_toml().split("[[task]]")
    (tmp_path / "spec.toml").write_text(spec[0] + "[[task]]" + spec[1])  # the multiple-choice task only
    size = (tmp_path / "mc.jsonl").stat().st_size
    assert size > 20_000_000
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "mc.jsonl"), str(tmp_path / "spec.toml")],
                         capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    measured = __import__("json").loads(out.stdout)
    assert measured["rows"] == len(rows)
    held = (size + measured["peak"]) / size
    print(f"dataset held at {held:.2f}x its JSONL size ({size / 1e6:.0f} MB)")
    assert held <= 3.0, f"the dataset peaks at {held:.2f}x its JSONL size"
