"""A spec template that reads what a document does not have fails naming the task, the data file,
the line (and lm-eval's document index) and the template variable, never the document's content,
as the parties see it: through the job process (enclave.jobs)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from benchmarks.demo_assets import build_tiny_model, demo_spec_toml, mc_records
from benchmarks.spec import parse_spec
from enclave.jobs import JobFailed, prewarm, run_job

MC_TASK = "[[task]]".join(demo_spec_toml().split("[[task]]")[:2])
TEXT = 'doc_to_text = "Question: {{question}}\\nAnswer:"'
SECRET = "Which marker word is secret-7f3a?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    build_tiny_model(root / "model")
    rows = mc_records()
    rows[2] = {**rows[2], "question": SECRET, "choices": rows[2]["choices"][:2], "answer": 0}
    # a blank line before it: the line number counts it, the document index does not
    lines = [json.dumps(r) for r in rows[:2]] + ["", json.dumps(rows[2])] + [json.dumps(r) for r in rows[3:]]
    (root / "mc.jsonl").write_text("\n".join(lines) + "\n")
    prewarm()
    return root


def failure(demo: Path, doc_to_text: str) -> str:
    toml = MC_TASK.replace(TEXT, "doc_to_text = " + json.dumps(doc_to_text), 1)
    assert toml != MC_TASK
    spec = parse_spec(toml.encode())
    with pytest.raises(JobFailed) as exc:
        run_job(demo / "model", spec, {"mc.jsonl": (demo / "mc.jsonl").read_bytes()}, device="cpu", deadline_s=300,
                progress=lambda stage, fraction, message: None, cancel=threading.Event())
    return str(exc.value)


def test_a_column_no_document_has(demo: Path) -> None:
    message = failure(demo, "Question: {{questoin}}\nAnswer:")
    assert message == ("TemplateUndefined: task 'aa_demo_mc', data file 'mc.jsonl', line 1 (document 0): the "
                       "template reads template variable 'questoin', which is not a column of the document")


def test_an_element_one_document_lacks_names_its_line_not_its_content(demo: Path) -> None:
    """Document 2 has two choices; the template reads the fourth. Jinja's own message would quote
    the list; this one names where, never what."""
    message = failure(demo, "{{question}} {{choices[3]}}\nAnswer:")
    assert "task 'aa_demo_mc', data file 'mc.jsonl', line 4 (document 2)" in message
    assert "an attribute or element the document does not have" in message
    for row_text in (SECRET, "secret-7f3a", *mc_records()[2]["choices"][:2]):
        assert row_text not in message
