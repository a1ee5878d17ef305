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
