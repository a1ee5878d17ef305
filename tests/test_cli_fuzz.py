"""No traceback, ever, from `aaudit`: every leaf subcommand on random and deeply nested inputs.

The parser tree (`aaudit.cli.build_parser`) is walked, so a new subcommand is fuzzed without
editing this file. Each argument gets inputs by what it names: files get random bytes, deeply
nested JSON and TOML (up to 50000 levels), a SQLite file that is not a log, folders, missing
paths; network options point at a closed port on 127.0.0.1; everything else gets random text.
Every run must end with exit 0, 1 or 2, and a refusal must be the one-line message of a handled
error: not a traceback and not the last-resort "internal error" handler in `aaudit.cli.main`.

Servers are never started: `enclave serve` and `log serve` only get a --listen that must be
refused up front (or input refused before it is used), and `demo --out` only a folder it must
refuse.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from aaudit.cli import build_parser, main
from tlog.log import SQLiteLog

REPO = Path(__file__).resolve().parents[1]
DEEP = 50_000
_NAMES = itertools.count()  # distinct file names within one example


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


LEAVES = dict(_leaves(build_parser()))


def _pem(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# Well-formed keys, so that runs get past key loading to the input after it.
_ED_KEY = ed25519.Ed25519PrivateKey.generate()
VALID_FILES = {
    "ed25519.key": _pem(_ED_KEY),
    "x25519.key": _pem(x25519.X25519PrivateKey.generate()),
    "ed25519.pub": _ED_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo),
    "policy.toml": b'allow_simulated = true\n[sim]\nmeasurements = ["' + b"ab" * 32 + b'"]\n',
}
# Arguments that get a well-formed file more often than garbage, by destination.
_MOSTLY_VALID = {"identity": "ed25519.key", "key": "x25519.key", "policy": "policy.toml", "provider": "ed25519.pub",
                 "auditor": "ed25519.pub", "expect_provider": "ed25519.pub", "expect_auditor": "ed25519.pub",
                 "other_pub": "ed25519.pub"}


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connections to it are refused at once, and no other
    process can take it while the tests run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# ----------------------------------------------------------------------------- input makers

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


def _json_value() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                     st.floats(allow_nan=False, allow_infinity=False), _text)
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
                        max_leaves=8)


# Keys the commands look for, so random objects reach past the first lookup.
_BUNDLE_KEYS = ("envelope", "enclave", "logEntry", "statement", "predicate", "samples", "size", "origin")


@st.composite
def file_content(draw: st.DrawFn) -> bytes:
    n = draw(st.sampled_from([10, 900, 1000, 5000, DEEP]))
    kind = draw(st.sampled_from(["bytes", "json-open", "json-deep", "json-obj-deep", "json-object", "json-weird",
                                 "toml-array", "toml-inline", "toml-header", "pem", "sqlite-junk", "pages", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    if kind == "json-open":
        return b"[" * n
    if kind == "json-deep":
        return b"[" * n + b"]" * n
    if kind == "json-obj-deep":
        return b'{"envelope":' * n + b"1" + b"}" * n
    if kind == "json-object":
        obj = draw(st.dictionaries(st.sampled_from(_BUNDLE_KEYS) | _text, _json_value(), max_size=6))
        return json.dumps(obj).encode()
    if kind == "json-weird":
        return draw(st.sampled_from([b'{"size": NaN}', b'{"size": Infinity}', b'{"a": 1e400}',
                                     b'{"a": ' + b"9" * 5000 + b"}", b'{"a": 1, "a": 2}', b'"\\ud800"',
                                     b'{"envelope": {"payload": "\\udfff"}}']))
    if kind == "toml-array":
        return b"a = " + b"[" * n + b"]" * n
    if kind == "toml-inline":
        return b"a = " + b"{b = " * n + b"1" + b"}" * n
    if kind == "toml-header":
        return b"[" * n
    if kind == "pem":
        body = draw(st.binary(max_size=200)).hex().encode()
        return b"-----BEGIN PRIVATE KEY-----\n" + body + b"\n-----END PRIVATE KEY-----\n"
    if kind == "pages":  # whole 4 KiB pages, as firmware images are
        size = 4096 * draw(st.integers(1, 4))
        return draw(st.binary(max_size=size)).ljust(size, b"\xff")
    if kind == "sqlite-junk":
        return b"SQLite format 3\x00" + draw(st.binary(max_size=2000))
    return b""


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@st.composite
def input_path(draw: st.DrawFn, tmp: Path) -> str:
    """A file or folder argument that is read: garbage of every shape, or nothing at all."""
    name = f"in{next(_NAMES)}"
    what = draw(st.sampled_from(["file", "file", "file", "valid", "valid", "dir-of-garbage", "empty-dir", "missing",
                                 "sqlite-other"]))
    mode = draw(st.sampled_from([0o600, 0o644]))
    if what == "valid":
        return str(_write(tmp / name, VALID_FILES[draw(st.sampled_from(sorted(VALID_FILES)))], 0o600))
    if what == "file":
        return str(_write(tmp / name, draw(file_content()), mode))
    if what == "dir-of-garbage":
        folder = tmp / name
        folder.mkdir()
        for member in draw(st.lists(st.sampled_from(["model.json", "dataset.json", "spec.json", "model.sealed",
                                                     "model.key", "x"]), max_size=4, unique=True)):
            _write(folder / member, draw(file_content()), mode)
        return str(folder)
    if what == "empty-dir":
        (tmp / name).mkdir()
        return str(tmp / name)
    if what == "sqlite-other":
        db = sqlite3.connect(tmp / name)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        return str(tmp / name)
    return str(tmp / name / "missing")


def valid_file(tmp: Path, name: str) -> st.SearchStrategy[str]:
    return st.just(name).map(lambda n: str(_write(tmp / f"{next(_NAMES)}{n}", VALID_FILES[n], 0o600)))


@st.composite
def db_path(draw: st.DrawFn, tmp: Path) -> str:
    """A log database: garbage, a folder, a SQLite file that is no log, with or without a key beside it,
    or a real log with one byte changed."""
    if draw(st.booleans()):
        path = tmp / f"log{next(_NAMES)}.db"
        SQLiteLog(path, origin="example.com/fuzz").close()
        data = bytearray(path.read_bytes())
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(0, 255))
        path.write_bytes(bytes(data))
        return str(path)
    path = draw(input_path(tmp))
    if draw(st.booleans()) and not path.endswith("missing"):
        _write(Path(path + ".key"), draw(st.sampled_from([b"", b"PRIVATE+KEY+x+00+AA==\n", b"\xff" * 40])
                                         | file_content()), draw(st.sampled_from([0o600, 0o644])))
    return path


@st.composite
def output_path(draw: st.DrawFn, tmp: Path) -> str:
    name = f"out{next(_NAMES)}"
    what = draw(st.sampled_from(["fresh", "existing-file", "full-dir", "under-a-file"]))
    if what == "fresh":
        return str(tmp / name)
    if what == "existing-file":
        return str(_write(tmp / name, b"x", 0o644))
    if what == "full-dir":
        (tmp / name).mkdir()
        (tmp / name / "precious.txt").write_text("not yours")
        return str(tmp / name)
    _write(tmp / name, b"x", 0o644)
    return str(tmp / name / "sub")


@st.composite
def demo_out(draw: st.DrawFn, tmp: Path) -> str:
    """Only folders `aaudit demo` must refuse: running the demo is not a fuzz case."""
    name = f"demo{next(_NAMES)}"
    what = draw(st.sampled_from(["existing-file", "full-dir", "under-a-file"]))
    if what == "full-dir":
        (tmp / name).mkdir()
        (tmp / name / "precious.txt").write_text("not yours")
        return str(tmp / name)
    _write(tmp / name, draw(file_content()), 0o644)
    return str(tmp / name) if what == "existing-file" else str(tmp / name / "sub")


def refused_listen() -> st.SearchStrategy:
    """Listen addresses that must be refused before anything listens."""
    return st.sampled_from(["bogus", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:x", "", ":",
                            "[::1", "127.0.0.1:0x10", "127.0.0.1: 80", "127.0.0.1:1e3"]) \
        | _text.filter(lambda s: ":" not in s)


def remote(port: int) -> st.SearchStrategy:
    """A server address where nothing answers (or that is no address at all)."""
    return st.sampled_from([f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1:99999", "127.0.0.1:x", ""]) \
        | _text.map(lambda s: f"127.0.0.1:{port}{s}")


_HEXISH = st.sampled_from(["a1" * 48, "0x" + "b2" * 48, "sha256:" + "c3" * 32, "sha256:", "zz" * 48]) | _text
_NUMBER = st.one_of(st.integers(-2, 70).map(str), st.integers(-(1 << 70), 1 << 70).map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "-0", "9" * 5000]), _text)


@st.composite
def argv_for(draw: st.DrawFn, command: tuple[str, ...], tmp: Path, port: int) -> list[str]:
    parser = LEAVES[command]
    argv = list(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.required and action.nargs != "?" and not draw(st.booleans()):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(action.option_strings[0])
            continue
        value = draw(_value(command, action, tmp, port))
        if action.option_strings:
            argv += [action.option_strings[0], value]
        elif action.nargs == "?" and not draw(st.booleans()):
            continue
        else:
            argv.append(value)
    for option, value in _ALWAYS.get(command, {}).items():
        if option not in argv:
            argv += [option, draw(value(tmp))]
    return argv


# Options whose default would start a real server or the real demo.
_ALWAYS = {("enclave", "serve"): {"--listen": lambda tmp: refused_listen()},
           ("log", "serve"): {"--listen": lambda tmp: refused_listen()},
           ("demo",): {"--out": demo_out}}


_OUTPUTS = {"out", "port_file", "workdir"}
_INPUTS_BY_NAME = {"bundle", "witness_state", "from_json", "samples", "sealed", "path", "root"}


def _value(command: tuple[str, ...], action: argparse.Action, tmp: Path, port: int) -> st.SearchStrategy:
    dest = action.dest
    if command == ("demo",) and dest == "out":
        return demo_out(tmp)
    if dest == "listen":
        return refused_listen()
    if dest in ("enclave", "log"):
        return remote(port)
    if dest == "db":
        return db_path(tmp)
    if dest in _OUTPUTS:
        return output_path(tmp)
    if dest in _MOSTLY_VALID and (action.type is Path or action.type is None):
        return st.one_of(*[valid_file(tmp, _MOSTLY_VALID[dest])] * 2, input_path(tmp))
    if action.choices:  # mostly valid, so that runs get past the parser
        return st.one_of(*[st.sampled_from(sorted(action.choices))] * 3, _text)
    if dest in _INPUTS_BY_NAME or action.type is Path:
        return input_path(tmp)
    if action.type in (int, float) or getattr(action.type, "__name__", "") == "<lambda>":
        return _NUMBER
    return _HEXISH


# ----------------------------------------------------------------------------- running

def run_aaudit(argv: list[str]) -> tuple[int, str]:
    """`aaudit ARGV` in this process: (exit code, stderr). Standard streams have real byte
    buffers, since some commands write bytes."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
    err.flush()
    return rc, err.buffer.getvalue().decode("utf-8", "replace")


