"""`aaudit policy init`: write a starting policy file from the values a user has.

The file it writes is a complete, commented policy (`verifier/policy.py` parses it): every key the
platform's table, `[expect]` and `[log]` know is there, set to what the user passed or commented
out with a note saying what it pins. It is read back with the policy parser before the command
says it is done, and what it leaves unpinned (`Policy.unpinned`) is printed to stderr. docs/POLICY.md
explains every key with full examples.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from verifier import platforms
from verifier.errors import UnusableInput
from verifier.inputs import asset_digest

PLATFORM_CHOICES = ("sim", "sev-snp", "tdx", "nitro")
_MAX_KEY_FILE = 16 << 10
NITRO_NO_GPU = ("AWS Nitro Enclaves have no GPU: an enclave gets vCPUs, memory and a vsock from its parent "
                "instance and no PCI devices, so there is no GPU evidence to require (docs/POLICY.md)")


@dataclass(frozen=True)
class Key:
    """One allow-list key of a platform table: the size in bytes of each value (hex in the file) and
    what it pins, written above it in the file."""

    name: str
    nbytes: int
    note: str


# The allow-list keys each platform module parses (verifier/platforms/*.py `parse_policy`), in the
# order the file shows them, and what pins the code (`is_pinned`), for the NOT PINNED note.
_KEYS: dict[str, tuple[Key, ...]] = {
    "sim": (
        Key("measurements", 32, "The enclave's code identity, which the simulator reports as its measurement "
            "(`aaudit enclave measure`)."),
    ),
    "sev-snp": (
        Key("measurements", 48, "Launch measurement(s): the firmware and, with measured direct boot, kernel, initrd "
            "and command line (`aaudit enclave reference-values --platform sev-snp`)."),
        Key("host_data", 32, "Optional: the HOST_DATA the host set at launch, if your deployment uses it."),
        Key("id_key_digests", 48, "Optional: SHA-384 digests of the ID key that signed the launch's ID block, if "
            "you sign launches."),
    ),
    "tdx": (
        Key("mrtd", 48, "MRTD: the TD firmware (TDVF) as loaded."),
        Key("rtmr0", 48, "RTMR0: the firmware's configuration (TD HOB, ACPI tables, boot variables)."),
        Key("rtmr1", 48, "RTMR1: the kernel (and boot loader) the firmware started."),
        Key("rtmr2", 48, "RTMR2: the kernel command line and initrd."),
        Key("rtmr3", 48, "Optional: RTMR3, extended at run time (by the OS or a container runtime); pin it only "
            "if your image makes it predictable."),
        Key("mrconfigid", 48, "Optional: MRCONFIGID, configuration the host passed at launch, if you set it."),
        Key("mrowner", 48, "Optional: MROWNER, the TD owner's identity, if you set it."),
    ),
    "nitro": (
        Key("pcr0", 48, "PCR0: the whole enclave image file (EIF); pins the code by itself."),
        Key("pcr1", 48, "PCR1: the kernel and boot ramfs (with PCR2, pins the code without PCR0)."),
        Key("pcr2", 48, "PCR2: the application (user space) of the image."),
        Key("pcr3", 48, "Optional: PCR3, the IAM role of the parent instance."),
        Key("pcr4", 48, "Optional: PCR4, the parent instance's ID."),
        Key("pcr8", 48, "Optional: PCR8, the certificate that signed the image file (signed EIFs only)."),
    ),
}
_CODE = {"sim": "measurements", "sev-snp": "measurements", "tdx": "mrtd, rtmr0, rtmr1 and rtmr2 together",
         "nitro": "pcr0 (or pcr1 with pcr2)"}
# Commented-out settings of each table that are not allow-lists: (comment, line).
_OTHER: dict[str, tuple[tuple[str, str], ...]] = {
    "sim": (("Evidence that says debug is refused unless this is true.", "allow_debug = false"),),
    "sev-snp": (
        ("Optional: the lowest TCB (firmware and microcode security versions) accepted in the reported, committed "
         "and current TCB; example values, take yours from AMD's security bulletins. Per product line: "
         "min_tcb = { Milan = { ... }, Genoa = { ... }, Turin = { fmc = ..., ... } }.",
         "min_tcb = { bootloader = 10, tee = 0, snp = 23, microcode = 213 }"),
        ("Optional: the highest VMPL the report may come from (0 is the most privileged).", "max_vmpl = 0"),
        ("A guest policy that allows debug (the host can read and change guest memory) fails unless this is true.",
         "allow_debug = false"),
    ),
    "tdx": (
        ("TCB statuses accepted from Intel's collateral (default [\"UpToDate\"]; Revoked never).",
         'accepted_tcb_statuses = ["UpToDate"]'),
        ("A TD with the DEBUG attribute (the host can read and change it) fails unless this is true.",
         "allow_debug = false"),
    ),
    "nitro": (
        ("A debug-mode enclave (PCR0 all zeros; its console is readable) fails unless this is true.",
         "allow_debug = false"),
    ),
}
_DIGESTS = (("model", "the model folder the audit ran on (`aaudit digest MODEL_DIR` prints it, as does `aaudit seal`)"),
            ("dataset", "the auditor's dataset folder (`aaudit digest DATA_DIR`)"),
            ("spec", "the audit specification (`aaudit digest SPEC.toml`)"))


@dataclass
class Values:
    """What the user passed, checked."""

    platform: str
    gpu: bool
    table: dict[str, list[str]] = field(default_factory=dict)  # platform table key -> allow-list
    code_identity: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # model/dataset/spec -> sha256:...
    party_keys: dict[str, str] = field(default_factory=dict)  # role -> PEM
    log_key: str | None = None
    require_log: bool = False
    sources: list[str] = field(default_factory=list)  # where table values came from, for the header

    def add(self, key: str, values: list[str]) -> None:
        self.table.setdefault(key, [])
        self.table[key] += [v for v in values if v not in self.table[key]]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="write a verification policy (what enclaves and bundles you accept)",
                       description="Policy files say which enclaves the parties trust and which bundles a third "
                       "party accepts. docs/POLICY.md explains every key.")
    psub = p.add_subparsers(dest="policy_command", required=True)
    i = psub.add_parser(
        "init", help="write a commented starting policy from the values you have",
        description="Write a policy for one platform with the measurements, digests and keys you pass. Every key "
        "you do not pass is written commented out with a note, and stderr lists what the policy leaves "
        "unpinned. The file loads with the policy parser (aaudit-verify, the parties' --policy).")
    i.add_argument("--platform", required=True, choices=PLATFORM_CHOICES,
                   help="the enclave's TEE (sim: development only, proves nothing about hardware)")
    i.add_argument("--gpu", action="store_true",
                   help="require NVIDIA GPU evidence bound to the CPU evidence (not for nitro: it has no GPUs)")
    i.add_argument("--out", type=Path, required=True, metavar="POLICY.toml", help="the file to write")
    i.add_argument("--force", action="store_true", help="replace --out if it exists")
    m = i.add_argument_group("the enclave's measurements (what pins the code it runs)")
    m.add_argument("--reference-values", type=Path, metavar="FILE",
                   help="the fragment `aaudit enclave reference-values` wrote for this platform")
    m.add_argument("--measurement", action="append", default=[], metavar="HEX",
                   help="sev-snp: a launch measurement (96 hex digits); sim: the code identity (64 hex digits); "
                   "repeat for several")
    m.add_argument("--mrtd", action="append", default=[], metavar="HEX", help="tdx: MRTD (96 hex digits); repeatable")
    m.add_argument("--rtmr", action="append", default=[], metavar="INDEX=HEX",
                   help="tdx: RTMR0..RTMR3, e.g. --rtmr 1=<96 hex digits>; repeatable")
    m.add_argument("--pcr", action="append", default=[], metavar="INDEX=HEX",
                   help="nitro: PCR 0, 1, 2, 3, 4 or 8, e.g. --pcr 0=<96 hex digits>; repeatable")
    m.add_argument("--code-identity", action="append", default=[], metavar="HEX",
                   help="an enclave code identity the statement may name (`aaudit enclave measure`); repeatable")
    e = i.add_argument_group("what the audit must be about")
    for kind, what in _DIGESTS:
        e.add_argument(f"--{kind}-digest", metavar="sha256:HEX",
                       help=f"the digest of {what}")
    for role in ("provider", "auditor"):
        e.add_argument(f"--{role}-key", metavar=f"{role}.pub",
                       help=f"the {role}'s public identity key: its .pub file, the PEM text, or the raw Ed25519 key "
                       "in base64 or hex")
    lg = i.add_argument_group("the transparency log")
    lg.add_argument("--log-key", metavar="KEY", help="the log's verifier key (name+keyid+base64, printed by "
                    "`aaudit log serve`)")
    lg.add_argument("--require-log", action="store_true",
                    help="a bundle must carry a verified inclusion proof in that log (needs --log-key)")
    i.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from verifier import policy

    if args.out.exists() and not args.force:
        raise UnusableInput(f"{args.out} exists; pass --force to replace it")
    values = collect(args)
    text = render(values)
    pol = policy.parse(tomllib.loads(text), str(args.out))  # what we write must load, or nothing is written
    _write(args.out, text)
    gpu = " with NVIDIA GPU evidence required" if values.gpu else ""
    print(f"wrote {args.out}: accepts {values.platform} evidence{gpu}", file=sys.stderr)
    if values.platform == "sim":
        print("  allow_simulated = true: simulated evidence proves nothing about hardware (development only)",
              file=sys.stderr)
    if not pol.pins_measurement(values.platform):
        print(f"  no launch measurement pinned: any {values.platform} enclave image passes the platform checks "
              f"(set {_CODE[values.platform]})", file=sys.stderr)
    unpinned = pol.unpinned(values.platform)
    if unpinned:
        print(f"  unpinned: {', '.join(unpinned)}: a bundle passes these checks whatever they are; see the "
              f"commented lines in {args.out}", file=sys.stderr)
    else:
        print("  pins the model, dataset and spec digests, the code and the log", file=sys.stderr)
    return 0


def collect(args: argparse.Namespace) -> Values:
    """The user's values, each checked where it was given."""
    from aaudit.cmd_enclave_tools import hex_value

    platform = args.platform
    if args.gpu and platform == "nitro":
        raise UnusableInput(f"--gpu with --platform nitro: {NITRO_NO_GPU}")
    values = Values(platform, args.gpu)
    foreign = {"--measurement": args.measurement and platform not in ("sim", "sev-snp"),
               "--mrtd": args.mrtd and platform != "tdx", "--rtmr": args.rtmr and platform != "tdx",
               "--pcr": args.pcr and platform != "nitro"}
    given = [flag for flag, bad in foreign.items() if bad]
    if given:
        raise UnusableInput(f"{', '.join(given)} do(es) not apply to --platform {platform}")
    if args.reference_values:
        _reference_values(args.reference_values, values)
    size = 32 if platform == "sim" else 48
    if args.measurement:
        values.add("measurements", [hex_value(v, "--measurement", size) for v in args.measurement])
    if args.mrtd:
        values.add("mrtd", [hex_value(v, "--mrtd") for v in args.mrtd])
    for flag, items, indexes in (("--rtmr", args.rtmr, (0, 1, 2, 3)), ("--pcr", args.pcr, (0, 1, 2, 3, 4, 8))):
        for item in items:
            index, _, value = item.partition("=")
            if not (index.isdigit() and int(index) in indexes and value):
                raise UnusableInput(f"{flag} {item[:20]!r}: expected INDEX=HEX with INDEX one of "
                                    f"{', '.join(map(str, indexes))}")
            values.add(f"{flag[2:]}{int(index)}", [hex_value(value, f"{flag} {index}")])
    values.code_identity = list(dict.fromkeys(hex_value(v, "--code-identity", 32) for v in args.code_identity))
    values.digests = {kind: asset_digest(getattr(args, f"{kind}_digest"), f"--{kind}-digest") for kind, _ in _DIGESTS
                      if getattr(args, f"{kind}_digest") is not None}
    values.party_keys = {role: party_key_pem(getattr(args, f"{role}_key"), f"--{role}-key")
                         for role in ("provider", "auditor") if getattr(args, f"{role}_key") is not None}
    if args.require_log and not args.log_key:
        raise UnusableInput("--require-log needs --log-key (the verifier key `aaudit log serve` prints)")
    if args.log_key:
        from verifier.checkpoint import parse_verifier_key

        values.log_key = str(parse_verifier_key(args.log_key))
        values.require_log = args.require_log
    return values


