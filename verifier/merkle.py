"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proof verification.

Used for the per-sample records of an audit and for the transparency log. Verification follows
RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, bottom-up (RFC 9162 §2.1.1), without recursion."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root_hash(leaves: Sequence[bytes]) -> bytes:
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


def inclusion_path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The RFC 9162 §2.1.3.1 inclusion proof PATH(index, D[n]) for a tree given by its leaf hashes."""
    if not 0 <= index < len(hashes):
        raise ValueError(f"index {index} is outside a tree of {len(hashes)} leaves")
    path: list[bytes] = []
    lo, hi = 0, len(hashes)
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)  # the largest power of two below the subtree's size
        if index - lo < k:
            path.append(root_from_leaf_hashes(hashes[lo + k:hi]))
            hi = lo + k
        else:
            path.append(root_from_leaf_hashes(hashes[lo:lo + k]))
            lo += k
    return path[::-1]


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when `proof` shows the leaf hash `leaf` at `index` in the tree of `size` with `root`."""
    if not 0 <= index < size or not _hashes_ok(leaf, root, *proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> bool:
    """True when `proof` shows the tree (size1, root1) is a prefix of (size2, root2)."""
    if size1 > size2 or size1 < 0 or not _hashes_ok(*proof):
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:  # every tree extends the empty one; nothing to prove
        return not proof
    if not proof or not _hashes_ok(root1, root2):  # RFC 9162 §2.1.4.2 step 1
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: prepend first_hash
        path = [root1] + path
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2