def check_refusal(argv: list[str], rc: int, err: str) -> None:
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 1, 2), (argv, rc, err)
    if rc and not err.startswith("usage:"):
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith("aaudit "), (argv, err)
        assert "internal error" not in last, (argv, err)


FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("command", sorted(LEAVES), ids=" ".join)
@FUZZ
@given(data=st.data())
def test_every_subcommand_refuses_garbage_without_a_traceback(command, closed_port, data):
    with tempfile.TemporaryDirectory() as tmp:
        argv = data.draw(argv_for(command, Path(tmp), closed_port), label="argv")
        cwd = os.getcwd()
        os.chdir(tmp)  # a relative default path lands in the scratch folder
        try:
            rc, err = run_aaudit(argv)
        finally:
            os.chdir(cwd)
        check_refusal(argv, rc, err)
        if command == ("demo",):
            assert rc == 2 and "precious.txt" not in err
            for p in Path(tmp).rglob("precious.txt"):
                assert p.read_text() == "not yours"


def test_the_walk_reaches_every_command():
    """The fuzz covers what `aaudit --help` lists; a group that failed to import would vanish."""
    assert {c[0] for c in LEAVES} >= {"seal", "digest", "keygen", "enclave", "provider", "auditor", "manifest",
                                      "demo", "log"}
    assert {("log", c) for c in ("serve", "publish", "get", "checkpoint", "prove", "audit")} <= LEAVES.keys()
    assert {("auditor", "open-samples"), ("auditor", "disclose-sample")} <= LEAVES.keys()


