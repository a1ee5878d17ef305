"""Packaging promises: a light verifier, fresh generated protos, working console scripts."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval", "datasets")


def test_verifier_imports_no_ml_stack() -> None:
    code = ("import sys, verifier.cli, verifier.bundle, verifier.evidence, verifier.policy, verifier.merkle;"
            f"heavy=[m for m in {HEAVY!r} if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"verifier imported {proc.stdout.strip()}"


def test_generated_protos_are_fresh(tmp_path: Path) -> None:
    from protos.generate import generate

    written = generate(tmp_path)
    assert written, "no proto files were generated"
    stale = [p.name for p in written if not filecmp.cmp(p, REPO / "protos" / p.name, shallow=False)]
    assert not stale, f"committed generated modules are stale, run `make protos`: {stale}"


def test_console_scripts_have_help() -> None:
    for module, sub in (("aaudit.cli", []), ("verifier.cli", []), ("verifier.cli", ["bundle"]),
                        ("verifier.cli", ["evidence"]), ("aaudit.cli", ["enclave", "serve"]),
                        ("gateway.engine", [])):
        proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


def _leaf_commands(parser, prefix=()):  # noqa: ANN001, ANN202
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_commands(child, (*prefix, name))


def test_every_command_has_help(capsys) -> None:  # noqa: ANN001
    import argparse

    import pytest

    from aaudit.cli import build_parser as aaudit_parser
    from verifier.cli import build_parser as verify_parser

    seen = 0
    for build in (aaudit_parser, verify_parser):
        for command in _leaf_commands(build()):
            with pytest.raises(SystemExit) as exc:
                build().parse_args([*command, "--help"])
            assert exc.value.code == 0, command
            out = capsys.readouterr().out
            assert "usage:" in out and len(out.splitlines()) > 3, command
            parser = build()
            for name in command:  # the leaf's own parser: its description is what --help says it does
                parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
            assert len((parser.description or "").strip()) > 20, f"no description: {command}"
            assert parser.description.split()[0] in out, command
            bare = [a.option_strings or [a.dest] for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
            assert not bare, f"{' '.join(command)}: no help text for {bare}"
            seen += 1
    assert seen >= 20, f"only {seen} commands found"
