"""`aaudit provider ...` and `aaudit auditor ...`: the two parties' commands against an enclave."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from verifier.errors import UnusableInput
from verifier.inputs import read_file

if TYPE_CHECKING:
    from verifier.policy import Policy

ROLE_KINDS = {"provider": ("model",), "auditor": ("dataset", "spec")}
# Uploaded when SEALED_DIR holds them: the auditor's judge models, which the spec's [[judge]]s need.
OPTIONAL_ROLE_KINDS = {"provider": (), "auditor": ("judges",)}
_KEY_FORMS = "its .pub file, or the key itself in base64 (as `aaudit keygen` prints it) or hex"


def register(sub: argparse._SubParsersAction) -> None:
    for role, kinds in ROLE_KINDS.items():
        other = _other(role)
        p = sub.add_parser(role, help=f"the {role}'s commands: open a session, upload sealed {' and '.join(kinds)}, "
                           "approve, run, fetch the result",
                           description=f"Commands for the {role}. Every command first attests the enclave with a "
                           "fresh nonce, verifies its evidence against --policy and pins the TLS key the evidence "
                           "binds; nothing is sent otherwise. Everything happens in a session that names both "
                           "parties' keys: one party creates it, the other joins.")
        rsub = p.add_subparsers(dest=f"{role}_command", required=True)

        c = rsub.add_parser("create-session", help=f"open a session for you and the {other}",
                            description=f"Create a session in the enclave naming your key and the {other}'s; print "
                            f"its id. Give the id to the {other}, who joins it with `aaudit {other} join`.")
        c.add_argument(f"--{other}", required=True, metavar=f"{other}.pub|KEY", dest="other_pub",
                       help=f"the {other}'s public identity key: {_KEY_FORMS}")
        c.add_argument("--session-out", type=Path, metavar="FILE", help="also write the session id to FILE")
        _common(c, role)
        c.set_defaults(func=_policy_first(_create), role=role)

        j = rsub.add_parser("join", help=f"join a session the {other} created",
                            description=f"Check that the session lives in the attested enclave and names your key "
                            f"and the {other}'s key you expect, then sign to join it.")
        _session(j)
        j.add_argument(f"--expect-{other}", required=True, metavar=f"{other}.pub|KEY", dest="other_pub",
                       help=f"the {other}'s public identity key: {_KEY_FORMS}")
        _common(j, role)
        j.set_defaults(func=_policy_first(_join), role=role)

        optional = "".join(f" (and {k}, if SEALED_DIR holds them)" for k in OPTIONAL_ROLE_KINDS[role])
        u = rsub.add_parser("upload", help=f"upload sealed {' and '.join(kinds)}{optional} into a session",
                            description=f"Wrap the data key(s) of the sealed {' and '.join(kinds)}{optional} in "
                            "SEALED_DIR (written by `aaudit seal`) to the attested enclave key, for this session and "
                            "this attestation only, sign the upload header, and stream the ciphertext."
                            + (" Judge models (the spec's [[judge]]s) are sealed as one folder holding a <name>/ "
                               "folder per judge: `aaudit seal judges JUDGES_DIR --out SEALED_DIR`."
                               if OPTIONAL_ROLE_KINDS[role] else ""))
        u.add_argument("sealed", type=Path, metavar="SEALED_DIR", help="the folder `aaudit seal` wrote")
        if role == "provider":
            u.add_argument("--prepared-from", type=Path, metavar="PREPARE.json",
                           help="the model is an Mq made by `aaudit provider prepare`: attach this prepare bundle "
                           "(SEALED_DIR/prepare.json) after the upload, so the run manifest both parties approve "
                           "names it and the audit bundle carries the chain M -> Mq")
        _session(u)
        _common(u, role)
        u.set_defaults(func=_policy_first(_upload), role=role)

        other_kinds = ROLE_KINDS[other]
        a = rsub.add_parser("approve", help="check the whole run manifest and sign it",
                            description=f"Fetch the session's run manifest and check every field against what you "
                            f"agreed to: the attested enclave, your key and the digests in SEALED_DIR, the {other}'s "
                            f"key and the {' and '.join(other_kinds)} digests you were given (step A of the "
                            "protocol), and whether per-sample records go to the auditor. The manifest also shows "
                            "each task's document count and published metrics. Refuse on any difference; else sign.")
        a.add_argument("sealed", type=Path, metavar="SEALED_DIR",
                       help="the folder `aaudit seal` wrote: your own digests come from it")
        _session(a)
        a.add_argument(f"--expect-{other}", required=True, metavar=f"{other}.pub|KEY",
                       help=f"the {other}'s public identity key: {_KEY_FORMS}")
        for kind in other_kinds:
            a.add_argument(f"--expect-{kind}", required=True, metavar="sha256:HEX",
                           help=f"the agreed {kind} digest, as `aaudit digest` prints it")
        for kind in OPTIONAL_ROLE_KINDS[other]:
            a.add_argument(f"--expect-{kind}", metavar="sha256:HEX",
                           help=f"the agreed {kind} digest, as `aaudit digest` prints it; required exactly when "
                           f"the spec names {kind} (a manifest with {kind} you did not agree to is refused)")
        a.add_argument("--allow-samples", action="store_true",
                       help="agree that per-sample records go (encrypted) to the spec's samples_recipient")
        a.add_argument("--expect-original-model", metavar="sha256:HEX",
                       help="the audited model must have been prepared (step B) from this model digest: the "
                       "manifest must name a prepare statement from it (`aaudit provider prepare`), or refuse")
        _common(a, role)
        a.set_defaults(func=_policy_first(_approve), role=role)

        run = rsub.add_parser("run", help="start the approved audit, show progress, save the bundle",
                              description="Queue the approved job with a fresh nonce (signed), follow its queue "
                              "position and progress, save the signed bundle and verify it against --policy.")
        _session(run)
        run.add_argument("--out", type=Path, required=True, metavar="BUNDLE.json",
                         help="where to write the signed bundle (encrypted records beside it, .samples.enc)")
        _common(run, role)
        run.set_defaults(func=_policy_first(_run), role=role)

        for action, text in (("cancel", "cancel the session's queued or running job (the assets stay)"),
                             ("close", "close the session: cancel its job and wipe every asset it holds")):
            x = rsub.add_parser(action, help=text, description=text[0].upper() + text[1:] + "; signed by you.")
            _session(x)
            _common(x, role)
            x.set_defaults(func=_policy_first(_action), role=role, action=action)

        r = rsub.add_parser("result", help="fetch the bundle of the session's last finished job",
                            description="Fetch the bundle (and, for the auditor, the encrypted per-sample records) "
                            "of the session's last finished job and verify it against --policy.")
        _session(r)
        r.add_argument("--out", type=Path, required=True, metavar="BUNDLE.json",
                       help="where to write the bundle (encrypted records beside it, .samples.enc)")
        _common(r, role, identity=False)
        r.set_defaults(func=_policy_first(_result), role=role)

        if role == "provider":
            from verifier.prepare import METHODS

            pp = rsub.add_parser("prepare", help="step B: turn the session's model M into Mq in the enclave",
                                 description="Ask the enclave to turn the model you uploaded into this session (M) "
                                 "into Mq by METHOD, inside the TEE: a dtype cast, or int8 / int4 weight-only "
                                 "quantisation with torchao. Mq comes back sealed under a new data key that only "
                                 "you can unwrap, written to OUT as `aaudit seal` would (model.sealed, model.key "
                                 "(mode 0600), model.json), with the signed prepare bundle OUT/prepare.json that "
                                 "links digest(M) -> digest(Mq). Upload Mq with `aaudit provider upload OUT "
                                 "--prepared-from OUT/prepare.json` to audit it; `aaudit-verify prepare` checks "
                                 "the bundle alone.")
            pp.add_argument("method", choices=METHODS, metavar="METHOD",
                            help=f"how to make Mq: one of {', '.join(METHODS)}")
            _session(pp)
            pp.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder for model.sealed, model.key, model.json and prepare.json (created if "
                            "missing; existing files are never overwritten)")
            _common(pp, role)
            pp.set_defaults(func=_policy_first(_prepare), role=role)

            from aaudit.cmd_gateway import register_provision

            register_provision(rsub)
        if role == "auditor":
            from aaudit.cmd_check import register_auditor as register_check
            from aaudit.cmd_datasets import register_auditor as register_datasets

            register_check(rsub)
            register_datasets(rsub)
            o = rsub.add_parser("open-samples", help="decrypt and check the per-sample records of an audit",
                                description="Decrypt the per-sample records the enclave encrypted to your samples "
                                "key (output = \"aggregate+samples\"), check them against the signed statement "
                                "(ciphertext hash, Merkle root, count) and write them as JSONL (mode 0600). Each "
                                "line, without its newline, is the record's RFC 8785 JSON: exactly a Merkle leaf.")
            o.add_argument("samples", type=Path, metavar="SAMPLES.enc",
                           help="the encrypted records `run` or `result` saved beside the bundle")
            o.add_argument("--bundle", type=Path, required=True, metavar="BUNDLE.json", help="the audit's bundle")
            o.add_argument("--key", type=Path, required=True, metavar="auditor.samples.key",
                           help="your samples key (`aaudit keygen --role auditor`)")
            o.add_argument("--out", type=Path, required=True, metavar="SAMPLES.jsonl", help="where to write the records")
            o.set_defaults(func=_open_samples, role=role)

            ds = rsub.add_parser("disclose-sample", help="write one per-sample record with its inclusion proof",
                                 description="Check that SAMPLES.jsonl is exactly the records whose Merkle root "
                                 "the bundle's signed statement carries, then write record INDEX (counted from 0) "
                                 "with its RFC 9162 inclusion proof, for a third party to check with `aaudit-verify "
                                 "sample`. It reveals that one record only (its task, document id, hashes of the "
                                 "document and prompt, the model's response and metrics), not the others.")
            ds.add_argument("index", type=int, metavar="INDEX", help="which record: its line in SAMPLES.jsonl, from 0")
            ds.add_argument("--samples", type=Path, required=True, metavar="SAMPLES.jsonl",
                            help="written by `aaudit auditor open-samples`")
            ds.add_argument("--bundle", type=Path, required=True, metavar="BUNDLE.json", help="the audit's bundle")
            ds.add_argument("--out", type=Path, required=True, metavar="SAMPLE.json", help="where to write the disclosure")
            ds.set_defaults(func=_disclose_sample, role=role)

    m = sub.add_parser("manifest", help="show a session's current run manifest",
                       description="Show a session's run manifest, approvals, problems and queue position. "
                       "For reading only: it does not attest the enclave (approve does, and checks every field).")
    _session(m)
    m.add_argument("--enclave", required=True, metavar="HOST:PORT", help="the enclave service")
    _plaintext(m)
    m.set_defaults(func=_manifest)


def _other(role: str) -> str:
    return "auditor" if role == "provider" else "provider"


def _session(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", required=True, metavar="ID", help="the session id (`create-session` prints it)")


def _plaintext(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-plaintext-loopback", action="store_true",
                   help="INSECURE, development only: talk plaintext gRPC to an enclave started with the same flag "
                   "on 127.0.0.1 (nothing authenticates the channel)")


def _common(p: argparse.ArgumentParser, role: str, identity: bool = True) -> None:
    p.add_argument("--enclave", required=True, metavar="HOST:PORT", help="the enclave service")
    p.add_argument("--policy", required=True, type=Path, metavar="POLICY.toml",
                   help="what enclave evidence you accept (same format as aaudit-verify's)")
    if identity:
        p.add_argument("--identity", required=True, type=Path, metavar=f"{role}.key",
                       help=f"your Ed25519 identity key (`aaudit keygen --role {role}`)")
    _plaintext(p)


def _client(args: argparse.Namespace):  # noqa: ANN202
    from aaudit.client import EnclaveClient

    return EnclaveClient(args.enclave, insecure_plaintext=args.insecure_plaintext_loopback)


def _own_kinds(role: str, folder: Path) -> tuple[str, ...]:
    """The kinds `role` uploads from SEALED_DIR: its required ones, and the optional ones sealed there."""
    return ROLE_KINDS[role] + tuple(k for k in OPTIONAL_ROLE_KINDS[role] if (folder / f"{k}.json").is_file())


def _sealed(folder: Path, kind: str):  # noqa: ANN202
    from sealing.stream import SealedAsset

    meta = folder / f"{kind}.json"
    if not meta.is_file():
        raise UnusableInput(f"no sealed {kind} in {folder} (expected {meta.name} from `aaudit seal {kind}`)")
    return SealedAsset.load(meta)


def _policy_first(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Load --policy before anything else, so its warnings come before any other output."""
    def run(args: argparse.Namespace) -> int:
        _enclave_policy(args)
        return command(args)

    return run


