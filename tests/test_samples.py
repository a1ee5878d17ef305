"""Per-sample records an outside implementation can reproduce, and disclosing one of them.

`jcs` and `mth` below are written from RFC 8785 and RFC 9162 alone, sharing no code with the project
(nor with the `rfc8785` package it uses), so that when they reproduce a signed samples root
(here and in test_e2e.py, on a real run) the formats are shown to be what the documents say.
The disclosure tests attack `aaudit-verify sample` the ways a forger would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from aaudit.cli import main as aaudit_main
from tests.bundle_factory import Made, make_bundle
from verifier.cli import main as verify_main

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- independent JCS (RFC 8785)


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical JSON: §3.2.2 literals, numbers (ECMAScript), strings; §3.2.3 key order."""
    return _ser(value).encode("utf-8")


def _ser(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        assert abs(v) <= 2**53 - 1, "I-JSON: beyond an IEEE 754 double's exact integers"
        return str(v)
    if isinstance(v, float):
        return _es_number(v)
    if isinstance(v, str):
        return _es_string(v)
    if isinstance(v, list):
        return "[" + ",".join(_ser(x) for x in v) + "]"
    if isinstance(v, dict):  # sorted by UTF-16 code units: big-endian UTF-16 bytes compare the same way
        keys = sorted(v, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(_es_string(k) + ":" + _ser(v[k]) for k in keys) + "}"
    raise TypeError(type(v))


def _es_number(x: float) -> str:
    """ECMAScript Number::toString (ECMA-262 §6.1.6.1.20) from the shortest round-trip digits."""
    assert math.isfinite(x)
    if x == 0:
        return "0"  # -0 too
    if x < 0:
        return "-" + _es_number(-x)
    sign, digits, exp = Decimal(repr(x)).as_tuple()  # repr: the shortest digits that round-trip
    s = "".join(map(str, digits)).rstrip("0")
    exp += len(digits) - len(s)
    k = len(s)
    n = exp + k           # x = 0.s * 10**n, i.e. s * 10**(n - k)
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + s
    e = n - 1
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _es_string(s: str) -> str:
    """JSON.stringify's escapes: the two-character forms, \\u00xx for other controls, all else literal."""
    return '"' + "".join(_SHORT.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in s) + '"'


# ----------------------------------------------------------------------------- independent Merkle (RFC 9162)


def mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1, by its recursive definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


# ----------------------------------------------------------------------------- JCS against the package

TRICKY = [
    (1.0, b"1"), (1e21, b"1e+21"), (1e20, b"100000000000000000000"), (1e-7, b"1e-7"), (1e-6, b"0.000001"),
    (-0.0, b"0"), (0.1, b"0.1"), (-1.5, b"-1.5"), (5e-324, b"5e-324"), (1.7976931348623157e308,
    b"1.7976931348623157e+308"), (123456789012345680000.0, b"123456789012345680000"), (0.3 - 0.2,
    b"0.09999999999999998"), (2**53 - 1, b"9007199254740991"), (-(2**53 - 1), b"-9007199254740991"),
    ("\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", b'"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'),
    ("\x00\x01\x1f\x7f\u2028\b\f\t\r", b'"\\u0000\\u0001\\u001f\x7f\xe2\x80\xa8\\b\\f\\t\\r"'),
    # RFC 8785 §3.2.2 example: numbers as JavaScript writes them
    ([333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
     b"[333333333.3333333,1e+30,4.5,0.002,1e-27]"),
    # RFC 8785 §3.2.3 sorting example: UTF-16 code units, so the astral U+1F600 (D83D DE00) sorts
    # before U+FB33, though its code point is larger
    ({"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"},
     '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
     '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
     .encode()),
    ({"b": [True, None, {"a": False}], "a": {"\U0001f600": 1, "\ue000": 2}}, '{"a":{"\U0001f600":1,"\ue000":2},'
     '"b":[true,null,{"a":false}]}'.encode()),
]


@pytest.mark.parametrize("value, expected", TRICKY)
def test_independent_jcs_agrees_with_the_rfc_and_the_package(value: Any, expected: bytes) -> None:
    assert jcs(value) == expected
    assert rfc8785.dumps(value) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_independent_jcs_agrees_with_the_package_on_random_json(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:  # lone surrogates have no UTF-8 form; nothing to compare
        return
    assert jcs(value) == expected


def test_independent_merkle_root_agrees_with_the_verifier() -> None:
    from verifier.merkle import root_hash

    leaves = [bytes([i]) * i for i in range(20)]
    for n in range(len(leaves)):
        assert mth(leaves[:n]) == root_hash(leaves[:n])


# ----------------------------------------------------------------------------- bundles that sign samples

RECORDS = [
    {"task": "aa_demo_mc", "doc_id": i, "filter": "none", "doc_hash": hashlib.sha256(b"d%d" % i).hexdigest(),
     "prompt_hash": hashlib.sha256(b"p%d" % i).hexdigest(), "response": [[-2.5 + i / 3, False]],
     "metrics": {"acc": float(i % 2), "acc_norm": 1.0}} for i in range(5)
] + [
    {"task": "aa_demo_gen", "doc_id": 0, "filter": "none", "doc_hash": "00" * 32, "prompt_hash": "11" * 32,
     "response": "caf\u00e9 \U0001f600\n\u2028", "metrics": {"exact_match": 0.0, "bleu": ["ab" * 32, "x"]}},
]


def signed(tmp: Path, records: list[dict], name: str = "a") -> tuple[Made, Path, Path]:
    """A bundle whose signed statement carries the samples root of `records`, and the samples.jsonl
    `open-samples` would write for it (each line a leaf)."""
    leaves = [rfc8785.dumps(r) for r in records]
    root = mth(leaves).hex()

    def edit(payload: bytes) -> bytes:
        statement = json.loads(payload)
        statement["predicate"]["samples"].update(merkleRoot=root, count=len(records))
        return rfc8785.dumps(statement)

    made = make_bundle(edit_payload=edit)
    folder = tmp / name
    folder.mkdir()
    bundle = made.write(folder)
    samples = folder / "samples.jsonl"
    samples.write_bytes(b"".join(leaf + b"\n" for leaf in leaves))
    (folder / "policy.toml").write_text(made.policy_toml())
    return made, bundle, samples


def disclose(capsys: pytest.CaptureFixture[str], bundle: Path, samples: Path, index: int, out: Path) -> tuple[int, str]:
    rc = aaudit_main(["auditor", "disclose-sample", str(index), "--samples", str(samples), "--bundle", str(bundle),
                      "--out", str(out)])
    captured = capsys.readouterr()
    return rc, captured.err


def check(capsys: pytest.CaptureFixture[str], sample: Path, bundle: Path, *extra: str) -> tuple[int, dict]:
    policy = bundle.parent / "policy.toml"
    rc = verify_main(["sample", str(sample), "--bundle", str(bundle), "--policy", str(policy), "--allow-unpinned",
                      "--json", *extra])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def failed(result: dict) -> set[str]:
    return {s["step"] for s in result.get("steps", []) if s["result"] == "failed"}


@pytest.fixture
def case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    made, bundle, samples = signed(tmp_path, RECORDS)
    out = tmp_path / "sample.json"
    assert disclose(capsys, bundle, samples, 5, out) == (0, "")
    return {"tmp": tmp_path, "made": made, "bundle": bundle, "samples": samples, "sample": out,
            "disclosure": json.loads(out.read_text())}


def test_a_genuine_disclosure_verifies_and_shows_the_record(case: dict, capsys: pytest.CaptureFixture[str]) -> None:
    d = case["disclosure"]
    payload = base64.b64decode(json.loads(case["bundle"].read_text())["envelope"]["payload"])
    assert d["mediaType"] == "application/vnd.attestable-audits.sample.v1+json"
    assert (d["index"], d["treeSize"], d["record"]) == (5, 6, RECORDS[5])
    assert d["statementDigest"] == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert d["samplesRoot"] == mth([rfc8785.dumps(r) for r in RECORDS]).hex()
    rc, result = check(capsys, case["sample"], case["bundle"])
    assert rc == 0 and result["verified"], failed(result)
    steps = {s["step"] for s in result["steps"] if s["result"] == "ok"}
    assert {"report signature", "statement", "sample: statement", "sample: samples root", "sample: tree size",
            "sample: inclusion"} <= steps
    assert result["claims"]["sample"] == {"index": 5, "task": "aa_demo_gen", "doc_id": 0, "filter": "none",
                                          "metrics": RECORDS[5]["metrics"]}
    assert verify_main(["sample", str(case["sample"]), "--bundle", str(case["bundle"]), "--policy",
                        str(case["bundle"].parent / "policy.toml"), "--allow-unpinned"]) == 0
    table = capsys.readouterr().out
    assert "aa_demo_gen" in table and "exact_match" in table and table.splitlines()[-1].startswith("VERIFIED")


def test_every_index_of_every_small_tree_discloses_and_verifies(tmp_path: Path, capsys) -> None:
    from aaudit.samples import disclose_sample
    from verifier.models import Verdict
    from verifier.policy import parse
    from verifier.sample import verify_sample

    pol = parse({"allow_simulated": True}, "test")
    for n in (1, 2, 3, 4, 5, 7, 8, 9):
        made, bundle, samples = signed(tmp_path, [{"i": i, "x": i / 7} for i in range(n)], f"n{n}")
        leaves = samples.read_bytes().splitlines()
        for i in range(n):
            d = disclose_sample(leaves, made.bundle, i)
            v: Verdict = verify_sample(d.to_json(), made.bundle, pol, at=_now())
            assert v.verified and v.claims["sample"]["index"] == i, [f.reason for f in v.failures]


def _now():  # noqa: ANN202
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _rewrite(case: dict, change) -> Path:  # noqa: ANN001
    d = json.loads(json.dumps(case["disclosure"]))
    change(d)
    path = case["tmp"] / "tampered.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("field, value", [
    ("task", "aa_demo_mc"), ("doc_id", 1), ("filter", "strict"), ("doc_hash", "01" * 32), ("prompt_hash", "00" * 32),
    ("response", "cafe \U0001f600\n\u2028"), ("metrics", {"exact_match": 1.0, "bleu": ["ab" * 32, "x"]}),
    ("extra", True),
])
def test_a_tampered_record_fails_at_inclusion(case: dict, capsys, field: str, value: Any) -> None:
    rc, result = check(capsys, _rewrite(case, lambda d: d["record"].__setitem__(field, value)), case["bundle"])
    assert rc == 1 and not result["verified"] and failed(result) == {"sample: inclusion"}
    assert "sample" not in result["claims"]


def test_a_removed_field_fails_and_a_respelled_number_does_not(case: dict, capsys) -> None:
    rc, result = check(capsys, _rewrite(case, lambda d: d["record"].pop("filter")), case["bundle"])
    assert rc == 1 and failed(result) == {"sample: inclusion"}
    # 0 written as -0.0e5, keys in another order: the same RFC 8785 bytes, the same leaf
    d = case["disclosure"]
    text = json.dumps({**d, "record": dict(reversed(d["record"].items()))})
    assert '"exact_match": 0}' in text
    text = text.replace('"exact_match": 0}', '"exact_match": -0.0e5}')
    (case["tmp"] / "respelled.json").write_text(text)
    assert check(capsys, case["tmp"] / "respelled.json", case["bundle"])[0] == 0


def test_a_wrong_index_fails(case: dict, capsys) -> None:
    rc, result = check(capsys, _rewrite(case, lambda d: d.__setitem__("index", 4)), case["bundle"])
    assert rc == 1 and failed(result) == {"sample: inclusion"}


def test_another_records_proof_fails(case: dict, capsys: pytest.CaptureFixture[str]) -> None:
    other = case["tmp"] / "other.json"
    assert disclose(capsys, case["bundle"], case["samples"], 2, other)[0] == 0
    proof = json.loads(other.read_text())["inclusionProof"]
    rc, result = check(capsys, _rewrite(case, lambda d: d.__setitem__("inclusionProof", proof)), case["bundle"])
    assert rc == 1 and failed(result) == {"sample: inclusion"}


def test_a_disclosure_from_another_bundle_fails(case: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """Same records, another audit: the statement differs, so the disclosure names the wrong one."""
    _, bundle_b, samples_b = signed(case["tmp"], RECORDS, "b")
    from_b = case["tmp"] / "from_b.json"
    assert disclose(capsys, bundle_b, samples_b, 5, from_b)[0] == 0
    rc, result = check(capsys, from_b, case["bundle"])
    assert rc == 1 and failed(result) == {"sample: statement"}
    # and records of a third audit, whose root this bundle does not sign
    other_records = [{**r, "response": "other"} for r in RECORDS]
    _, bundle_c, samples_c = signed(case["tmp"], other_records, "c")
    from_c = case["tmp"] / "from_c.json"
    assert disclose(capsys, bundle_c, samples_c, 5, from_c)[0] == 0
    rc, result = check(capsys, from_c, case["bundle"])
    assert rc == 1 and failed(result) == {"sample: statement", "sample: samples root", "sample: inclusion"}


def test_a_samples_root_or_tree_size_that_is_not_the_signed_one_fails(case: dict, capsys) -> None:
    rc, result = check(capsys, _rewrite(case, lambda d: d.__setitem__("samplesRoot", "ab" * 32)), case["bundle"])
    assert rc == 1 and failed(result) == {"sample: samples root"}
    rc, result = check(capsys, _rewrite(case, lambda d: d.__setitem__("treeSize", 7)), case["bundle"])
    assert rc == 1 and "sample: tree size" in failed(result)


def test_a_bundle_that_fails_its_policy_fails_the_sample(case: dict, capsys) -> None:
    (case["bundle"].parent / "policy.toml").write_text(case["made"].policy_toml().replace(
        case["made"].digests["model"], "sha256:" + "0" * 64))
    rc, result = check(capsys, case["sample"], case["bundle"])
    assert rc == 1 and failed(result) == {"model digest"} and "sample" not in result["claims"]


def test_a_bundle_with_a_forged_signature_fails(case: dict, capsys) -> None:
    bundle = json.loads(case["bundle"].read_text())
    sig = bytearray(base64.b64decode(bundle["envelope"]["signatures"][0]["sig"]))
    sig[0] ^= 1
    bundle["envelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    case["bundle"].write_text(json.dumps(bundle))
    rc, result = check(capsys, case["sample"], case["bundle"])
    assert rc == 1 and "report signature" in failed(result)


@pytest.mark.parametrize("text", [
    b"", b"{", b"[]", b'"x"', b"{}", b'{"mediaType": "application/vnd.attestable-audits.bundle.v1+json"}',
    b'{"a": 1, "a": 2}', b"NaN", b"[" * 5000,
])
def test_malformed_disclosures_are_unusable_input(case: dict, capsys, text: bytes) -> None:
    path = case["tmp"] / "bad.json"
    path.write_bytes(text)
    _unusable(capsys, path, case["bundle"])


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("index", -1), lambda d: d.__setitem__("index", 6), lambda d: d.__setitem__("index", "5"),
    lambda d: d.__setitem__("index", True), lambda d: d.__setitem__("treeSize", 0),
    lambda d: d.__setitem__("inclusionProof", ["AAAA"]), lambda d: d.__setitem__("inclusionProof", ["%%"]),
    lambda d: d.__setitem__("inclusionProof", [d["inclusionProof"][0]] * 65),
    lambda d: d.__setitem__("inclusionProof", "AAAA"), lambda d: d.__setitem__("record", [1]),
    lambda d: d["record"].__setitem__("doc_id", 2**60), lambda d: d.__setitem__("samplesRoot", "AB" * 32),
    lambda d: d.__setitem__("statementDigest", "ab" * 32), lambda d: d.pop("record"),
    lambda d: d.__setitem__("unknown", 1), lambda d: d.__setitem__("mediaType", "x"),
])
def test_disclosures_with_wrong_fields_are_unusable_input(case: dict, capsys, change) -> None:  # noqa: ANN001
    _unusable(capsys, _rewrite(case, change), case["bundle"])


def _unusable(capsys: pytest.CaptureFixture[str], sample: Path, bundle: Path) -> None:
    policy = str(bundle.parent / "policy.toml")
    assert verify_main(["sample", str(sample), "--bundle", str(bundle), "--policy", policy]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aaudit-verify: unusable input: ") and len(err.strip().splitlines()) == 1, err
    assert verify_main(["sample", str(sample), "--bundle", str(bundle), "--policy", policy, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["unusable_input"] is True


def test_a_malformed_disclosure_prints_no_traceback_in_a_real_process(case: dict) -> None:
    bad = case["tmp"] / "bad.json"
    bad.write_text('{"mediaType": "application/vnd.attestable-audits.sample.v1+json", "index": "x"}')
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "sample", str(bad), "--bundle", str(case["bundle"]),
                           "--policy", str(case["bundle"].parent / "policy.toml")], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "index" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- the auditor's side


def test_disclose_refuses_samples_that_are_not_the_signed_leaves(case: dict, capsys) -> None:
    """A samples.jsonl re-written with spaces (as open-samples once did) is not the leaves."""
    spaced = case["tmp"] / "spaced.jsonl"
    spaced.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    rc, err = disclose(capsys, case["bundle"], spaced, 0, case["tmp"] / "x.json")
    assert rc == 1 and "open-samples" in err and not (case["tmp"] / "x.json").exists()
    lines = case["samples"].read_bytes().splitlines()
    case["samples"].write_bytes(b"\n".join(lines[:-1]) + b"\n")  # one record left out
    rc, err = disclose(capsys, case["bundle"], case["samples"], 0, case["tmp"] / "x.json")
    assert rc == 1 and "5 lines" in err


def test_disclose_refuses_an_index_out_of_range_and_a_forged_bundle(case: dict, capsys) -> None:
    rc, err = disclose(capsys, case["bundle"], case["samples"], 6, case["tmp"] / "x.json")
    assert rc == 2 and "0 to 5" in err
    bundle = json.loads(case["bundle"].read_text())
    bundle["envelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(64)).decode()
    case["bundle"].write_text(json.dumps(bundle))
    rc, err = disclose(capsys, case["bundle"], case["samples"], 0, case["tmp"] / "x.json")
    assert rc == 1 and "signature does not verify" in err
