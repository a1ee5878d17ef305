"""verifier/merkle.py against the RFC 9162 / RFC 6962 test vectors of transparency-dev/merkle
(proof/verify_test.go): the 8-leaf reference tree, its roots, known-good proofs, and the same
corruptions that suite applies (every one must be rejected)."""

from __future__ import annotations

import pytest

from verifier.merkle import (
    EMPTY_ROOT,
    inclusion_path,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (index, size, proof); index is 0-based here (the Go table is 1-based).
INCLUSION = [
    (0, 1, []),
    (0, 8, h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]

CONSISTENCY = [
    (1, 1, []),
    (1, 8, h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


def test_roots_of_reference_tree() -> None:
    assert root_hash([]) == EMPTY_ROOT == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    for n in range(1, 9):
        assert root_hash(LEAVES[:n]) == ROOTS[n - 1], n


def test_hash_domain_separation() -> None:
    assert leaf_hash(b"") != node_hash(b"", b"")
    assert leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ bit]) + out[i][1:]
    return out


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_inclusion_vectors_and_corruptions(index: int, size: int, proof: list[bytes]) -> None:
    leaf, root = leaf_hash(LEAVES[index]), ROOTS[size - 1]
    assert verify_inclusion(leaf, index, size, proof, root)
    probes = [
        (index - 1, size, leaf, proof, root), (index + 1, size, leaf, proof, root),
        (index ^ 2, size, leaf, proof, root), (index, size * 2, leaf, proof, root),
        (index, size // 2, leaf, proof, root), (index, size, b"WrongLeaf", proof, root),
        (index, size, leaf, proof, EMPTY_ROOT), (index, size, leaf, proof, SOME_HASH),
        (index, size, leaf, proof + [b""], root), (index, size, leaf, proof + [root], root),
        (index, size, leaf, [b""] + proof, root), (index, size, leaf, [root] + proof, root),
    ]
    probes += [(index, size, leaf, _flip(proof, i, 8), root) for i in range(len(proof))]
    if proof:
        probes.append((index, size, leaf, proof[:-1], root))
    if len(proof) > 1:
        probes.append((index, size, leaf, [proof[0], SOME_HASH] + proof[1:], root))
    accepted = [p for p in probes if verify_inclusion(p[2], p[0], p[1], p[3], p[4])]
    assert not accepted


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_inclusion_path_reproduces_the_reference_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_path([leaf_hash(d) for d in LEAVES[:size]], index) == proof


def test_inclusion_path_verifies_for_every_leaf_of_every_small_tree() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(33)]
    for size in range(1, 34):
        root = root_hash([bytes([i]) for i in range(size)])
        for index in range(size):
            assert verify_inclusion(hashes[index], index, size, inclusion_path(hashes[:size], index), root)
    with pytest.raises(ValueError):
        inclusion_path(hashes[:3], 3)


def test_inclusion_degenerate_cases() -> None:
    data_hash = leaf_hash(b"data")
    assert verify_inclusion(data_hash, 0, 1, [], data_hash)
    assert not verify_inclusion(data_hash, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], data_hash)
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], b"")
        assert not verify_inclusion(b"", index, size, [], EMPTY_ROOT)
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


@pytest.mark.parametrize("size1,size2,proof", CONSISTENCY)
def test_consistency_vectors_and_corruptions(size1: int, size2: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    assert verify_consistency(size1, size2, proof, r1, r2)
    if not proof:
        return
    probes = [
        (size1 - 1, size2, r1, r2, proof), (size1 + 1, size2, r1, r2, proof), (size1 ^ 2, size2, r1, r2, proof),
        (size1, size2 * 2, r1, r2, proof), (size1, size2 // 2, r1, r2, proof),
        (size1, size2, b"WrongRoot", r2, proof), (size1, size2, r1, b"WrongRoot", proof),
        (size1, size2, r2, r1, proof), (size1, size2, r1, r2, []),
        (size1, size2, r1, r2, proof + [b""]), (size1, size2, r1, r2, proof + [r1]),
        (size1, size2, r1, r2, proof + [r2]), (size1, size2, r1, r2, [b""] + proof),
        (size1, size2, r1, r2, [r1] + proof), (size1, size2, r1, r2, [r2] + proof),
        (size1, size2, r1, r2, [proof[0]] + proof), (size1, size2, r1, r2, proof[:-1]),
    ]
    probes += [(size1, size2, r1, r2, _flip(proof, i, 16)) for i in range(len(proof))]
    accepted = [p for p in probes if verify_consistency(p[0], p[1], p[4], p[2], p[3])]
    assert not accepted


def test_consistency_special_cases() -> None:
    root1, root2 = b"don't care 1", b"don't care 2"
    cases = [
        (0, 0, root1, root2, [], False), (1, 1, root1, root2, [], False),
        (0, 0, root1, root1, [], True), (0, 1, root1, root2, [], True), (1, 1, root2, root2, [], True),
        (1, 0, root1, root2, [], False), (2, 1, root1, root2, [], False),
        (1, 2, root1, root2, [], False),
        (0, 0, EMPTY_ROOT, root2, [], False), (1, 1, EMPTY_ROOT, root2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False), (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    ]
    for size1, size2, r1, r2, proof, want in cases:
        assert verify_consistency(size1, size2, proof, r1, r2) is want, (size1, size2, r1, r2, proof)


def test_empty_proof_rejected_when_first_size_is_a_power_of_two() -> None:
    # RFC 9162 §2.1.4.2 step 1: an empty path fails before first_hash is prepended.
    assert not verify_consistency(4, 8, [], ROOTS[3], ROOTS[3])
    assert not verify_consistency(4, 8, [], ROOTS[3], ROOTS[7])