def _enclave_policy(args: argparse.Namespace) -> Policy:
    """--policy, loaded once per command; the first load says loudly what it leaves open."""
    if getattr(args, "enclave_policy", None) is None:
        from verifier import policy

        args.enclave_policy = policy.load(args.policy)
        for line in policy_warnings(args.enclave_policy, args.policy, " and ".join(ROLE_KINDS[args.role])):
            print(line, file=sys.stderr)
    return args.enclave_policy


def policy_warnings(pol: Policy, path: Path, secrets: str) -> list[str]:
    """WARNING lines for a policy that would trust enclaves it should not: one per accepted platform
    whose launch measurement it does not pin (any image on that platform would get `secrets`: "model",
    "dataset and spec", "prompts"), and one for `allow_simulated = true`."""
    from verifier.models import CPU_PLATFORMS

    out = [f"WARNING: {path} pins no measurement for {name}: any enclave image would be trusted with your {secrets} "
           f"(add it: `aaudit policy init`, docs/POLICY.md)"
           for name in CPU_PLATFORMS if name in pol.platforms and not pol.pins_measurement(name)]
    if "sim" in pol.platforms:
        out.append(f"WARNING: {path} sets allow_simulated = true: simulated evidence proves nothing about hardware "
                   "and anyone can produce it; for development only")
    return out


