"""The auditor's dataset format: JSONL, one JSON object per line, one file per bundle entry.

One parser for everyone who reads the bundle (the runner that feeds lm-eval, the task summaries the
provider approves), so that the documents counted are the documents scored. Errors name the file
and line, never content: the documents are the auditor's secret.
"""

from __future__ import annotations

import json
from typing import Any

from verifier.errors import UnusableInput


class DatasetError(UnusableInput):
    """A dataset file of the auditor's bundle is missing or is not JSONL of objects."""


def parse_jsonl(name: str, datasets: dict[str, bytes]) -> list[dict[str, Any]]:
    """Rows of the bundle file `name` (`datasets` maps bundle file -> bytes); blank lines are skipped."""
    if name not in datasets:
        raise DatasetError(f"the spec reads {name!r}, which is not in the dataset bundle "
                           f"(bundle files: {', '.join(sorted(datasets)) or 'none'})")
    try:
        text = datasets[name].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 (byte {exc.start})") from None
    rows = []
    for lineno, line in _records(text):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name}: line {lineno}: not JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DatasetError(f"{name}: line {lineno}: JSON nested too deeply") from None
        except ValueError:  # an integer literal beyond Python's int_max_str_digits
            raise DatasetError(f"{name}: line {lineno}: a number has too many digits") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{name}: line {lineno}: each line must be a JSON object")
        rows.append(row)
    if not rows:
        raise DatasetError(f"{name}: no records")
    return rows


def hf_dataset(rows: list[dict[str, Any]]) -> Any:
    """The rows as an in-memory `datasets.Dataset`, as lm-eval gets them: every key of any row is a
    column (as the json loader makes it), None where a row lacks it. Nothing is written to disk.
    Turns datasets' progress bars off for the process: lm-eval's `process_docs` maps and filters
    these rows, and a bar per call is only noise in the enclave's log."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()

    columns = dict.fromkeys(k for row in rows for k in row)
    return Dataset.from_dict({col: [row.get(col) for row in rows] for col in columns})


def _records(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each record: every line that is not blank."""
    # not splitlines(): JSON strings may hold U+2028
    return [(lineno, line) for lineno, line in enumerate(text.split("\n"), 1) if line.strip()]


def record_line(data: bytes, index: int) -> int:
    """The line number of record `index` (0-based, as `parse_jsonl` counts) of a file it parsed."""
    return _records(data.decode("utf-8"))[index][0]
