"""Allow-lists in policies: one parser and one check, for every platform and the code identity.

The rule, the same for every key: absent, the value is not pinned (its step is skipped and says so);
present, it is a non-empty list of values in the key's format. `[]` is refused, because it would
accept nothing and a policy author who means "not pinned" should remove the key. Values are compared
in lower case, so hex (and NVIDIA's VBIOS versions) may be written in either case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from verifier.errors import PolicyError
from verifier.models import Verdict

AllowList = tuple[str, ...]  # lower-case values


@dataclass(frozen=True)
class Format:
    """What each value of an allow-list must look like, and how an error message names it."""

    pattern: re.Pattern[str]
    description: str


def hex_bytes(size: int) -> Format:
    return Format(re.compile(f"[0-9a-fA-F]{{{2 * size}}}"), f"{2 * size}-digit hex strings ({size} bytes)")


VERSION = Format(re.compile(r"[0-9A-Za-z._-]{1,64}"), 'version strings (e.g. "550.90.07")')


def parse(table: dict[str, Any], key: str, fmt: Format) -> AllowList | None:
    """`table[key]` as an allow-list, None when the key is absent; `PolicyError` names what is wrong."""
    if key not in table:
        return None
    values = table[key]
    if values == []:
        raise PolicyError(f"{key} = [] would accept nothing: give a non-empty list of {fmt.description}, "
                          "or remove the key to leave it unpinned")
    if not (isinstance(values, list) and all(isinstance(v, str) and fmt.pattern.fullmatch(v) for v in values)):
        raise PolicyError(f"{key} must be a non-empty list of {fmt.description}")
    return tuple(v.lower() for v in values)


def check(verdict: Verdict, step: str, value: str | None, allowed: AllowList | None) -> None:
    """Append `step`: skipped when not pinned, else whether the evidence's `value` is allowed."""
    if allowed is None:
        verdict.skip(step, f"{value or 'absent'} not pinned by policy")
    elif value is None:
        verdict.fail(step, "absent from the evidence, and the policy pins it")
    else:
        verdict.check(step, value.lower() in allowed, f"{value} is in the policy's allow-list",
                      f"{value} is not in the policy's allow-list")