def _attested(client, args: argparse.Namespace):  # noqa: ANN001, ANN202
    enclave = client.attest(_enclave_policy(args))
    sim = " (SIMULATED)" if enclave.platform == "sim" else ""
    channel = "plaintext channel (INSECURE)" if client.insecure_plaintext else "TLS key pinned"
    print(f"enclave {args.enclave}: {enclave.platform}{sim} evidence verified for our nonce; {channel}; "
          f"code identity {enclave.code_identity}", file=sys.stderr)
    return enclave


def _create(args: argparse.Namespace) -> int:
    from sealing.identity import load_identity, load_public_raw

    identity, other = load_identity(args.identity), load_public_raw(args.other_pub)
    with _client(args) as client:
        info = client.create_session(_attested(client, args), args.role, identity, other)
    if args.session_out:
        try:
            args.session_out.write_text(info.session_id + "\n")
        except OSError as exc:
            print(f"session {info.session_id}")
            raise UnusableInput(f"cannot write {args.session_out}: {exc.strerror}; the id is printed above") from None
    print(f"session {info.session_id}")
    print(f"created for you ({args.role}) and the {_other(args.role)}; the {_other(args.role)} joins with "
          f"`aaudit {_other(args.role)} join --session {info.session_id} ...`", file=sys.stderr)
    return 0


