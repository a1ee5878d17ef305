"""The README's commands are the product's commands: each `aaudit` line in its code blocks parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from aaudit.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("aaudit "):
                commands.append(line)
    return commands


def test_the_readme_shows_the_session_walkthrough() -> None:
    verbs = {" ".join(shlex.split(c)[1:3]) for c in _commands()}
    for needed in ("auditor create-session", "provider join", "provider upload", "auditor upload",
                   "provider approve", "auditor approve", "auditor run"):
        assert needed in verbs, needed


@pytest.mark.parametrize("command", _commands())
def test_readme_command_parses(command: str) -> None:
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"README command does not parse (exit {exc.code}): {command}")
