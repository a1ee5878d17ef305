"""How verdicts are shown: a step table for people, one JSON object for machines."""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Any, TextIO

from verifier.models import Status, Verdict

_MARK = {Status.OK: "ok", Status.FAILED: "FAILED", Status.SKIPPED: "skipped"}


def table(verdict: Verdict, out: TextIO, *, allow_unpinned: bool = False, last_line: str | None = None) -> None:
    """The step table, claims and warnings, then `last_line` (by default the verdict line)."""
    width = max(60, min(shutil.get_terminal_size((100, 20)).columns, 140))
    name_w = min(max((len(s.name) for s in verdict.steps), default=4), 42)
    reason_w = max(20, width - name_w - 12)
    out.write(f"{'step':<{name_w}}  {'result':<7}  reason\n")
    out.write(f"{'-' * name_w}  {'-' * 7}  {'-' * min(reason_w, 40)}\n")
    for s in verdict.steps:
        lines = textwrap.wrap(printable(s.reason), reason_w) or [""]
        out.write(f"{printable(s.name):<{name_w}}  {_MARK[s.status]:<7}  {lines[0]}\n")
        for extra in lines[1:]:
            out.write(f"{'':<{name_w}}  {'':<7}  {extra}\n")
    if verdict.claims:
        out.write("\nclaims:\n")
        _claims(verdict.claims, out, "  ")
    out.write("\n")
    for w in verdict.warnings:
        out.write(f"WARNING: {w}\n")
    out.write((last_line or verdict_line(verdict, allow_unpinned=allow_unpinned)) + "\n")


def verdict_line(verdict: Verdict, *, allow_unpinned: bool = False) -> str:
    """The last line: VERIFIED, VERIFIED (UNPINNED: ...) when the caller allows that, or NOT VERIFIED and why."""
    unpinned = ", ".join(verdict.unpinned)
    if not verdict.verified:
        return f"NOT VERIFIED ({verdict.subject}): {len(verdict.failures)} step(s) failed"
    if unpinned and not allow_unpinned:
        return (f"NOT VERIFIED ({verdict.subject}): every check passed, but the policy does not pin {unpinned}; "
                "pin them in the policy, or pass --allow-unpinned to accept that")
    head = f"VERIFIED (UNPINNED: {unpinned})" if unpinned else f"VERIFIED ({verdict.subject})"
    return head + (", WITH WARNINGS ABOVE" if verdict.warnings else "")


def _claims(claims: dict[str, Any], out: TextIO, indent: str) -> None:
    for key, value in claims.items():
        if isinstance(value, dict):
            out.write(f"{indent}{printable(str(key))}:\n")
            _claims(value, out, indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                out.write(f"{indent}{printable(str(key))}[{i}]:\n")
                _claims(v, out, indent + "  ")
        else:
            out.write(f"{indent}{printable(str(key))}: {printable(str(value))}\n")


def as_json(verdict: Verdict, out: TextIO, **extra: Any) -> None:
    out.write(json.dumps({**verdict.to_json(), **extra}, indent=2, default=str) + "\n")


SHOWN = 300  # characters of a prompt or answer shown in the text report


def disclosure_report(claims: dict[str, Any], out: TextIO) -> None:
    """A disclosure's two sections side by side: the audit's headline results, then each exchange's
    prompt and answer (shortened; `--json` has them whole)."""
    promised = claims.get("promised", {})
    out.write("\nWhat the audit promised\n")
    for label, key in (("model", "model_digest"), ("dataset", "dataset_digest"), ("spec", "spec_digest"),
                       ("judges", "judges_digest"), ("statement", "statement_digest"), ("logged as", "log"),
                       ("finished", "finished_at")):
        if key == "judges_digest" and not promised.get(key):
            continue  # an audit without judge models
        out.write(f"  {label:<10} {printable(str(promised.get(key) or '-'))}\n")
    results = promised.get("results") or {}
    for task, metrics in results.items():
        out.write(printable(f"  {task}: " + ", ".join(f"{m} {v:.4g}" for m, v in metrics.items())) + "\n")
    if not results:
        out.write("  (no results: the audit statement could not be read)\n")
    out.write("\nWhat was served\n")
    for ex in claims.get("served", []):
        head = f"  exchange {ex['exchange']}"
        if "receipt" in ex:
            head += (f": receipt {ex['receipt']}, sequence {ex['sequence']}, {ex['time']}, POST {ex['path']}"
                     + (" (streamed)" if ex["stream"] else "") + (f", status {ex['status']}" if ex["status"] != 200
                                                                  else ""))
            s = ex["sampling"]
            applied = (f"temperature {s['temperature']:g}, top_p {s['top_p']:g}, max_tokens {s['max_tokens']}, "
                       f"seed {s['seed']}, stop {s['stop']}")
        out.write(printable(head) + "\n")
        if "receipt" in ex:
            out.write(f"    applied  {printable(applied)}\n")
        out.write(f"    prompt   {_short(ex.get('prompt'))}\n")
        out.write(f"    answer   {_short(ex.get('answer'))}\n")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape sequences, other controls)
    written as an escape: disclosed answers and reasons quote input a stranger wrote."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _short(text: str | None) -> str:
    if text is None:
        return "(none found)"
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= SHOWN else flat[:SHOWN - 1] + "…"