def _join(args: argparse.Namespace) -> int:
    from sealing.identity import load_identity, load_public_raw

    identity, other = load_identity(args.identity), load_public_raw(args.other_pub)
    with _client(args) as client:
        info = client.join_session(_attested(client, args), args.session, args.role, identity, other)
    print(f"joined session {info.session_id} as {args.role}; state {info.state}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from aaudit.progress import Progress, byte_counter
    from sealing.identity import load_identity

    identity = load_identity(args.identity)
    assets = [_sealed(args.sealed, kind) for kind in _own_kinds(args.role, args.sealed)]
    with _client(args) as client:
        for asset in assets:
            enclave = _attested(client, args)  # one fresh attestation (and nonce) per upload
            with Progress() as progress:
                res = client.upload(enclave, args.session, asset, identity,
                                    on_progress=byte_counter(progress, f"upload {asset.kind}", asset.sealed_size))
            print(f"{res.kind}: accepted, enclave computed {res.digest} ({res.plaintext_bytes} bytes); "
                  f"manifest now {res.manifest_digest}")
        if getattr(args, "prepared_from", None) is not None:
            bundle = read_file(args.prepared_from, "prepare bundle")
            res = client.attach_prepared(_attested(client, args), args.session, identity, bundle)
            print(f"prepare statement {res.statement_digest} attached; manifest now {res.manifest_digest}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from aaudit.progress import Progress
    from sealing.identity import load_identity
    from verifier.prepare import verify_prepare

    identity = load_identity(args.identity)
    with _client(args) as client, Progress() as progress:
        enclave = _attested(client, args)
        asset, bundle = client.prepare(enclave, args.session, identity, args.method, args.out,
                                       on_progress=lambda p: progress.update(p.stage, p.fraction, p.message))
    verdict, _ = verify_prepare(json.loads(bundle), _enclave_policy(args), at=datetime.now(timezone.utc))
    print(f"Mq digest: {asset.digest} ({args.method})")
    print(f"  {asset.sealed_path}  sealed Mq: {asset.file_count} files, {asset.plaintext_size} bytes")
    print(f"  {asset.key_path}  data key (secret, mode 0600)")
    print(f"  {args.out / 'prepare.json'}  prepare bundle: {'verified' if verdict.verified else 'NOT VERIFIED'} "
          "against --policy")
    for step in verdict.failures:
        print(f"  FAILED {step.name}: {step.reason}", file=sys.stderr)
    return 0 if verdict.verified else 1


def _approve(args: argparse.Namespace) -> int:
    from aaudit.client import ExpectedRun
    from sealing.identity import load_identity, load_public_raw
    from verifier.inputs import asset_digest

    other = _other(args.role)
    agreed = {kind: asset_digest(getattr(args, f"expect_{kind}"), f"--expect-{kind}")
              for kind in (*ROLE_KINDS[other], *OPTIONAL_ROLE_KINDS[other]) if getattr(args, f"expect_{kind}")}
    identity = load_identity(args.identity)
    digests = {kind: _sealed(args.sealed, kind).digest for kind in _own_kinds(args.role, args.sealed)}
    digests.update(agreed)
    original = (asset_digest(args.expect_original_model, "--expect-original-model") if args.expect_original_model
                else None)
    expected = ExpectedRun(digests, {other: load_public_raw(getattr(args, f"expect_{other}"))}, args.allow_samples,
                           original)
    with _client(args) as client:
        enclave = _attested(client, args)
        view = client.manifest(args.session)
        print(json.dumps(view.manifest.to_json(), indent=2), file=sys.stderr)
        res = client.approve(enclave, args.session, args.role, identity, expected)
    print(f"{args.role} approved manifest {view.digest}; approvals: {', '.join(res.approved_by)}"
          + ("; ready to run" if res.ready else ""))
    return 0


def _manifest(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.manifest(args.session)
    print(json.dumps({"digest": view.digest, "approvedBy": view.approved_by, "complete": view.complete,
                      "problems": view.problems, "state": view.state, "queuePosition": view.queue_position,
                      "manifest": view.manifest.to_json()}, indent=2))
    return 0


def _action(args: argparse.Namespace) -> int:
    from sealing.identity import load_identity

    identity = load_identity(args.identity)
    with _client(args) as client:
        info = client.session_action(_attested(client, args), args.action, args.session, args.role, identity)
    print(f"session {info.session_id}: {args.action} accepted; state {info.state}")
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
    from verifier.inputs import load_json
    from verifier.models import canonical_json

    try:
        bundle = load_json(args.bundle.read_bytes(), str(args.bundle))
    except OSError as exc:
        raise UnusableInput(f"cannot read {args.bundle}: {exc.strerror}") from None
    try:
        ciphertext = args.samples.read_bytes()
    except OSError as exc:
        raise UnusableInput(f"cannot read {args.samples}: {exc.strerror}") from None
    records = open_samples(ciphertext, bundle, load_samples_key(args.key))
    write_secret_file(args.out, b"".join(canonical_json(r) + b"\n" for r in records))  # each line is its leaf
    print(f"{len(records)} records match the statement's Merkle root; written to {args.out} (mode 0600)")
    return 0


def _disclose_sample(args: argparse.Namespace) -> int:
    from aaudit.samples import disclose_sample, leaves_of
    from verifier.inputs import load_json, read_file

    bundle = load_json(read_file(args.bundle, "bundle"), str(args.bundle))
    disclosure = disclose_sample(leaves_of(read_file(args.samples, "samples")), bundle, args.index)
    try:
        args.out.write_text(json.dumps(disclosure.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise UnusableInput(f"cannot write {args.out}: {exc.strerror}") from None
    record = disclosure.record
    print(f"record {args.index} of {disclosure.tree_size} (task {record.get('task')}, doc {record.get('doc_id')}) "
          f"with its inclusion proof written to {args.out}; a third party checks it with "
          f"`aaudit-verify sample {args.out} --bundle {args.bundle} --policy POLICY.toml`")
    return 0


def _verify_and_summarise(bundle: dict, args: argparse.Namespace) -> int:
    from verifier.bundle import verify_bundle

    verdict = verify_bundle(bundle, _enclave_policy(args), at=datetime.now(timezone.utc))
    for task, metrics in verdict.claims.get("results", {}).items():
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k)
        print(f"  {task}: {shown}")
    if not verdict.verified:
        for s in verdict.failures:
            print(f"  FAILED {s.name}: {s.reason}", file=sys.stderr)
        return 1
    unpinned = f" (it pins no {', '.join(verdict.unpinned)}: third parties check those with aaudit-verify)" \
        if verdict.unpinned else ""
    print(f"bundle's checks passed against {args.policy}{unpinned}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from aaudit.progress import Progress
    from sealing.identity import load_identity

    _check_writable(args.out)
    identity = load_identity(args.identity)
    with _client(args) as client, Progress() as progress:
        enclave = _attested(client, args)
        bundle = client.run(enclave, args.session, args.role, identity, os.urandom(32),
                            on_progress=lambda p: progress.update(p.stage, p.fraction, p.message))
    _save(bundle, args.out, client.samples)
    return _verify_and_summarise(bundle, args)


def _result(args: argparse.Namespace) -> int:
    _check_writable(args.out)
    with _client(args) as client:
        _attested(client, args)
        bundle = client.result(args.session)
    _save(bundle, args.out, client.samples)
    return _verify_and_summarise(bundle, args)
