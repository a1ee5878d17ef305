"""tlog/proofs.py: proof generation from stored complete subtrees.

Checked three ways: the node sets of transparency-dev/merkle's proof/proof_test.go, the RFC 9162
recursive definitions (written out below as a test oracle over the raw leaves), and the verifier.
"""

from __future__ import annotations

import pytest

from tlog.proofs import (
    CompactRange,
    consistency_ranges,
    inclusion_ranges,
    range_hashes,
    root,
    subtrees,
)
from verifier.merkle import (
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    return root_hash(leaves)


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]), literally."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return rfc_path(m, d[:k]) + [mth(d[k:])]
    return rfc_path(m - k, d[k:]) + [mth(d[:k])]


def rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b), literally."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return rfc_subproof(m, d[:k], b) + [mth(d[k:])]
    return rfc_subproof(m - k, d[k:], False) + [mth(d[:k])]


class MemoryTree:
    """Stored nodes as the log keeps them, built by the same CompactRange the log appends with."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.range = CompactRange()
        self.nodes = dict(self.range.extend(leaf_hash(x) for x in leaves))

    def fetch(self, ids):  # type: ignore[no-untyped-def]
        return {n: self.nodes[n] for n in ids if n in self.nodes}


LEAVES = [f"leaf {i}".encode() for i in range(70)]
TREE = MemoryTree(LEAVES)


def test_inclusion_nodes_match_transparency_dev() -> None:
    # (size, index) -> the complete subtrees proof/proof_test.go lists, grouped per proof element.
    cases = {
        (1, 0): [], (2, 0): [[(0, 1)]], (2, 1): [[(0, 0)]], (3, 1): [[(0, 0)], [(0, 2)]],
        (7, 0): [[(0, 1)], [(1, 1)], [(1, 2), (0, 6)]],
        (7, 4): [[(0, 5)], [(0, 6)], [(2, 0)]],
        (7, 6): [[(1, 2)], [(2, 0)]],
        (5, 3): [[(0, 2)], [(1, 0)], [(0, 4)]],
        (15, 10): [[(0, 11)], [(1, 4)], [(1, 6), (0, 14)], [(3, 0)]],
        (95, 81): [[(0, 80)], [(1, 41)], [(2, 21)], [(2, 22), (1, 46), (0, 94)], [(4, 4)], [(6, 0)]],
    }
    for (size, index), want in cases.items():
        assert [subtrees(lo, hi) for lo, hi in inclusion_ranges(index, size)] == want, (size, index)


def test_consistency_nodes_match_transparency_dev() -> None:
    cases = {
        (1, 2): [[(0, 1)]], (1, 4): [[(0, 1)], [(1, 1)]], (2, 8): [[(1, 1)], [(2, 1)]],
        (3, 7): [[(0, 2)], [(0, 3)], [(1, 0)], [(1, 2), (0, 6)]],
        (4, 7): [[(1, 2), (0, 6)]],
        (5, 7): [[(0, 4)], [(0, 5)], [(0, 6)], [(2, 0)]],
        (7, 8): [[(0, 6)], [(0, 7)], [(1, 2)], [(2, 0)]],
        (24, 31): [[(3, 2)], [(2, 6), (1, 14), (0, 30)], [(4, 0)]],
        (5, 5): [], (0, 9): [],
    }
    for (m, n), want in cases.items():
        assert [subtrees(lo, hi) for lo, hi in consistency_ranges(m, n)] == want, (m, n)


def test_every_inclusion_proof_matches_rfc_and_verifies() -> None:
    for size in range(1, 41):
        r = root(size, TREE.fetch)
        assert r == mth(LEAVES[:size])
        for index in range(size):
            proof = range_hashes(inclusion_ranges(index, size), TREE.fetch)
            assert proof == rfc_path(index, LEAVES[:size]), (size, index)
            assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, r)


def test_every_consistency_proof_matches_rfc_and_verifies() -> None:
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = range_hashes(consistency_ranges(m, n), TREE.fetch)
            assert proof == rfc_subproof(m, LEAVES[:n], True), (m, n)
            assert verify_consistency(m, n, proof, mth(LEAVES[:m]), mth(LEAVES[:n]))


def test_compact_range_stores_each_complete_subtree_once() -> None:
    tree = MemoryTree(LEAVES[:13])
    # 13 leaves: 13 + 6 + 3 + 1 complete subtrees at levels 0..3
    assert sorted(tree.nodes) == sorted([(0, i) for i in range(13)] + [(1, i) for i in range(6)] +
                                        [(2, i) for i in range(3)] + [(3, 0)])
    assert tree.nodes[(1, 0)] == node_hash(leaf_hash(LEAVES[0]), leaf_hash(LEAVES[1]))
    assert tree.range.root() == mth(LEAVES[:13])
    assert [n for n, _ in tree.range.nodes] == [(3, 0), (2, 2), (0, 12)]
    reloaded = CompactRange.load(13, tree.fetch)
    assert reloaded == tree.range


def test_bad_requests_and_missing_nodes() -> None:
    with pytest.raises(ValueError):
        inclusion_ranges(5, 5)
    with pytest.raises(ValueError):
        consistency_ranges(6, 5)
    with pytest.raises(ValueError):
        subtrees(1, 3)  # not a range RFC 9162 ever hashes
    with pytest.raises(LookupError):
        range_hashes(inclusion_ranges(3, 90), TREE.fetch)  # the tree only has 70 leaves