# ----------------------------------------------------------------------------- known cases

def test_the_last_resort_handler_names_the_type_and_never_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug's message could quote a secret (a key, a path, plaintext): only its type is shown."""
    def bug(args: argparse.Namespace) -> int:
        raise RuntimeError("secret-key-material-0123")

    monkeypatch.setattr("aaudit.cmd_assets._digest", bug)
    rc, err = run_aaudit(["digest", "."])
    assert rc == 1 and err == "aaudit digest: internal error: RuntimeError; please report\n"


def test_messages_quoted_from_elsewhere_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from verifier.errors import VerificationError

    def fails(args: argparse.Namespace) -> int:
        raise VerificationError("the server said:\n  first\n  second")

    monkeypatch.setattr("aaudit.cmd_assets._digest", fails)
    assert run_aaudit(["digest", "."]) == (1, "aaudit digest: the server said: first second\n")


def test_a_deeply_nested_bundle_prints_no_traceback_in_a_real_process(tmp_path):
    """The same as the fuzz, through the installed entry point and a fresh interpreter."""
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(b"[" * DEEP)
    key = tmp_path / "k"
    key.write_bytes(b"junk")
    key.chmod(0o600)
    cases = [["log", "publish", str(bundle), "--log", "127.0.0.1:1"],
             ["auditor", "open-samples", str(bundle), "--bundle", str(bundle), "--key", str(key),
              "--out", str(tmp_path / "o")]]
    for argv in cases:
        proc = subprocess.run([sys.executable, "-m", "aaudit.cli", *argv], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_deeply_nested_sealed_description_is_unusable_input(tmp_path: Path) -> None:
    """Found by the fuzz above: SealedAsset.load let json's RecursionError out; it reads the
    description with the verifier's strict loader now."""
    (tmp_path / "sealed").mkdir()
    (tmp_path / "sealed" / "model.json").write_bytes(b'{"a":' * DEEP)
    identity = _write(tmp_path / "provider.key", VALID_FILES["ed25519.key"], 0o600)
    policy = _write(tmp_path / "policy.toml", VALID_FILES["policy.toml"], 0o600)
    argv = ["provider", "upload", str(tmp_path / "sealed"), "--session", "4D", "--enclave", "127.0.0.1:1",
            "--policy", str(policy), "--identity", str(identity)]
    rc, err = run_aaudit(argv)
    check_refusal(argv, rc, err)
    assert rc == 2


# ----------------------------------------------------------------------------- open-samples

@pytest.fixture
def samples_case(tmp_path: Path) -> dict:
    """A real samples delivery, signed into a bundle: records, their Merkle root, HPKE-encrypted to a
    fresh samples key for the bundle's enclave key. `bundle(change)` re-signs with the samples
    section changed by `change` (which may return None: no samples section at all)."""
    import base64
    import hashlib

    from sealing.identity import generate_samples_key
    from sealing.keywrap import DEFAULT_SUITE, seal_to
    from tests.bundle_factory import make_bundle
    from verifier.binding import samples_info
    from verifier.merkle import root_hash
    from verifier.models import canonical_json

    public_b64, key_path, _ = generate_samples_key(tmp_path / "keys")
    records = [{"doc": i, "pred": "x"} for i in range(3)]
    root = root_hash([canonical_json(r) for r in records]).hex()
    enc = tmp_path / "bundle.samples.enc"

    def bundle(change=lambda s: s, ciphertext: bytes | None = None) -> dict:  # noqa: ANN001
        def edit(payload: bytes) -> bytes:
            statement = json.loads(payload)
            signing_pub = base64.b64decode(statement["predicate"]["manifest"]["enclave"]["signingKey"])
            data = ciphertext if ciphertext is not None else seal_to(
                b"".join(canonical_json(r) + b"\n" for r in records), base64.b64decode(public_b64), DEFAULT_SUITE,
                samples_info(root, signing_pub))
            enc.write_bytes(data)
            samples = {"merkleRoot": root, "count": 3, "hashing": "RFC9162-SHA256", "record": "canonical JSON",
                       "delivery": {"recipient": public_b64, "suite": DEFAULT_SUITE,
                                    "ciphertextSha256": hashlib.sha256(data).hexdigest()}}
            changed = change(samples)
            if changed is None:
                del statement["predicate"]["samples"]
            else:
                statement["predicate"]["samples"] = changed
            return canonical_json(statement)

        return make_bundle(edit_payload=edit).bundle

    return {"tmp": tmp_path, "key": key_path, "enc": enc, "bundle": bundle}


def _open(case: dict, bundle: object) -> tuple[int, str]:
    path = case["tmp"] / "bundle.json"
    path.write_text(json.dumps(bundle))
    out = case["tmp"] / f"samples{next(_NAMES)}.jsonl"
    argv = ["auditor", "open-samples", str(case["enc"]), "--bundle", str(path), "--key", str(case["key"]),
            "--out", str(out)]
    rc, err = run_aaudit(argv)
    check_refusal(argv, rc, err)
    assert (rc == 0) == out.exists()
    return rc, err


def test_open_samples_opens_a_real_delivery(samples_case: dict) -> None:
    assert _open(samples_case, samples_case["bundle"]()) == (0, "")


@pytest.mark.parametrize("change, code", [
    (lambda s: {k: v for k, v in s.items() if k != "merkleRoot"}, 2),   # the security review's case
    (lambda s: {**s, "merkleRoot": "\u00e9" * 64}, 2),
    (lambda s: {**s, "merkleRoot": "zz" * 32}, 2),
    (lambda s: {**s, "merkleRoot": 7}, 2),
    (lambda s: {**s, "count": "3"}, 2),
    (lambda s: {**s, "count": 4}, 1),
    (lambda s: None, 2),                                                 # no samples section
    (lambda s: [s], 2),                                                  # not an object
    (lambda s: "samples", 2),
    (lambda s: {**s, "delivery": None}, 1),                              # output = aggregate
    (lambda s: {**s, "delivery": {**s["delivery"], "ciphertextSha256": "00"}}, 1),
])
def test_open_samples_on_a_statement_that_says_otherwise(samples_case: dict, change, code: int) -> None:  # noqa: ANN001
    assert _open(samples_case, samples_case["bundle"](change))[0] == code


@pytest.mark.parametrize("bundle", [[], "x", None, {}, {"envelope": {}}, {"enclave": []},
                                    {"enclave": {"signingKey": {"public": "AAAA"}}, "envelope": {}},
                                    {"enclave": {"signingKey": {"public": 5}}, "envelope": None}])
def test_open_samples_on_garbage_bundles(samples_case: dict, bundle: object) -> None:
    assert _open(samples_case, bundle)[0] == 2


def test_open_samples_with_a_short_signing_key(samples_case: dict) -> None:
    bundle = samples_case["bundle"]()
    bundle["enclave"]["signingKey"]["public"] = "AAAA"
    assert _open(samples_case, bundle)[0] == 2


@pytest.mark.parametrize("ciphertext", [b"", b"\x00" * 10, bytes(range(256)) * 2])
def test_open_samples_on_garbage_ciphertext(samples_case: dict, ciphertext: bytes) -> None:
    """The signed statement names this garbage (its hash), so decryption itself must refuse it."""
    rc, err = _open(samples_case, samples_case["bundle"](ciphertext=ciphertext))
    assert rc == 2 and "cannot decrypt" in err, err