def _reference_values(path: Path, values: Values) -> None:
    """Merge the fragment of `aaudit enclave reference-values` (one `[platform]` table of allow-lists)."""
    from aaudit.cmd_enclave_tools import hex_value

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnusableInput(f"cannot read --reference-values {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnusableInput(f"--reference-values {path} is not a TOML fragment from `aaudit enclave "
                            "reference-values`") from None
    if list(data) != [values.platform] or not isinstance(data[values.platform], dict):
        found = ", ".join(f"[{k}]" for k in data) or "nothing"
        raise UnusableInput(f"--reference-values {path} holds {found}; expected one [{values.platform}] table "
                            f"(`aaudit enclave reference-values --platform {values.platform}`)")
    keys = {k.name: k for k in _KEYS[values.platform]}
    for name, items in data[values.platform].items():
        if name not in keys:
            raise UnusableInput(f"--reference-values {path}: [{values.platform}] {name} is not a key this command "
                                f"writes (known: {', '.join(keys)})")
        if not (isinstance(items, list) and items and all(isinstance(v, str) for v in items)):
            raise UnusableInput(f"--reference-values {path}: {name} must be a non-empty list of hex strings")
        values.add(name, [hex_value(v, f"{path}: {name}", keys[name].nbytes) for v in items])
    values.sources.append(f"{path.name} (sha256 {_sha256(path)})")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def party_key_pem(value: str, flag: str) -> str:
    """A party's Ed25519 public key as the SubjectPublicKeyInfo PEM the policy holds, from its .pub
    file, PEM text, or the raw 32 bytes in base64 or hex."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    hint = (f"{flag}: expected the party's .pub file (`aaudit keygen`), its PEM text, or the raw Ed25519 key in "
            "base64 or hex")
    text = value
    if "-----BEGIN" not in value:
        path = Path(value)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            try:
                with open(path, "rb") as f:
                    text = f.read(_MAX_KEY_FILE).decode("ascii", "replace")
            except OSError as exc:
                raise UnusableInput(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if "PRIVATE KEY" in text:  # never quote it
        raise UnusableInput(f"{flag}: {value if text is not value else 'the value'} is a private key; pass the "
                            "party's public key (its .pub file)")
    try:
        if "-----BEGIN" in text:
            key = load_pem_public_key(text.strip().encode("ascii"))
        else:
            raw = _raw_key(text.strip())
            key = Ed25519PublicKey.from_public_bytes(raw) if raw is not None else None
    except (ValueError, TypeError, UnicodeEncodeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise UnusableInput(hint)
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii").strip()


def _raw_key(text: str) -> bytes | None:
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _comment(text: str, width: int = 100) -> list[str]:
    """`text` as `# ` lines of at most about `width` characters."""
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    return [*lines, line]


def _list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def render(v: Values) -> str:
    """The policy file's text."""
    platform = v.platform
    out = [f"# Verification policy for {platform} evidence{' with NVIDIA GPU evidence' if v.gpu else ''}, written by "
           "`aaudit policy init`.",
           "# The parties pass it as --policy (which enclaves get their secrets); a third party passes it to",
           "# `aaudit-verify bundle --policy`. docs/POLICY.md explains every key. A commented-out key is not set:",
           "# fill it in and remove the leading '# '.", ""]
    if platform == "sim":
        out += _comment("DEVELOPMENT ONLY: accept the simulated attester, whose evidence is signed in software and "
                        "proves nothing about hardware.") + ["allow_simulated = true", ""]
    out += _comment('Optional: refuse reports older than this ("90s", "15m", "12h", "30d").')
    out += ['# max_age = "30d"', ""]

    out.append(f"[{platform}]")
    out += [f"# Values from {s}." for s in v.sources]
    module = platforms.get(platform)
    if not module.is_pinned(module.parse_policy(dict(v.table))):
        out += _comment(f"NOT PINNED: no launch measurement, so any {platform} enclave image passes. Set "
                        f"{_CODE[platform]} below.")
    for key in _KEYS[platform]:
        out += _comment(key.note)
        if key.name in v.table:
            out.append(f"{key.name} = {_list(v.table[key.name])}")
        else:
            out.append(f"# {key.name} = [\"<{2 * key.nbytes} hex digits>\"]")
    for note, line in _OTHER[platform]:
        out += _comment(note) + [f"# {line}"]
    out.append("")

    if v.gpu:
        out += ["[nvidia]"]
        out += _comment("The table accepts NVIDIA GPU evidence (a GPU in confidential-computing mode) bound to the "
                        "CPU evidence; required = true also refuses CPU evidence that carries none.")
        out += ["required = true"]
        out += _comment("Optional: the GPU driver versions accepted.") + ['# driver_versions = ["550.90.07"]']
        out += _comment("Optional: the VBIOS versions accepted.") + ['# vbios_versions = ["96.00.9F.00.01"]', ""]

    out.append("[expect]")
    for kind, what in _DIGESTS:
        out += _comment(f"The digest of {what}.")
        if kind in v.digests:
            out.append(f'{kind}_digest = "{v.digests[kind]}"')
        else:
            out += _comment(f"NOT PINNED: a bundle about any {kind} passes.")
            out.append(f'# {kind}_digest = "sha256:<64 hex digits>"')
    out += _comment("Enclave code identities the statement may name (`aaudit enclave measure`). The enclave reports "
                    "it itself: it binds only as far as the launch measurement above pins the image.")
    out.append(f"code_identity = {_list(v.code_identity)}" if v.code_identity
               else '# code_identity = ["<64 hex digits>"]')
    for role in ("provider", "auditor"):
        out += _comment(f"The {role}'s public identity key (its .pub file): the manifest must name it and every "
                        f"{role} approval must be signed by it.")
        if role in v.party_keys:
            out += [f"{role}_key = '''", v.party_keys[role], "'''"]
        else:
            out += [f"# {role}_key = '''", "# -----BEGIN PUBLIC KEY-----", "# ...",
                    "# -----END PUBLIC KEY-----", "# '''"]
    out.append("")

    out += _comment("Optional compliance thresholds on result metrics, one table per threshold (task and metric "
                    "as the bundle's results name them, e.g. acc; min and/or max).")
    out += ["# [[threshold]]", '# task = "mmlu"', '# metric = "acc"', "# min = 0.6", ""]

    if v.log_key is None:
        out += _comment("NOT PINNED: no transparency log. Set the log's verifier key (`aaudit log serve` prints it) "
                        "and require inclusion:")
        out += ["# [log]", '# public_key = "<name+keyid+base64>"', "# require_inclusion = true"]
    else:
        out += ["[log]"] + _comment("The transparency log's verifier key (`aaudit log serve` prints it).")
        out.append(f"public_key = {json.dumps(v.log_key)}")
        if not v.require_log:
            out += _comment("NOT PINNED while false: set true to require a verified inclusion proof in this log.")
        out.append(f"require_inclusion = {'true' if v.require_log else 'false'}")
    return "\n".join(out) + "\n"


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so an existing policy is replaced whole or not at all."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UnusableInput(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # a policy is public
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UnusableInput(f"cannot write {path}: {exc.strerror}") from None
