"""`aaudit seal | digest | keygen`: what a provider or auditor does with its assets before an audit."""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sealing.digest import asset_files, listing_and_digest
from sealing.identity import ROLES, generate_identity, generate_samples_key
from sealing.stream import (
    DEFAULT_CHUNK_SIZE,
    KINDS,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    seal,
)
from verifier.errors import UnusableInput
from verifier.models import b64e

# Below this a progress bar only flickers.
_PROGRESS_FROM = 64 << 20
_ASSET_HELP = ("Hidden files are included; empty folders are not; symlinks must point to regular files inside "
               "the folder (copy a Hugging Face cache snapshot with `cp -rL` first).")


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "seal", help="encrypt a model, dataset, spec or judge models for upload to an enclave",
        description="Encrypt a folder (or one file) into DIR/<kind>.sealed under a fresh random data key, "
        "written to DIR/<kind>.key (mode 0600: keep it secret; only its HPKE-wrapped form ever leaves your "
        "machine), and describe it in DIR/<kind>.json (digest, sizes; no secrets). Prints the canonical "
        "digest, which the enclave recomputes on the bytes it decrypts. The auditor's judge models (kind "
        "judges) are one folder holding a <name>/ folder per [[judge]] of the spec, each a Hugging Face model "
        "folder (config.json, safetensors weights, tokenizer files). " + _ASSET_HELP,
    )
    s.add_argument("kind", choices=tuple(KINDS), help="what the asset is (judges: the folder of the spec's "
                   "judge models, one <name>/ folder each)")
    s.add_argument("path", type=Path, metavar="PATH", help="folder or file to seal")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the three output files "
                   "(created if missing; existing outputs are never overwritten)")
    s.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_SIZE // 1024, metavar="KIB",
                   help=f"plaintext bytes per authenticated chunk, in KiB (default {DEFAULT_CHUNK_SIZE // 1024})")
    s.set_defaults(func=_seal)

    d = subparsers.add_parser(
        "digest", help="print the canonical digest of a plaintext folder or file",
        description="Print the canonical digest (sha256:<hex>) of a folder or file: SHA-256 of the canonical "
        "JSON file listing of each regular file's relative path, size and SHA-256, sorted by path. The same "
        "digest is what `aaudit seal` prints and what the enclave attests. " + _ASSET_HELP,
    )
    d.add_argument("path", type=Path, metavar="PATH", help="a model folder, a dataset folder or a spec file")
    d.add_argument("--json", action="store_true", help="print {digest, files, size, listing} as JSON")
    d.set_defaults(func=_digest)

    k = subparsers.add_parser(
        "keygen", help="make a provider or auditor identity key for signing run approvals",
        description="Write DIR/<role>.key (Ed25519, PKCS#8 PEM, mode 0600) and DIR/<role>.pub (PEM) and print "
        "the raw public key in base64, the form run manifests, bundles and messages show. Wherever a key is "
        "passed in (a .pub file, a key on the command line), base64, hex and PEM are all accepted. For the "
        "auditor also DIR/auditor.samples.key / .pub, the key per-sample records are encrypted to. Existing keys "
        "are never overwritten.",
    )
    k.add_argument("--role", required=True, choices=ROLES, help="whose key: the auditor also gets a samples key")
    k.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for ROLE.key (mode 0600) and ROLE.pub; created if missing")
    k.set_defaults(func=_keygen)


def _seal(args: argparse.Namespace) -> int:
    chunk_size = args.chunk_kib * 1024
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise UnusableInput(f"--chunk-kib must be within 1..{MAX_CHUNK_SIZE // 1024}")
    if args.kind == "spec":
        from aaudit.cmd_check import check_before_sealing

        check_before_sealing(args.path)  # a spec the enclave would refuse is refused here, before sealing
    total = sum(f.size for f in asset_files(args.path))
    with _progress_bar(total) as advance:
        asset = seal(args.path, args.out, args.kind, chunk_size=chunk_size, progress=advance)
    print(f"{asset.kind} digest: {asset.digest}")
    print(f"  {asset.sealed_path}  sealed asset: {asset.file_count} files, {asset.plaintext_size} bytes "
          f"in {asset.chunk_count} chunks")
    print(f"  {asset.key_path}  data key (secret, mode 0600; wrap it to an attested enclave, never send it)")
    print(f"  {asset.meta_path}  description (digest, sizes; no secrets)")
    return 0


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int], None] | None]:
    """Sealing progress for big assets on stderr: a bar on a terminal, lines when piped."""
    if total < _PROGRESS_FROM:
        yield None
        return
    from aaudit.progress import Progress, byte_counter

    with Progress() as progress:
        yield byte_counter(progress, "sealing", total)


def _digest(args: argparse.Namespace) -> int:
    entries, digest = listing_and_digest(args.path)
    if args.json:
        print(json.dumps({"digest": digest, "files": len(entries), "size": sum(e["size"] for e in entries),
                          "listing": entries}, indent=2, ensure_ascii=False))
    else:
        print(digest)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    identity, key_path, pub_path = generate_identity(args.out, args.role)
    print(f"{args.role} public key (ed25519, base64): {b64e(identity.public_raw())}")
    print(f"  {key_path}  private key (secret, mode 0600)")
    print(f"  {pub_path}  public key")
    if args.role == "auditor":
        public_b64, skey, spub = generate_samples_key(args.out, args.role)
        print(f"auditor samples key (HPKE X25519), the spec's samples_recipient: {public_b64}")
        print(f"  {skey}  private key (secret, mode 0600): opens per-sample records")
        print(f"  {spub}  public key")
    return 0
