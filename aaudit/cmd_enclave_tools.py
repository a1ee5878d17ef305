"""`aaudit enclave measure` and `aaudit enclave reference-values`: what a verifier should pin.

`measure` prints the code identity of a project tree (enclave/measure.py), the value every
statement carries as the code that ran. `reference-values` writes a policy fragment with the
launch measurements of a deployment, which a verifier's policy file includes as its platform table:

    sev-snp  measurements = [launch digest]   computed with sev-snp-measure from OVMF, kernel,
                                              initrd, command line, vCPU count and type (or given)
    tdx      mrtd / rtmr0..rtmr3 = [...]      given, or read from a measurement tool's JSON output
                                              (e.g. dstack-mr -json); no maintained PyPI tool
                                              computes them
    nitro    pcr0 / pcr1 / pcr2 (/ pcr8)      read from `nitro-cli build-enclave` / `describe-eif`
                                              JSON output (its "Measurements" object), or given

The lead's aaudit/cmd_enclave.py creates the `enclave` group and calls `register_tools`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from verifier.errors import UnusableInput

_PAGE = 4096
# What sev-snp-measure raises for a firmware image it cannot lay out: its own RuntimeErrors, bare
# asserts on page sizes, and whatever ctypes, enum and int conversions raise on damaged tables.
_MEASURE_ERRORS = (AssertionError, RuntimeError, ValueError, KeyError, IndexError, OverflowError, OSError)
TDX_REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
NITRO_PCRS = ("pcr0", "pcr1", "pcr2", "pcr8")
_SNP_COMPUTE = ("ovmf", "kernel", "initrd", "append", "vcpus", "vcpu_type", "vcpu_sig")
_FLAGS = {  # options without a default, by the platform they belong to
    "sev-snp": {"measurement", *_SNP_COMPUTE},
    "tdx": {*TDX_REGISTERS, "from_json"},
    "nitro": {*NITRO_PCRS, "from_json"},
}


def register_tools(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("measure", help="print the code identity of the project tree (what statements carry)",
                       description="Print the code identity: SHA-256 of the canonical manifest of the project's code "
                       "files and lock files. Every statement carries it; pin it in policies ([expect] code_identity, "
                       "or [sim] measurements for the simulator) next to the image's launch measurement.")
    m.add_argument("--root", type=Path, default=None, help="project tree to measure (default: this installation)")
    m.add_argument("--json", action="store_true", help="print JSON: code identity, root, file count, lock files")
    m.set_defaults(func=cmd_measure)

    r = sub.add_parser("reference-values", help="write a policy fragment with a deployment's launch measurements",
                       description="Write the [sev-snp], [tdx] or [nitro] policy table that pins a deployment's launch "
                       "measurement: SEV-SNP's computed from the OVMF image, kernel, initrd, command line and vCPUs; "
                       "TDX's and Nitro's from the values given or a tool's JSON (--from-json). See docs/DEPLOY.md.")
    r.add_argument("--platform", required=True, choices=("sev-snp", "tdx", "nitro"),
                   help="the TEE whose reference values to turn into a policy fragment")
    r.add_argument("--out", type=Path, default=None, help="fragment to write (default: print it)")
    snp = r.add_argument_group("sev-snp (computed with sev-snp-measure unless --measurement is given)")
    snp.add_argument("--measurement", metavar="HEX", help="a known launch measurement (96 hex digits)")
    snp.add_argument("--ovmf", type=Path, help="OVMF firmware image (AmdSev build with SNP metadata)")
    snp.add_argument("--kernel", type=Path, help="kernel for direct boot (measured through the SEV hashes table)")
    snp.add_argument("--initrd", type=Path, help="initrd (with --kernel)")
    snp.add_argument("--append", help="kernel command line (with --kernel)")
    snp.add_argument("--vcpus", type=int, help="number of vCPUs")
    snp.add_argument("--vcpu-type", help="QEMU CPU model, e.g. EPYC-Milan, EPYC-Genoa")
    snp.add_argument("--vcpu-sig", type=lambda s: int(s, 0), help="CPUID signature instead of --vcpu-type")
    snp.add_argument("--vmm-type", default="QEMU", choices=("QEMU", "ec2", "gce"),
                     help="the hypervisor that launches the guest (it changes the launch digest; default QEMU)")
    snp.add_argument("--guest-features", type=lambda s: int(s, 0), default=0x1,
                     help="SEV features of the guest VMSA (sev-snp-measure's default 0x1)")
    tdx = r.add_argument_group("tdx")
    for reg in TDX_REGISTERS:
        tdx.add_argument(f"--{reg}", metavar="HEX", help=f"{reg.upper()} (96 hex digits)")
    src = r.add_argument_group("tdx / nitro input file")
    src.add_argument("--from-json", type=Path, metavar="FILE",
                     help="tdx: JSON with mrtd/rtmr0..3 (dstack-mr -json); nitro: nitro-cli build-enclave output")
    nitro = r.add_argument_group("nitro")
    for pcr in NITRO_PCRS:
        nitro.add_argument(f"--{pcr}", metavar="HEX", help=f"{pcr.upper()} (96 hex digits)")
    r.set_defaults(func=cmd_reference_values)


def cmd_measure(args: argparse.Namespace) -> int:
    from enclave import measure

    root = (args.root or measure.ROOT).resolve()
    if not root.is_dir():
        raise UnusableInput(f"--root {root}: not a directory")
    files = measure.code_listing(root)
    if not files:
        raise UnusableInput(f"--root {root}: no project files found (expected {', '.join(measure.PACKAGES)})")
    identity = measure.listing_digest(files)
    if args.json:
        locks = [f["path"] for f in files if f["path"] in measure.LOCK_FILES]
        print(json.dumps({"code_identity": identity, "root": str(root), "files": len(files), "lock_files": locks},
                         indent=2))
    else:
        print(identity)
    return 0


def hex_value(value: str, what: str, nbytes: int = 48) -> str:
    """`value` as lowercase hex of `nbytes` bytes (a 0x prefix and upper case are accepted)."""
    v = value.strip().lower().removeprefix("0x")
    if len(v) != 2 * nbytes or not all(c in "0123456789abcdef" for c in v):
        size = f"{nbytes} bytes, SHA-384" if nbytes == 48 else f"{nbytes} bytes"
        shown = value if len(value) <= 120 else value[:117] + "..."
        raise UnusableInput(f"{what}: expected {2 * nbytes} hex digits ({size}), got {shown!r}")
    return v


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnusableInput(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnusableInput(f"{path} is not JSON: {exc}") from None


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise UnusableInput(f"cannot read {path}: {exc.strerror}") from None


def snp_values(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    if args.measurement:
        if any(getattr(args, name) is not None for name in _SNP_COMPUTE):
            raise UnusableInput("give either --measurement or the inputs to compute it (--ovmf ...), not both")
        return ({"measurements": [hex_value(args.measurement, "--measurement")]},
                ["measurement given on the command line"])
    if not args.ovmf or not args.vcpus:
        raise UnusableInput("sev-snp needs --ovmf and --vcpus (and --vcpu-type or --vcpu-sig), or --measurement")
    if (args.initrd or args.append is not None) and not args.kernel:
        raise UnusableInput("--initrd and --append need --kernel")
    try:
        from sevsnpmeasure import guest, vcpu_types
        from sevsnpmeasure.sev_mode import SevMode
        from sevsnpmeasure.vmm_types import VMMType
    except ImportError:
        raise UnusableInput("computing SEV-SNP measurements needs sev-snp-measure: "
                            "pip install 'attestable-audits[reference]'") from None
    vmm = VMMType[args.vmm_type]
    if args.vcpu_sig is not None:
        sig = args.vcpu_sig
    elif args.vcpu_type:
        if args.vcpu_type not in vcpu_types.CPU_SIGS:
            raise UnusableInput(f"--vcpu-type {args.vcpu_type!r}: known types are {', '.join(vcpu_types.CPU_SIGS)}")
        sig = vcpu_types.CPU_SIGS[args.vcpu_type]
    elif vmm is VMMType.QEMU:
        raise UnusableInput("--vmm-type QEMU needs --vcpu-type or --vcpu-sig")
    else:
        sig = None
    inputs = [p for p in (args.ovmf, args.kernel, args.initrd) if p]
    notes = [f"{p.name} sha256 {_file_digest(p)}" for p in inputs]
    size = args.ovmf.stat().st_size
    if not size or size % _PAGE:
        # sev-snp-measure maps the image into guest pages and only asserts this (asserts vanish under -O)
        raise UnusableInput(f"--ovmf {args.ovmf} is {size} bytes, not a whole number of 4 KiB pages: "
                            "not an OVMF firmware image")
    try:
        digest = guest.calc_launch_digest(
            SevMode.SEV_SNP, args.vcpus, sig, str(args.ovmf), str(args.kernel) if args.kernel else None,
            str(args.initrd) if args.initrd else None, args.append, args.guest_features, "", vmm)
    except _MEASURE_ERRORS as exc:
        why = str(exc) or f"a consistency check ({type(exc).__name__}) failed"
        raise UnusableInput(f"sev-snp-measure cannot measure {args.ovmf}: {why} (expected an OVMF AmdSev build "
                            "with SEV-SNP metadata)") from None
    notes.append(f"append {args.append!r}, vcpus {args.vcpus}, vcpu "
                 f"{args.vcpu_type or (hex(sig) if sig is not None else 'unset')}, vmm {args.vmm_type}, "
                 f"guest features 0x{args.guest_features:x}")
    return {"measurements": [digest.hex()]}, notes


def _named_values(args: argparse.Namespace, names: tuple[str, ...], from_file: dict[str, Any], where: str
                  ) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        given = getattr(args, name)
        if given is not None and name in from_file:
            raise UnusableInput(f"{name} given both on the command line and in {where}")
        if given is not None:
            out[name] = [hex_value(given, f"--{name}")]
        elif name in from_file:
            value = from_file[name]
            if not isinstance(value, str):
                raise UnusableInput(f"{where}: {name} must be a hex string")
            out[name] = [hex_value(value, f"{where}: {name}")]
    return out


def tdx_values(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    from_file: dict[str, Any] = {}
    notes = []
    if args.from_json:
        obj = _read_json(args.from_json)
        if not isinstance(obj, dict):
            raise UnusableInput(f"{args.from_json}: expected a JSON object with mrtd and rtmr0..rtmr3")
        from_file = {k.lower(): v for k, v in obj.items() if k.lower() in TDX_REGISTERS}
        notes.append(f"read from {args.from_json.name} sha256 {_file_digest(args.from_json)}")
    values = _named_values(args, TDX_REGISTERS, from_file, str(args.from_json))
    if "mrtd" not in values:
        raise UnusableInput("tdx needs at least MRTD (--mrtd or mrtd in --from-json)")
    return values, notes or ["values given on the command line"]


def nitro_values(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    from_file: dict[str, Any] = {}
    notes = []
    if args.from_json:
        obj = _read_json(args.from_json)
        meas = obj.get("Measurements") if isinstance(obj, dict) else None
        if not isinstance(meas, dict):
            raise UnusableInput(f"{args.from_json}: no \"Measurements\" object (expected nitro-cli build-enclave "
                                "or describe-eif output)")
        algo = meas.get("HashAlgorithm", "")
        if not (isinstance(algo, str) and algo.lower().startswith("sha384")):
            raise UnusableInput(f"{args.from_json}: HashAlgorithm {algo!r} is not SHA-384")
        from_file = {k.lower(): v for k, v in meas.items() if k.lower() in NITRO_PCRS}
        notes.append(f"read from {args.from_json.name} sha256 {_file_digest(args.from_json)}")
    values = _named_values(args, NITRO_PCRS, from_file, str(args.from_json))
    missing = [p for p in ("pcr0", "pcr1", "pcr2") if p not in values]
    if missing:
        raise UnusableInput(f"nitro needs PCR0, PCR1 and PCR2; missing {', '.join(missing)}")
    return values, notes or ["values given on the command line"]


def fragment(platform: str, values: dict[str, list[str]], notes: list[str]) -> str:
    """The TOML text of a policy fragment: comments saying where the values came from, then the table."""
    lines = [f"# Reference values for {platform}, written by `aaudit enclave reference-values`.",
             *(f"# {n}" for n in notes), f"[{platform}]"]
    lines += [f"{key} = [{', '.join(json.dumps(v) for v in vals)}]" for key, vals in values.items()]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # what we write must read back
    return text


def _refuse_foreign_flags(args: argparse.Namespace) -> None:
    foreign = sorted(set().union(*_FLAGS.values()) - _FLAGS[args.platform])
    given = [f"--{name.replace('_', '-')}" for name in foreign if getattr(args, name) is not None]
    if given:
        raise UnusableInput(f"{', '.join(given)} do(es) not apply to --platform {args.platform}")


def cmd_reference_values(args: argparse.Namespace) -> int:
    _refuse_foreign_flags(args)
    compute = {"sev-snp": snp_values, "tdx": tdx_values, "nitro": nitro_values}[args.platform]
    values, notes = compute(args)
    text = fragment(args.platform, values, notes)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UnusableInput(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"wrote {args.out}: [{args.platform}] {', '.join(values)}", file=sys.stderr)
    return 0
