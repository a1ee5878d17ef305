"""RFC 9162 proof generation from stored complete subtrees, and the compact range used to append.

A node `(level, index)` is the root of the complete subtree over leaves
[index * 2^level, (index + 1) * 2^level). Complete subtrees never change once all their leaves
exist, so the log stores each one once, when it completes, and every proof for every past tree
size is read from them: a proof element is the hash of a range [lo, hi) of leaves, which is
either one stored node or (at the tree's right edge) the RFC 9162 fold of at most log2(n) of them.
A proof in a tree of a million leaves thus costs one indexed read of about forty rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from verifier.merkle import EMPTY_ROOT, node_hash

NodeID = tuple[int, int]          # (level, index)
Range = tuple[int, int]           # leaves [lo, hi)
Fetch = Callable[[Sequence[NodeID]], dict[NodeID, bytes]]


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def subtrees(lo: int, hi: int) -> list[NodeID]:
    """The complete subtrees, left to right, whose fold is MTH(D[lo:hi]).

    Valid for the ranges RFC 9162's recursion produces: `lo` is aligned to a power of two at
    least as large as the range, so the binary digits of hi - lo give the subtrees in order.
    """
    n = hi - lo
    if n <= 0:
        raise ValueError(f"empty leaf range [{lo}, {hi})")
    if lo & ((1 << (n - 1).bit_length()) - 1):
        raise ValueError(f"leaf range [{lo}, {hi}) is not one of RFC 9162's subtrees")
    out = []
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            out.append((level, lo >> level))
            lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine left-to-right complete subtree hashes into the hash of their whole range."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The leaf ranges whose hashes form PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    out = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo = mid
    return out[::-1]


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The leaf ranges whose hashes form PROOF(first, D[0:second]) (RFC 9162 §2.1.4.1)."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    out = []
    lo, hi, m, whole = 0, second, first, True   # SUBPROOF(m, D[lo:hi], whole)
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))
    return out[::-1]


def range_hashes(ranges: Sequence[Range], fetch: Fetch) -> list[bytes]:
    """Hash each range from stored nodes, fetching all nodes needed in one call."""
    parts = [subtrees(lo, hi) for lo, hi in ranges]
    needed = sorted({n for p in parts for n in p})
    have = fetch(needed)
    missing = [n for n in needed if n not in have]
    if missing:
        raise LookupError(f"stored tree is missing node(s) {missing[:4]} (level, index)")
    return [fold([have[n] for n in p]) for p in parts]


def root(size: int, fetch: Fetch) -> bytes:
    return EMPTY_ROOT if size == 0 else range_hashes([(0, size)], fetch)[0]


@dataclass
class CompactRange:
    """The right edge of the tree [0, size): one complete subtree per set bit of size.

    Appending a leaf merges equal-sized subtrees; every merge completes a node, which is
    exactly what must be stored. This is all the state an append needs.
    """

    size: int = 0
    nodes: list[tuple[NodeID, bytes]] = field(default_factory=list)

    @classmethod
    def load(cls, size: int, fetch: Fetch) -> "CompactRange":
        ids = subtrees(0, size) if size else []
        have = fetch(ids)
        missing = [n for n in ids if n not in have]
        if missing:
            raise LookupError(f"stored tree is missing node(s) {missing} of its right edge")
        return cls(size, [(n, have[n]) for n in ids])

    def copy(self) -> "CompactRange":
        return CompactRange(self.size, list(self.nodes))

    def append(self, leaf: bytes) -> list[tuple[NodeID, bytes]]:
        """Add one leaf hash; returns the nodes it completes (the leaf itself first)."""
        made = [((0, self.size), leaf)]
        self.nodes.append(made[0])
        while len(self.nodes) > 1 and self.nodes[-1][0][0] == self.nodes[-2][0][0]:
            (level, index), right = self.nodes.pop()
            _, left = self.nodes.pop()
            made.append(((level + 1, index >> 1), node_hash(left, right)))
            self.nodes.append(made[-1])
        self.size += 1
        return made

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[NodeID, bytes]]:
        made: list[tuple[NodeID, bytes]] = []
        for leaf in leaves:
            made.extend(self.append(leaf))
        return made

    def root(self) -> bytes:
        return fold([h for _, h in self.nodes]) if self.nodes else EMPTY_ROOT
