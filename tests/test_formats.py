"""One model per wire format: a field added to the run manifest's model alone reaches the enclave's
manifest, the parties' check and the verifier's parse, with no other file changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verifier import wire
from verifier.errors import ParseError
from verifier.manifest import RunManifest

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from benchmarks.demo_assets import demo_spec_toml
    from enclave.keys import BootKeys
    from enclave.session import Sessions
    from sealing.identity import Identity
    from verifier.binding import create_message, join_message
    from verifier.manifest import RunManifest

    keys = BootKeys.generate()
    work = Path(sys.argv[1])
    sessions = Sessions(keys, "sim", "00" * 32, work)
    p, a = (Identity(ed25519.Ed25519PrivateKey.generate()) for _ in range(2))
    nonce = os.urandom(32)
    sessions.note_attestation(nonce)
    s = sessions.create(nonce, p.public_raw(), a.public_raw(), "auditor",
                        a.sign(create_message(keys.signing_public, nonce, p.public_raw(), a.public_raw())))
    manifest, _, _, _ = sessions.manifest(s.id)                   # built by the enclave
    wire_json = json.loads(manifest.canonical())
    parsed = RunManifest.from_json(wire_json)                     # parsed as the client and verifier do
    print(json.dumps({"enclave": wire_json.get("auditWindow"), "parsed": parsed.audit_window,
                      "digest_covers_it": manifest.digest() != RunManifest.from_json(
                          {**wire_json, "auditWindow": "other"}).digest()}))
''')


def test_a_new_manifest_field_is_a_one_file_change(tmp_path: Path) -> None:
    for package in ("verifier", "enclave", "benchmarks", "sealing", "protos"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    model = tmp_path / "verifier" / "manifest.py"
    source = model.read_text()
    anchor = "    version: int = MANIFEST_VERSION\n"
    assert anchor in source
    model.write_text(source.replace(anchor, anchor + '    audit_window: str = "2026-Q4"\n'))
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "work")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"enclave": "2026-Q4", "parsed": "2026-Q4", "digest_covers_it": true}'


def test_manifest_parse_is_strict() -> None:
    """Unknown fields, missing fields, wrong types and booleans for numbers are refused with a path."""
    from dataclasses import replace

    from verifier.manifest import EnclaveRef, Parties, SessionRef

    good = RunManifest(SessionRef("ab" * 16, b"n" * 32, 1), EnclaveRef("sim", "00" * 32, b"k" * 32),
                       Parties(b"p" * 32, b"a" * 32), {})
    obj = good.to_json()
    assert RunManifest.from_json(obj) == good
    for broken, message in (({**obj, "extra": 1}, "unknown field"),
                            ({k: v for k, v in obj.items() if k != "parties"}, "manifest.parties is missing"),
                            ({**obj, "session": {**obj["session"], "job": True}}, "manifest.session.job: expected int"),
                            ({**obj, "assets": {"weights": {"digest": "x", "bytes": 1}}}, "unknown asset kind"),
                            ({**obj, "version": 1}, "version is 1"),
                            ({**obj, "output": "everything"}, "is not one of")):
        with pytest.raises(ParseError, match=message):
            RunManifest.from_json(broken)
    assert replace(good, output="aggregate").digest() != good.digest()


def test_wire_names_are_camel_case_unless_given() -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Rec:
        code_identity: str
        kind: str = field(default="x", metadata={"json": "_kind"})

    assert wire.to_json(Rec("c")) == {"codeIdentity": "c", "_kind": "x"}
    assert wire.from_json(Rec, {"codeIdentity": "c", "_kind": "y"}, "rec") == Rec("c", "y")
