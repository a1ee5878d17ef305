"""`aaudit provider ...` and `aaudit auditor ...`: the two parties' commands against an enclave."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from verifier.errors import UnusableInput

ROLE_KINDS = {"provider": ("model",), "auditor": ("dataset", "spec")}


def register(sub: argparse._SubParsersAction) -> None:
    for role, kinds in ROLE_KINDS.items():
        p = sub.add_parser(role, help=f"the {role}'s commands: upload sealed {' and '.join(kinds)}, approve, "
                           + ("run, " if role == "auditor" else "") + "fetch the result",
                           description=f"Commands for the {role}. Every command first attests the enclave with a "
                           "fresh nonce and verifies its evidence against --policy; nothing is sent otherwise.")
        rsub = p.add_subparsers(dest=f"{role}_command", required=True)

        u = rsub.add_parser("upload", help=f"upload sealed {' and '.join(kinds)} to the enclave",
                            description=f"Wrap the data key(s) of the sealed {' and '.join(kinds)} in SEALED_DIR "
                            "(written by `aaudit seal`) to the attested enclave key, and stream the ciphertext.")
        u.add_argument("sealed", type=Path, metavar="SEALED_DIR")
        _common(u, role)
        u.set_defaults(func=_upload, role=role)

        other = "auditor" if role == "provider" else "provider"
        other_kinds = [k for r, ks in ROLE_KINDS.items() if r != role for k in ks]
        a = rsub.add_parser("approve", help="check the whole run manifest and sign it",
                            description=f"Fetch the run manifest and check every field against what you agreed to: "
                            f"the attested enclave, your key and the digests in SEALED_DIR, the {other}'s key and "
                            f"the {' and '.join(other_kinds)} digests you were given (step A of the protocol), and "
                            "whether per-sample records go to the auditor. Refuse on any difference; else sign.")
        a.add_argument("sealed", type=Path, metavar="SEALED_DIR")
        a.add_argument(f"--expect-{other}", required=True, type=Path, metavar=f"{other}.pub",
                       help=f"the {other}'s public identity key file")
        for kind in other_kinds:
            a.add_argument(f"--expect-{kind}", required=True, metavar="sha256:HEX", help=f"the agreed {kind} digest")
        a.add_argument("--allow-samples", action="store_true",
                       help="agree that per-sample records go (encrypted) to the spec's samples_recipient")
        _common(a, role)
        a.set_defaults(func=_approve, role=role)

        r = rsub.add_parser("result", help="fetch the bundle of the last finished job")
        r.add_argument("--out", type=Path, required=True, metavar="BUNDLE.json")
        _common(r, role, identity=False)
        r.set_defaults(func=_result, role=role)

        if role == "auditor":
            run = rsub.add_parser("run", help="start the audit, show progress, save the bundle",
                                  description="Start the approved audit with a fresh nonce, follow its progress, "
                                  "save the signed bundle and verify it against --policy.")
            run.add_argument("--out", type=Path, required=True, metavar="BUNDLE.json")
            _common(run, role, identity=False)
            run.set_defaults(func=_run, role=role)

            o = rsub.add_parser("open-samples", help="decrypt and check the per-sample records of an audit",
                                description="Decrypt the per-sample records the enclave encrypted to your samples "
                                "key (output = \"aggregate+samples\"), check them against the signed statement "
                                "(ciphertext hash, Merkle root, count) and write them as JSONL (mode 0600).")
            o.add_argument("samples", type=Path, metavar="SAMPLES.enc")
            o.add_argument("--bundle", type=Path, required=True, metavar="BUNDLE.json")
            o.add_argument("--key", type=Path, required=True, metavar="auditor.samples.key")
            o.add_argument("--out", type=Path, required=True, metavar="SAMPLES.jsonl")
            o.set_defaults(func=_open_samples, role=role)

    m = sub.add_parser("manifest", help="show the enclave's current run manifest")
    m.add_argument("--enclave", required=True, metavar="HOST:PORT")
    m.set_defaults(func=_manifest)


def _common(p: argparse.ArgumentParser, role: str, identity: bool = True) -> None:
    p.add_argument("--enclave", required=True, metavar="HOST:PORT", help="the enclave service")
    p.add_argument("--policy", required=True, type=Path, metavar="POLICY.toml",
                   help="what enclave evidence you accept (same format as aaudit-verify's)")
    if identity:
        p.add_argument("--identity", required=True, type=Path, metavar=f"{role}.key",
                       help=f"your Ed25519 identity key (`aaudit keygen --role {role}`)")


def _sealed(folder: Path, kind: str):  # noqa: ANN202
    from sealing.stream import SealedAsset

    meta = folder / f"{kind}.json"
    if not meta.is_file():
        raise UnusableInput(f"no sealed {kind} in {folder} (expected {meta.name} from `aaudit seal {kind}`)")
    return SealedAsset.load(meta)


def _attested(client, args: argparse.Namespace):  # noqa: ANN001, ANN202
    from verifier import policy

    enclave = client.attest(policy.load(args.policy))
    sim = " (SIMULATED)" if enclave.platform == "sim" else ""
    print(f"enclave {args.enclave}: {enclave.platform}{sim} evidence verified for our nonce; "
          f"code identity {enclave.code_identity}", file=sys.stderr)
    return enclave


def _upload(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from aaudit.client import EnclaveClient
    from sealing.identity import load_identity

    identity = load_identity(args.identity)
    assets = [_sealed(args.sealed, kind) for kind in ROLE_KINDS[args.role]]
    with EnclaveClient(args.enclave) as client:
        enclave = _attested(client, args)
        for asset in assets:
            total = asset.sealed_size
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {asset.kind}", file=sys.stderr,
                      disable=None) as bar:
                res = client.upload(enclave, asset, identity.public_raw(), on_progress=bar.update)
            print(f"{res.kind}: accepted, enclave computed {res.digest} ({res.plaintext_bytes} bytes); "
                  f"manifest now {res.manifest_digest}")
    return 0


def _approve(args: argparse.Namespace) -> int:
    from aaudit.client import EnclaveClient, ExpectedRun
    from sealing.identity import load_identity, load_public_raw

    identity = load_identity(args.identity)
    other = "auditor" if args.role == "provider" else "provider"
    digests = {kind: _sealed(args.sealed, kind).digest for kind in ROLE_KINDS[args.role]}
    digests.update({kind: getattr(args, f"expect_{kind}") for kind in ROLE_KINDS[other]})
    expected = ExpectedRun(digests, {other: load_public_raw(getattr(args, f"expect_{other}"))}, args.allow_samples)
    with EnclaveClient(args.enclave) as client:
        enclave = _attested(client, args)
        manifest, digest, _, _ = client.manifest()
        print(json.dumps(manifest, indent=2), file=sys.stderr)
        res = client.approve(enclave, args.role, identity, expected)
    print(f"{args.role} approved manifest {digest}; approvals: {', '.join(res.approved_by)}"
          + ("; ready to run" if res.ready else ""))
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from aaudit.client import EnclaveClient

    with EnclaveClient(args.enclave) as client:
        manifest, digest, approved, complete = client.manifest()
    print(json.dumps({"digest": digest, "approvedBy": approved, "complete": complete, "manifest": manifest}, indent=2))
    return 0


def _check_writable(out: Path) -> None:
    """Before a run starts: its bundle must have somewhere to go."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UnusableInput(f"cannot write {out}: {folder} is not a writable folder")
    if out.is_dir():
        raise UnusableInput(f"cannot write {out}: it is a folder")


