"""`aaudit-verify` on hostile input: exit 2 (unusable) or 1 (failed) with one line, never a traceback.

Every JSON input goes through one strict loader (`verifier.inputs.load_json`): duplicate keys,
NaN/Infinity, numbers beyond the range of a float and deep nesting are refused, also inside the
signed statement, so a signed `Infinity` can never pass a `min` threshold. A property test walks the
command's own argparse parser and runs every subcommand on random and deeply nested inputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import make_bundle, publish
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from verifier.bundle import metric_value
from verifier.cli import build_parser, main
from verifier.errors import ParseError
from verifier.inputs import MAX_JSON_DEPTH, load_json
from verifier.models import Verdict
from verifier.platforms import tdx

REPO = Path(__file__).resolve().parents[1]
SIM_POLICY = "allow_simulated = true\n"
THRESHOLD_POLICY = SIM_POLICY + '[[threshold]]\ntask = "mmlu"\nmetric = "acc"\nmin = 0.1\n'
DEEP = 100_000


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Run in process; return the exit status and what it printed. Anything but an exit fails the test."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors: exit 2 with a usage line
        rc = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, *needles: str) -> str:
    rc, text = _run(capsys, [*argv, "--json"])
    result = json.loads(text)
    message = result.get("error") or result.get("summary")
    assert rc == code and "\n" not in message, (rc, message)
    for needle in needles:
        assert needle in message, message
    return message


# ------------------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("text, needle", [
    ("[" * DEEP, "nested too deeply"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH}"),
    ('{"a": 1, "b": {"c": 2, "c": 3}}', "duplicate key 'c'"),
    ("[NaN]", "NaN"), ("[Infinity]", "Infinity"), ('{"x": -Infinity}', "-Infinity"),
    ("[1e400]", "beyond the range of a float"), ("[-1e999]", "beyond the range of a float"),
    ("[" + "9" * 400 + "]", "beyond the range of a float"), ("[" + "9" * 5000 + "]", "beyond the range"),
    ("[1,]", "not strict JSON"), (b"\xff\xfe", "not strict JSON"),
])
def test_strict_loader_refuses(text: str | bytes, needle: str) -> None:
    with pytest.raises(ParseError, match="^x: .*" + needle.replace("[", r"\[")):
        load_json(text, "x")


def test_strict_loader_keeps_ordinary_json() -> None:
    assert load_json('{"a": [1, 2.5, -0.0, 1e308, "\\u00e9", null, true]}', "x") == \
        {"a": [1, 2.5, -0.0, 1e308, "é", None, True]}


def test_metric_value_refuses_non_finite_numbers() -> None:
    """For library callers that hand results in directly: no infinite metric passes a threshold."""
    for value in (float("inf"), float("nan"), 10**400):
        assert metric_value({"t": {"acc": value}}, "t", "acc") == (None, "t/acc is not a finite number")


# ---------------------------------------------------------------------- named cases, through the CLI


def _bundle_file(tmp_path: Path, bundle: dict[str, Any]) -> str:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    return str(path)


def _policy_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p.replace(b'"acc,none":0.5', b'"acc,none":Infinity'), "Infinity is not a JSON number"),
    (lambda p: p.replace(b'"acc,none":0.5', b'"acc,none":NaN'), "NaN is not a JSON number"),
    (lambda p: p.replace(b'"acc,none":0.5', b'"acc,none":1' + b"0" * 400), "beyond the range of a float"),
    (lambda p: p.replace(b'"acc,none":0.5', b'"acc,none":0.05,"acc,none":0.5'), "duplicate key 'acc,none'"),
    (lambda p: p.replace(b'"acc,none":0.5', b'"acc,none":' + b"[" * 70 + b"0.5" + b"]" * 70), "deeper than"),
])
def test_signed_statement_with_non_strict_json_fails(edit, needle: str, tmp_path: Path,  # noqa: ANN001
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The enclave key signed it, yet the statement is refused: a signed Infinity meets no `min`."""
    made = make_bundle(edit_payload=edit)
    argv = ["bundle", _bundle_file(tmp_path, made.bundle), "--policy", _policy_file(tmp_path, THRESHOLD_POLICY),
            "--allow-unpinned"]
    _one_line_error(capsys, argv, 1, "1 step(s) failed")
    rc, text = _run(capsys, [*argv, "--json"])
    steps = {s["step"]: (s["result"], s["reason"]) for s in json.loads(text)["steps"]}
    assert steps["report signature"][0] == "ok" and steps["statement"][0] == "failed"
    assert steps["statement"][1].startswith("statement: payload: ") and needle in steps["statement"][1]
    assert "threshold mmlu/acc" not in steps  # never compared


