"""`aaudit auditor check | export-lm-eval` and the spec check of `aaudit seal spec`: what the
auditor does with a spec on its own machine, before anything is sealed or uploaded."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from verifier.errors import UnusableInput, VerificationError
from verifier.models import Verdict

_EXIT = "Exit 0 when every step passes, 1 when a check fails, 2 when the spec or the data folder cannot be read."


def _enclave_floor() -> int:
    """The enclave's default least documents per aggregate task (the operator may raise it)."""
    from enclave.session import Limits

    return next(f.default for f in fields(Limits) if f.name == "min_documents_floor")


def register_auditor(rsub: argparse._SubParsersAction) -> None:
    """`aaudit auditor check` and `aaudit auditor export-lm-eval`, registered under the auditor's commands."""
    c = rsub.add_parser(
        "check", help="check a spec against your plaintext data, before sealing",
        description="Check SPEC as the enclave will (it parses; templates compile in the sandbox; metrics allowed) "
        "and, with --data, against the JSONL files it names under DIR: each file exists and is JSONL of objects, "
        "every row has every column the templates read, every template renders for every row in the enclave's "
        "template sandbox with lm-eval's filters, multiple-choice targets are valid choices, the few-shot source "
        "has enough rows, and each task has the documents min_documents needs. No model is loaded. Problems "
        "name the task, file, line and template key or column, never the row's content. " + _EXIT)
    c.add_argument("spec", type=Path, metavar="SPEC.toml", help="the audit spec")
    c.add_argument("--data", type=Path, metavar="DIR",
                   help="the folder you will seal as the dataset (the spec's file names are relative to it); "
                   "without it only the spec is checked")
    c.add_argument("--min-documents-floor", type=int, metavar="N",
                   help="the enclave operator's least documents per task for output \"aggregate\" (default: the "
                   "floor of `aaudit enclave serve` when the operator sets none)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the step table")
    c.set_defaults(func=_check)

    e = rsub.add_parser(
        "export-lm-eval", help="write a spec's tasks as stock lm-eval YAML, to reproduce its numbers",
        description="Write OUT/<task>.yaml for each task of SPEC (the task config the enclave gives lm-eval, "
        "reading the data with lm-eval's json loader) and OUT/README.md with the `lm_eval --include_path OUT "
        "--tasks ...` command that reproduces the audit's numbers on the plaintext model and data. Existing "
        "files are never overwritten.")
    e.add_argument("spec", type=Path, metavar="SPEC.toml", help="the audit spec")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the YAML files and README.md "
                   "(created if missing); the command passes it to --include_path as given")
    e.add_argument("--data-dir", default="data", metavar="D",
                   help="where lm_eval finds the spec's data files, written into the YAML as given; a relative "
                   "path is relative to the folder lm_eval runs in (default: data)")
    e.add_argument("--model-dir", default="model", metavar="M",
                   help="the plaintext model folder, for the command line (default: model)")
    e.set_defaults(func=_export)


def _read_spec(path: Path) -> bytes:
    """The spec's bytes; a folder must hold exactly one file, as the enclave requires of a sealed spec."""
    from sealing.digest import asset_files

    files = asset_files(path)
    if len(files) != 1:
        raise UnusableInput(f"{path}: a spec is one TOML file; this folder holds {len(files)} files")
    try:
        return files[0].source.read_bytes()
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _check(args: argparse.Namespace) -> int:
    from benchmarks.check import check_data, check_spec
    from verifier.render import as_json, table

    try:
        floor = _enclave_floor() if args.min_documents_floor is None else args.min_documents_floor
        if floor < 1:
            raise UnusableInput("--min-documents-floor must be at least 1")
        data = _read_spec(args.spec)
        if args.data is not None and not args.data.is_dir():
            raise UnusableInput(f"--data {args.data}: no such folder (give the folder you will seal as the dataset)")
    except UnusableInput as exc:
        if args.json:  # stdout stays one JSON object; the one-line message still goes to stderr
            print(json.dumps({"passed": False, "error": str(exc), "unusable_input": True}))
        raise
    subject = f"{args.spec}" + (f" against {args.data}" if args.data is not None else "")
    verdict, spec = check_spec(data, subject)
    if spec is not None and args.data is not None:
        check_data(verdict, spec, args.data, floor=floor)
    elif spec is not None:
        verdict.skip("data", "not checked: give --data DIR to check the spec against your data")
    if args.json:
        as_json(verdict, sys.stdout, passed=verdict.verified, summary=summary(verdict))
    else:
        table(verdict, sys.stdout, last_line=summary(verdict))
    if not verdict.verified:
        sys.stdout.flush()
        raise VerificationError(f"{len(verdict.failures)} step(s) of the spec check failed; fix what their reasons "
                                "name, then check again")
    return 0


def summary(verdict: Verdict) -> str:
    """The last line of a spec check."""
    if not verdict.verified:
        return f"SPEC CHECK FAILED ({verdict.subject}): {len(verdict.failures)} step(s) failed"
    return f"SPEC CHECK PASSED ({verdict.subject})" + (", WITH WARNINGS ABOVE" if verdict.warnings else "")


def check_before_sealing(path: Path) -> None:
    """`aaudit seal spec`: refuse, with the check's step table on stderr, a spec the enclave would
    refuse on upload; nothing is sealed then."""
    from benchmarks.check import check_spec
    from verifier.render import table

    verdict, _ = check_spec(_read_spec(path), str(path))
    if not verdict.verified:
        table(verdict, sys.stderr, last_line=summary(verdict))
        raise VerificationError("the enclave would refuse this spec (see the steps above); nothing was sealed")
    print(f"spec check: {verdict.steps[0].reason}; check it against your data with `aaudit auditor check "
          f"{path} --data DIR`")


def _export(args: argparse.Namespace) -> int:
    from benchmarks.lm_eval_export import README, export_lm_eval, lm_eval_command, project_metrics
    from benchmarks.spec import parse_spec

    spec = parse_spec(_read_spec(args.spec))
    written = export_lm_eval(spec, args.out, data_dir=args.data_dir, model_dir=args.model_dir)
    for path in written:
        print(f"  {path}")
    print(f"reproduce with (see {args.out / README}):\n  {shlex.join(lm_eval_command(spec, str(args.out), args.model_dir))}")
    if own := project_metrics(spec):
        print(f"note: {', '.join(own)} score with the project's own metrics, which stock lm_eval does not register; "
              f"see {args.out / README}")
    return 0
