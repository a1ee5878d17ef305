"""Small helpers the test files share."""

from __future__ import annotations

from verifier.models import Step, Verdict


def flip(data: bytes, offset: int, xor: int = 1) -> bytes:
    """`data` with the byte at `offset` (modulo its length) XOR-ed with `xor`."""
    offset %= len(data)
    return data[:offset] + bytes([data[offset] ^ xor]) + data[offset + 1:]


def step(verdict: Verdict, name: str) -> Step:
    """The verdict's step called `name`; fails the test, listing the steps, if there is none."""
    matches = [s for s in verdict.steps if s.name == name]
    assert matches, f"no step {name!r} in {[s.name for s in verdict.steps]}"
    return matches[0]