@pytest.mark.parametrize("mutate, needle", [
    (lambda text: text.replace('"nonce":', '"nonce": "00", "nonce":', 1), "duplicate key 'nonce'"),
    (lambda text: text.replace('"mediaType":', '"x": Infinity, "mediaType":', 1), "Infinity is not a JSON number"),
    (lambda text: text.replace('"mediaType":', '"x": NaN, "mediaType":', 1), "NaN is not a JSON number"),
    (lambda text: text.replace('"mediaType":', '"x": 1' + "0" * 400 + ', "mediaType":', 1), "beyond the range"),
    (lambda text: "[" * DEEP + "]" * DEEP, "nested too deeply"),
    (lambda text: text.replace('"mediaType":', '"x": ' + "[" * DEEP + "]" * DEEP + ', "mediaType":', 1),
     "nested too deeply"),
])
def test_bundle_file_with_non_strict_json_is_unusable(mutate, needle: str, tmp_path: Path,  # noqa: ANN001
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(mutate(json.dumps(make_bundle().bundle, separators=(", ", ": "))))
    _one_line_error(capsys, ["bundle", str(path), "--policy", _policy_file(tmp_path, SIM_POLICY)], 2, needle)


@pytest.mark.parametrize("text, needle", [
    ("a = " + "[" * DEEP, "nested too deeply"),
    ("a = " + "{b = " * 5000, "nested too deeply"),
    ("[" * DEEP, "not valid TOML"),
    (SIM_POLICY + 'max_age = "99999999999999999999d"\n', "max_age must be at most 36500d"),
    (SIM_POLICY + 'max_age = "' + "9" * 5000 + 's"\n', "max_age must be at most"),
    (SIM_POLICY + "a = " + "9" * 5000 + "\n", "not valid TOML"),
    (SIM_POLICY + '[[threshold]]\ntask = "t"\nmetric = "m"\nmin = ' + "9" * 400 + "\n", "finite number"),
    (SIM_POLICY + '[[threshold]]\ntask = "t"\nmetric = "m"\nmax = inf\n', "finite number"),
    (SIM_POLICY + '[[threshold]]\ntask = "t"\nmetric = "m"\nmax = nan\n', "finite number"),
])
def test_hostile_policies_are_unusable(text: str, needle: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle_file(tmp_path, make_bundle().bundle)
    _one_line_error(capsys, ["bundle", bundle, "--policy", _policy_file(tmp_path, text)], 2, needle)
    _one_line_error(capsys, ["evidence", "--platform", "sim", "--evidence", bundle, "--policy",
                             _policy_file(tmp_path, text)], 2, needle)


@pytest.mark.parametrize("content", ["[" * DEEP, '{"payload": "", "payload": ""}', '{"payload": NaN}'])
def test_hostile_sim_evidence_is_unusable(content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ev.json").write_text(content)
    _one_line_error(capsys, ["evidence", "--platform", "sim", "--evidence", str(tmp_path / "ev.json"), "--policy",
                             _policy_file(tmp_path, SIM_POLICY)], 2, "sim evidence")


def test_hostile_witness_state_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make_bundle()
    key = publish(made, tmp_path / "log.db")
    state = tmp_path / "witness.json"
    state.write_text("[" * DEEP)
    policy = _policy_file(tmp_path, made.policy_toml(log_key=key))
    _one_line_error(capsys, ["bundle", _bundle_file(tmp_path, made.bundle), "--policy", policy,
                             "--witness-state", str(state)], 2, "witness state", "nested too deeply")


def test_tdx_collateral_is_read_strictly() -> None:
    """dcap-qvl would take the last of two duplicate keys; the verifier refuses before it looks."""
    for bad in (b'{"tcb_info": "a", "tcb_info": "b"}', b"[" * DEEP, b'{"x": Infinity}'):
        with pytest.raises(ParseError, match="tdx collateral"):
            tdx._check_collateral(None, bad, datetime.now(timezone.utc), Verdict("t"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ every subcommand, random inputs


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def _takes_file(action: argparse.Action) -> bool:
    return isinstance(action.metavar, str) and (action.metavar.endswith("FILE") or "." in action.metavar)


SUBCOMMANDS = _subcommands(build_parser())
BASE = json.dumps(make_bundle().bundle)
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400]


@st.composite
def _hostile_json(draw: st.DrawFn) -> str:
    """A real signed bundle with one strictness violation somewhere, or plain deep nesting."""
    kind = draw(st.sampled_from(["number", "duplicate", "deep", "nested"]))
    if kind == "nested":
        opener = draw(st.sampled_from(["[", '{"a":', "[{\"a\":"]))
        return opener * draw(st.sampled_from([MAX_JSON_DEPTH + 1, 3000, DEEP]))
    spots = [i + 1 for i, c in enumerate(BASE) if c == "{"]
    at = draw(st.sampled_from(spots))
    if kind == "number":
        insert = f'"zz": {draw(st.sampled_from(BAD_NUMBERS))}, '
    elif kind == "duplicate":
        insert = '"zz": 1, "zz": 2, '
    else:
        depth = draw(st.sampled_from([MAX_JSON_DEPTH + 1, DEEP]))
        insert = '"zz": ' + "[" * depth + "]" * depth + ", "
    return BASE[:at] + insert + BASE[at:]


_TOML = st.one_of(
    st.just(SIM_POLICY), st.just("[sev-snp]\n"), st.just("[tdx]\n[nitro]\n[nvidia]\nrequired = true\n"),
    st.sampled_from(["a = " + "[" * DEEP, "a = " + "{b = " * 3000, SIM_POLICY + 'max_age = "99999999999999999999d"\n',
                     SIM_POLICY + "[expect]\ncode_identity = []\n", SIM_POLICY + "[sim]\nmeasurements = []\n"]),
)
_CONTENT = st.one_of(_hostile_json(), _TOML, st.binary(max_size=300), st.text(max_size=200))


@st.composite
def _argv(draw: st.DrawFn, tmp: Path) -> list[str]:
    """One invocation of a subcommand, every argument drawn from what its parser declares."""
    name = draw(st.sampled_from(sorted(SUBCOMMANDS)))
    argv, files = [name], 0
    for action in SUBCOMMANDS[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings or action.required:
            present = True
        else:
            present = draw(st.booleans())
        if not present:
            continue
        flag = [] if not action.option_strings else [action.option_strings[0]]
        if action.nargs == 0:
            argv += flag
        elif action.choices:
            argv += [*flag, draw(st.sampled_from(sorted(action.choices)))]
        elif _takes_file(action):
            path = tmp / f"f{files}"
            files += 1
            # A policy file is usually well-formed, so that the other inputs are reached too.
            content = draw(_TOML if str(action.metavar).endswith(".toml") and draw(st.booleans()) else _CONTENT)
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
            argv += [*flag, str(path)]
        else:
            argv += [*flag, draw(st.text(max_size=40) if draw(st.integers(0, 3)) == 0 else st.sampled_from(
                ["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "ff" * 32,
                 "0x" + "00" * 65]))]
    return argv


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_subcommand_on_hostile_input_exits_1_or_2(data: st.DataObject, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = data.draw(_argv(tmp_path))
    rc, text = _run(capsys, argv)
    assert rc in (1, 2), (argv, text[-500:])
    event(f"{argv[0]} exit {rc}: {text.strip().splitlines()[-1][:50] if text.strip() else ''}")


def test_the_walk_reaches_every_subcommand_and_option() -> None:
    """The property test draws from the parser itself, so a new subcommand or option is covered."""
    assert set(SUBCOMMANDS) == {"bundle", "disclosure", "evidence", "sample", "prepare"}
    files = {a.dest for p in SUBCOMMANDS.values() for a in p._actions if _takes_file(a)}
    assert files == {"bundle", "disclosure", "policy", "witness_state", "evidence", "certs", "collateral", "sample",
                     "prepare"}


def test_installed_command_on_deep_input(tmp_path: Path) -> None:
    """One real process: a deeply nested bundle gives exit 2 and one line on stderr."""
    (tmp_path / "b.json").write_text("[" * DEEP)
    (tmp_path / "p.toml").write_text(SIM_POLICY)
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "bundle", str(tmp_path / "b.json"), "--policy",
                           str(tmp_path / "p.toml")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "nested too deeply" in proc.stderr
