"""The auditor's dataset format: JSONL, one JSON object per line, one file per bundle entry.

One parser for everyone who reads the bundle (the runner that feeds lm-eval, the task summaries the
provider approves), so that the documents counted are the documents scored. Errors name the file
and line, never content: the documents are the auditor's secret.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Iterator

from verifier.errors import UnusableInput


BATCH_ROWS = 4096  # rows parsed at a time into Arrow columns (arrow_dataset)


class DatasetError(UnusableInput):
    """A dataset file of the auditor's bundle is missing or is not JSONL of objects."""


def parse_jsonl(name: str, datasets: dict[str, bytes]) -> list[dict[str, Any]]:
    """Rows of the bundle file `name` (`datasets` maps bundle file -> bytes); blank lines are skipped."""
    rows = [row for _, row in _rows(name, datasets)]
    if not rows:
        raise DatasetError(f"{name}: no records")
    return rows


def _rows(name: str, datasets: dict[str, bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of each record of bundle file `name`, checked, read one line at a time:
    the file is never decoded or split whole, so reading it holds one line beyond its bytes."""
    if name not in datasets:
        raise DatasetError(f"the spec reads {name!r}, which is not in the dataset bundle "
                           f"(bundle files: {', '.join(sorted(datasets)) or 'none'})")
    for lineno, start, raw in _lines(datasets[name]):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{name}: not UTF-8 (byte {start + exc.start})") from None
        if not line.strip():
            continue
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
        yield lineno, row


def _lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of every line, split at b"\\n" only (not splitlines():
    JSON strings may hold U+2028)."""
    start, lineno = 0, 1
    while start <= len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        yield lineno, start, data[start:end]
        start, lineno = end + 1, lineno + 1


def arrow_dataset(name: str, datasets: dict[str, bytes]) -> Any:
    """Bundle file `name` as an in-memory `datasets.Dataset`, the same one `hf_dataset` makes of its
    parsed rows, built without ever holding those rows: `BATCH_ROWS` rows at a time become Arrow
    columns (datasets' own type inference), and the batches are joined without copying. So the file
    costs its bytes plus its Arrow columns (tests/test_dataset.py measures it), where the parsed
    rows alone took four times the file. A file whose batches come out with different columns or
    types (a column null in one batch, text in the next) is built from all its rows at once, as
    `hf_dataset` does, so the result never depends on where a batch ends."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, disable_progress_bars
    from datasets.table import InMemoryTable

    disable_progress_bars()
    parts: list[Any] = []
    batch: list[dict[str, Any]] = []
    for _, row in _rows(name, datasets):
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            parts.append(hf_dataset(batch))
            batch = []
    if batch:
        parts.append(hf_dataset(batch))
    if not parts:
        raise DatasetError(f"{name}: no records")
    first = parts[0]
    if len(parts) == 1:
        return first
    if any(p.features != first.features or p.column_names != first.column_names for p in parts):
        del parts
        return hf_dataset(parse_jsonl(name, datasets))
    table = pa.concat_tables([p.data.table for p in parts])  # chunks side by side: no copy
    # datasets fingerprints a Dataset made without one by pickling its whole table (a second copy of
    # the data, for a cache key): the file's SHA-256 is that key, for the file's content.
    fingerprint = hashlib.sha256(datasets[name]).hexdigest()[:32]
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=first.features), fingerprint=fingerprint)


def hf_dataset(rows: list[dict[str, Any]]) -> Any:
    """The rows as an in-memory `datasets.Dataset`, as lm-eval gets them: every key of any row is a
    column (as the json loader makes it), None where a row lacks it. Nothing is written to disk.
    Turns datasets' progress bars off for the process: lm-eval's `process_docs` maps and filters
    these rows, and a bar per call is only noise in the enclave's log."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()

    columns = dict.fromkeys(k for row in rows for k in row)
    return Dataset.from_dict({col: [row.get(col) for row in rows] for col in columns})


def record_line(data: bytes, index: int) -> int:
    """The line number of record `index` (0-based, as `parse_jsonl` counts) of a file it parsed."""
    records = (lineno for lineno, _, raw in _lines(data) if raw.decode("utf-8").strip())
    return next(itertools.islice(records, index, None))
