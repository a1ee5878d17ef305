"""`aaudit demo --out`: never deletes a folder the demo did not make, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from aaudit.cli import build_parser, main
from aaudit.demo import MARKER, prepare_out


def _refused(capsys: pytest.CaptureFixture[str], out: Path, why: str) -> None:
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aaudit demo: ") and why in err and len(err.strip().splitlines()) == 1, err


def test_a_file_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    _refused(capsys, out, "is a file, not a folder")
    assert out.read_text() == "mine"


def test_a_path_under_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("mine")
    _refused(capsys, tmp_path / "f" / "sub", "cannot prepare the folder")


def test_a_folder_it_did_not_make_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    _refused(capsys, tmp_path / "thesis", f"no {MARKER} in it")
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "precious"


def test_a_symlinked_marker_does_not_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").write_text("")
    (out / MARKER).symlink_to(tmp_path / "elsewhere")
    (out / "keep").write_text("precious")
    _refused(capsys, out, "was not made by `aaudit demo`")
    assert (out / "keep").read_text() == "precious"


def test_a_folder_an_earlier_run_made_is_replaced(tmp_path: Path) -> None:
    first = prepare_out(tmp_path / "demo-out")
    (first / "bundle.json").write_text("{}")
    second = prepare_out(tmp_path / "demo-out")
    assert second == first and sorted(p.name for p in second.iterdir()) == [MARKER]


def test_new_and_empty_folders_are_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "a" / "b", tmp_path / "empty"):
        assert (prepare_out(out) / MARKER).is_file()


def test_help_says_what_is_replaced() -> None:
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    assert MARKER in demo.format_help()
