"""Measurement allow-lists in platform policy tables (TDX MRTD/RTMRs, Nitro PCRs, ...)."""

from __future__ import annotations

import re
from typing import Any

from verifier.errors import PolicyError


def hex_allow_list(table: dict[str, Any], key: str, size: int) -> tuple[str, ...] | None:
    """`table[key]` as lowercase hex values of `size` bytes; None when absent (the value is not pinned).

    An empty list is refused: it would reject everything, which is never what a policy author means."""
    if key not in table:
        return None
    values = table[key]
    pattern = re.compile(f"[0-9a-fA-F]{{{2 * size}}}")
    if not (isinstance(values, list) and values and all(isinstance(v, str) and pattern.fullmatch(v) for v in values)):
        raise PolicyError(f"{key} must be a non-empty list of {2 * size}-digit hex strings ({size} bytes)")
    return tuple(v.lower() for v in values)