def _save(bundle: dict, out: Path, samples: bytes | None = None) -> None:
    try:
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out)
        print(f"bundle written to {out}")
        if samples is not None:
            enc = out.with_suffix(".samples.enc")
            enc.write_bytes(samples)
            print(f"per-sample records (encrypted to the auditor's samples key) written to {enc}")
    except OSError as exc:
        print(json.dumps(bundle), file=sys.stdout)  # the job ran once; never lose its result
        raise UnusableInput(f"cannot write {out}: {exc.strerror}; the bundle was printed to standard output") from None


def _open_samples(args: argparse.Namespace) -> int:
    from aaudit.samples import open_samples
    from sealing.identity import load_samples_key
    from sealing.secretfile import write_secret_file

    try:
        bundle = json.loads(args.bundle.read_text())
        ciphertext = args.samples.read_bytes()
    except (OSError, ValueError) as exc:
        raise UnusableInput(f"cannot read {args.bundle} or {args.samples}: {exc}") from None
    records = open_samples(ciphertext, bundle, load_samples_key(args.key))
    write_secret_file(args.out, b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records))
    print(f"{len(records)} records match the statement's Merkle root; written to {args.out} (mode 0600)")
    return 0


def _verify_and_summarise(bundle: dict, args: argparse.Namespace) -> int:
    from verifier import policy
    from verifier.bundle import verify_bundle

    verdict = verify_bundle(bundle, policy.load(args.policy), at=datetime.now(timezone.utc))
    for task, metrics in verdict.claims.get("results", {}).items():
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k)
        print(f"  {task}: {shown}")
    if not verdict.verified:
        for s in verdict.failures:
            print(f"  FAILED {s.name}: {s.reason}", file=sys.stderr)
        return 1
    print(f"bundle verified against {args.policy}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from aaudit.client import EnclaveClient

    _check_writable(args.out)
    with EnclaveClient(args.enclave) as client:
        _attested(client, args)
        bars: dict[str, tqdm] = {}

        def show(p) -> None:  # noqa: ANN001
            bar = bars.get(p.stage)
            if bar is None:
                for other in bars.values():
                    other.close()
                bar = bars[p.stage] = tqdm(total=1000, desc=p.stage, file=sys.stderr, disable=None,
                                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
            bar.update(max(0, int(p.fraction * 1000) - bar.n))

        bundle = client.run(os.urandom(32), on_progress=show)
        for bar in bars.values():
            bar.close()
    _save(bundle, args.out, client.samples)
    return _verify_and_summarise(bundle, args)


def _result(args: argparse.Namespace) -> int:
    from aaudit.client import EnclaveClient

    _check_writable(args.out)
    with EnclaveClient(args.enclave) as client:
        _attested(client, args)
        bundle = client.result()
    _save(bundle, args.out, client.samples)
    return _verify_and_summarise(bundle, args)


