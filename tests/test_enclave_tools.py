"""`aaudit enclave measure` and `aaudit enclave reference-values`.

SEV-SNP launch digests are computed by sev-snp-measure. No real OVMF can be fetched offline, so
the SNP tests build a small synthetic firmware image laid out as OVMF's reset vector lays it out
(GUIDed footer table, SEV-ES reset block, SEV metadata with its SNP sections, SEV hashes table)
and check that our command computes what the `sev-snp-measure` tool itself prints for the same
inputs. The TDX and Nitro paths take values from real tool output formats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaudit.cli import main as aaudit_main
from aaudit.cmd_enclave_tools import register_tools
from enclave import measure
from verifier.errors import UnusableInput

H1, H2, H3, H4 = ("a1" * 48, "b2" * 48, "c3" * 48, "d4" * 48)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aaudit enclave")
    register_tools(parser.add_subparsers(dest="tool", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------------- measure

def test_measure_prints_the_code_identity(capsys):
    assert run(["measure"]) == 0
    assert capsys.readouterr().out.strip() == measure.code_identity()


def test_measure_json_and_root(tmp_path, capsys):
    (tmp_path / "enclave").mkdir()
    (tmp_path / "enclave" / "x.py").write_bytes(b"print(1)\n")
    (tmp_path / "enclave" / "notes.txt").write_bytes(b"not code")
    (tmp_path / "requirements.lock").write_bytes(b"torch==2.13.0 --hash=sha256:00\n")
    listing = [
        {"path": "enclave/x.py", "sha256": hashlib.sha256(b"print(1)\n").hexdigest(), "size": 9},
        {"path": "requirements.lock", "sha256": hashlib.sha256(b"torch==2.13.0 --hash=sha256:00\n").hexdigest(),
         "size": 31},
    ]
    expected = hashlib.sha256(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert run(["measure", "--root", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"code_identity": expected, "root": str(tmp_path), "files": 2, "lock_files": ["requirements.lock"]}
    (tmp_path / "requirements-gpu.lock").write_bytes(b"x\n")
    run(["measure", "--root", str(tmp_path)])
    assert capsys.readouterr().out.strip() != expected, "the GPU lock file is part of the identity"


def test_measure_bad_root(tmp_path):
    with pytest.raises(UnusableInput, match="not a directory"):
        run(["measure", "--root", str(tmp_path / "absent")])
    with pytest.raises(UnusableInput, match="no project files found"):
        run(["measure", "--root", str(tmp_path)])


# --------------------------------------------------------------------------------- tdx / nitro

def load_policy(path: Path, platform: str):
    from verifier.policy import load

    policy = load(path)
    assert policy.accepts(platform)
    return policy


def test_tdx_from_values(tmp_path):
    out = tmp_path / "tdx.toml"
    assert run(["reference-values", "--platform", "tdx", "--mrtd", H1, "--rtmr0", "0x" + H2.upper(),
                "--rtmr1", H3, "--out", str(out)]) == 0
    table = tomllib.loads(out.read_text())["tdx"]
    assert table == {"mrtd": [H1], "rtmr0": [H2], "rtmr1": [H3]}
    load_policy(out, "tdx")


def test_tdx_from_measurement_tool_json(tmp_path):
    src = tmp_path / "mr.json"
    src.write_text(json.dumps({"mrtd": H1, "rtmr0": H2, "rtmr1": H3, "rtmr2": H4, "mr_aggregated": "ff" * 32}))
    out = tmp_path / "tdx.toml"
    run(["reference-values", "--platform", "tdx", "--from-json", str(src), "--out", str(out)])
    text = out.read_text()
    assert tomllib.loads(text)["tdx"] == {"mrtd": [H1], "rtmr0": [H2], "rtmr1": [H3], "rtmr2": [H4]}
    assert hashlib.sha256(src.read_bytes()).hexdigest() in text, "the fragment says where its values came from"
    load_policy(out, "tdx")
    with pytest.raises(UnusableInput, match="mrtd given both on the command line and in"):
        run(["reference-values", "--platform", "tdx", "--from-json", str(src), "--mrtd", H1])


NITRO_BUILD_OUTPUT = {  # the shape `nitro-cli build-enclave` prints
    "Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": H1, "PCR1": H2, "PCR2": H3},
}


def test_nitro_from_build_enclave_output(tmp_path, capsys):
    src = tmp_path / "build.json"
    src.write_text(json.dumps(NITRO_BUILD_OUTPUT))
    assert run(["reference-values", "--platform", "nitro", "--from-json", str(src)]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text)["nitro"] == {"pcr0": [H1], "pcr1": [H2], "pcr2": [H3]}
    out = tmp_path / "nitro.toml"
    out.write_text(text)
    load_policy(out, "nitro")


@pytest.mark.parametrize("argv, message", [
    (["--platform", "nitro", "--pcr0", H1, "--pcr1", H2], "missing pcr2"),
    (["--platform", "nitro", "--pcr0", H1[:-2], "--pcr1", H2, "--pcr2", H3], "expected 96 hex digits"),
    (["--platform", "nitro", "--pcr0", H1, "--pcr1", H2, "--pcr2", H3, "--mrtd", H1], "--mrtd do"),
    (["--platform", "tdx", "--rtmr0", H1], "tdx needs at least MRTD"),
    (["--platform", "tdx", "--mrtd", H1, "--ovmf", "x.fd"], "--ovmf do.*not apply to --platform tdx"),
    (["--platform", "sev-snp", "--measurement", H1, "--vcpus", "2"], "either --measurement or the inputs"),
    (["--platform", "sev-snp", "--vcpus", "2"], "sev-snp needs --ovmf and --vcpus"),
])
def test_reference_values_refuses_bad_arguments(argv, message):
    with pytest.raises(UnusableInput, match=message):
        run(["reference-values", *argv])


def test_nitro_json_with_other_hash_algorithm(tmp_path):
    src = tmp_path / "build.json"
    src.write_text(json.dumps({"Measurements": {**NITRO_BUILD_OUTPUT["Measurements"], "HashAlgorithm": "Sha256"}}))
    with pytest.raises(UnusableInput, match="is not SHA-384"):
        run(["reference-values", "--platform", "nitro", "--from-json", str(src)])
    src.write_text("[]")
    with pytest.raises(UnusableInput, match='no "Measurements" object'):
        run(["reference-values", "--platform", "nitro", "--from-json", str(src)])


# --------------------------------------------------------------------------------- sev-snp

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
SEV_HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEV_ES_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"


def synthetic_ovmf(path: Path, with_kernel_hashes: bool = True) -> Path:
    """A 64 KiB firmware image with the OVMF GUIDed footer table and SEV metadata (edk2 OvmfPkg layout)."""
    size = 0x10000
    image = bytearray(size)
    image[:16] = b"synthetic OVMF\x00\x00"
    sections = [(0x800000, 0x9000, 1), (0x809000, 0x1000, 2), (0x80A000, 0x1000, 3)]  # SEC_MEM, SECRETS, CPUID
    if with_kernel_hashes:
        sections.append((0x80B000, 0x1000, 0x10))  # SNP_KERNEL_HASHES
    meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    meta_at = 0x1000
    image[meta_at:meta_at + len(meta)] = meta

    def entry(guid: str, payload: bytes) -> bytes:  # payload, then u16 size and the GUID (little-endian form)
        return payload + struct.pack("<H", len(payload) + 18) + uuid.UUID(guid).bytes_le

    table = entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", 0xFFFFE000))
    table += entry(SEV_METADATA_GUID, struct.pack("<I", size - meta_at))
    if with_kernel_hashes:
        table += entry(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", 0x80BC00, 0x400))
    table += struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    end = size - 32
    image[end - len(table):end] = table
    path.write_bytes(bytes(image))
    return path


def reference_tool(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sevsnpmeasure.cli", "--mode", "snp", *argv],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_snp_measurement_matches_sev_snp_measure(tmp_path):
    ovmf = synthetic_ovmf(tmp_path / "OVMF.fd")
    out = tmp_path / "snp.toml"
    run(["reference-values", "--platform", "sev-snp", "--ovmf", str(ovmf), "--vcpus", "4",
         "--vcpu-type", "EPYC-Milan", "--out", str(out)])
    want = reference_tool("--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--ovmf", str(ovmf))
    text = out.read_text()
    assert tomllib.loads(text)["sev-snp"] == {"measurements": [want]}
    assert hashlib.sha256(ovmf.read_bytes()).hexdigest() in text
    load_policy(out, "sev-snp")


def test_snp_measurement_with_direct_boot(tmp_path):
    ovmf = synthetic_ovmf(tmp_path / "OVMF.fd")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel image " * 1000)
    initrd.write_bytes(b"initrd " * 500)
    common = ["--vcpus", "2", "--vcpu-type", "EPYC-Genoa", "--ovmf", str(ovmf), "--kernel", str(kernel),
              "--initrd", str(initrd)]

    def ours(append: str) -> str:
        out = tmp_path / "snp.toml"
        run(["reference-values", "--platform", "sev-snp", *common, "--append", append, "--out", str(out)])
        return tomllib.loads(out.read_text())["sev-snp"]["measurements"][0]

    a = ours("console=ttyS0 aaudit.mode=enclave")
    assert a == reference_tool(*common, "--append", "console=ttyS0 aaudit.mode=enclave")
    assert ours("console=ttyS0 aaudit.mode=debug") != a, "the kernel command line is measured"


def test_snp_errors(tmp_path):
    ovmf = synthetic_ovmf(tmp_path / "OVMF.fd", with_kernel_hashes=False)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    with pytest.raises(UnusableInput, match="sev-snp-measure cannot measure .*SNP_KERNEL_HASHES"):
        run(["reference-values", "--platform", "sev-snp", "--ovmf", str(ovmf), "--vcpus", "1",
             "--vcpu-type", "EPYC-v4", "--kernel", str(kernel)])
    with pytest.raises(UnusableInput, match="--vcpu-type 'EPYC-Nope'"):
        run(["reference-values", "--platform", "sev-snp", "--ovmf", str(ovmf), "--vcpus", "1",
             "--vcpu-type", "EPYC-Nope"])
    with pytest.raises(UnusableInput, match="needs --vcpu-type or --vcpu-sig"):
        run(["reference-values", "--platform", "sev-snp", "--ovmf", str(ovmf), "--vcpus", "1"])
    with pytest.raises(UnusableInput, match="cannot read .*absent.fd"):
        run(["reference-values", "--platform", "sev-snp", "--ovmf", str(tmp_path / "absent.fd"), "--vcpus", "1",
             "--vcpu-type", "EPYC-v4"])


def _snp_reference(ovmf: Path, *extra: str) -> int:
    return aaudit_main(["enclave", "reference-values", "--platform", "sev-snp", "--ovmf", str(ovmf), "--vcpus", "1",
                        "--vcpu-type", "EPYC-v4", *extra])


def _with_metadata_section(image: bytes, index: int, gpa: int, size: int, kind: int) -> bytes:
    """The synthetic image with metadata section `index` replaced (the metadata sits at 0x1000)."""
    at = 0x1000 + 16 + 12 * index
    return image[:at] + struct.pack("<III", gpa, size, kind) + image[at + 12:]


@pytest.mark.parametrize("make, message", [
    (lambda ovmf: b"not firmware\n" * 400, r"5200 bytes, not a whole number of 4 KiB pages"),
    (lambda ovmf: ovmf + b"\0" * 100, r"65636 bytes, not a whole number of 4 KiB pages"),
    (lambda ovmf: _with_metadata_section(ovmf, 0, 0x800000, 0x9001, 1),
     r"a consistency check \(AssertionError\) failed"),  # a section that is not whole pages
    (lambda ovmf: _with_metadata_section(ovmf, 1, 0x809000, 0x1000, 7), r"7 is not a valid SectionType"),
    (lambda ovmf: ovmf[:0x1000] + b"XSEV" + ovmf[0x1004:], r"Wrong SEV metadata signature"),
])
def test_snp_reference_values_of_a_non_ovmf_file_are_unusable_input(tmp_path, capsys, make, message):
    ovmf = synthetic_ovmf(tmp_path / "OVMF.fd")
    bad = tmp_path / "bad.fd"
    bad.write_bytes(make(ovmf.read_bytes()))
    assert _snp_reference(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aaudit enclave: sev-snp-measure cannot measure {bad}: ") or "--ovmf" in err
    assert re.search(message, err), err
    assert "Traceback" not in err


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["flip", "cut", "grow"]), st.integers(0, 1 << 16), st.integers(1, 255), st.booleans())
def test_snp_reference_values_of_a_damaged_ovmf_never_crash(tmp_path, capsys, how, at, xor, direct_boot):
    """Any damage to the image gives a measurement or exit 2; the flips go where sev-snp-measure
    parses (SEV metadata at 0x1000, footer table at the end)."""
    image = bytearray(synthetic_ovmf(tmp_path / "OVMF.fd").read_bytes())
    if how == "flip":
        offset = 0x1000 + at % 64 if at & 1 else len(image) - 32 - 1 - at % 128
        image[offset] ^= xor
    elif how == "cut":
        image = image[at % len(image):]
    else:
        image += bytes(at % 5000 + 1)
    (tmp_path / "m.fd").write_bytes(bytes(image))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    rc = _snp_reference(tmp_path / "m.fd", *(["--kernel", str(kernel)] if direct_boot else []))
    out, err = capsys.readouterr()
    assert rc in (0, 2) and "Traceback" not in err
    assert (rc == 0) == ("measurements = [" in out)


def test_snp_given_measurement(tmp_path):
    out = tmp_path / "snp.toml"
    run(["reference-values", "--platform", "sev-snp", "--measurement", H4, "--out", str(out)])
    assert tomllib.loads(out.read_text()) == {"sev-snp": {"measurements": [H4]}}
    load_policy(out, "sev-snp")
