"""A locally saved Hugging Face dataset as the JSONL file of the auditor's bundle.

Reads what the auditor already has on disk, offline: a `save_to_disk` folder (a Dataset, or a
DatasetDict with a split chosen), or Parquet / Arrow files (one file, or a folder of them read in
name order). Folders saved by `datasets` are opened with `datasets.load_from_disk`; Parquet and
Arrow files are read with pyarrow directly, because `datasets`' own loaders would first copy them
into its cache, and the data is the auditor's secret. Nothing is written but the output (by the
caller): each row on one line as RFC 8785 canonical JSON, the form `benchmarks.dataset.parse_jsonl`
reads. Errors name the file, row and column, never a value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from verifier.errors import UnusableInput
from verifier.models import canonical_json

MAX_SAFE_INT = 2**53 - 1


class DatasetImportError(UnusableInput):
    """The local dataset cannot be read, or lacks what the preset reads."""


def load_rows(source: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of the local dataset at `source` (see the module docstring); `split` picks one split of
    a saved DatasetDict (required when it has more than one)."""
    if source.is_dir() and (source / "dataset_dict.json").is_file():
        dd = _load_from_disk(source)
        splits = sorted(dd)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in dd:
            raise DatasetImportError(f"{source} is a dataset with splits {', '.join(splits)}: choose one with --split")
        return dd[split].to_list()
    if split is not None:
        raise DatasetImportError(f"--split applies to a save_to_disk folder of several splits; {source} is not one")
    if source.is_dir() and (source / "state.json").is_file():
        return _load_from_disk(source).to_list()
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".parquet", ".arrow") and p.is_file())
        if not files:
            raise DatasetImportError(f"{source} holds no save_to_disk dataset (dataset_dict.json or state.json) and no "
                               ".parquet or .arrow files")
    elif source.is_file() and source.suffix in (".parquet", ".arrow"):
        files = [source]
    else:
        raise DatasetImportError(f"{source}: not a save_to_disk folder, a .parquet or .arrow file, or a folder of them")
    return [row for f in files for row in _read_table(f).to_pylist()]


def to_jsonl(rows: list[dict[str, Any]], columns: Sequence[str], what: str, source: Path, *,
             keep_all: bool = False) -> bytes:
    """The rows as canonical JSONL. Each of `columns` (what `what`, e.g. "preset 'toxigen'", reads)
    must be present and non-null in every row; only those are written, unless `keep_all`."""
    if not rows:
        raise DatasetImportError(f"{source}: no rows")
    if columns:
        have = list(dict.fromkeys(k for row in rows for k in row))
        missing = [c for c in columns if c not in have]
        if missing:
            raise DatasetImportError(f"{source} lacks column(s) {', '.join(missing)}, which {what} reads (it has: "
                               f"{', '.join(have)}); rename or add them, e.g. with datasets' rename_column, "
                               "and import again")
    out = []
    for index, row in enumerate(rows):
        for c in columns:
            if row.get(c) is None:
                raise DatasetImportError(f"{source}: row {index}: column {c!r} is null; {what} reads it in every row")
        if not keep_all:
            row = {c: row[c] for c in columns}
        for key, value in row.items():
            problem = _not_json(value)
            if problem:
                raise DatasetImportError(f"{source}: row {index}: column {key!r} holds {problem}, which the bundle's JSON "
                                   "cannot carry; convert or drop the column first")
        out.append(canonical_json(row) + b"\n")
    return b"".join(out)


def _not_json(value: Any) -> str | None:
    """What in `value` JSON (RFC 8785) cannot hold, or None."""
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_SAFE_INT else "an integer beyond +-(2**53 - 1)"
    if isinstance(value, float):
        return None if math.isfinite(value) else "a NaN or infinite number"
    if isinstance(value, list):
        return next((p for p in map(_not_json, value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "a mapping with keys that are not strings"
        return next((p for p in map(_not_json, value.values()) if p), None)
    return f"a {type(value).__name__} value"


def _load_from_disk(path: Path) -> Any:
    """`datasets.load_from_disk`, offline and without progress bars: it maps the folder's Arrow
    files and writes nothing."""
    import os

    from enclave.runner import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # a folder that only looks saved: whatever the loader trips on, by type only
        raise DatasetImportError(f"{path}: datasets cannot load this save_to_disk folder ({type(exc).__name__})") from None


def _read_table(path: Path) -> Any:
    """A Parquet file, or an Arrow IPC file in either the stream form (`datasets` writes it) or the
    file form (Feather v2), as a pyarrow table in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise DatasetImportError(f"{path}: not a readable {path.suffix[1:]} file ({type(exc).__name__})") from None
