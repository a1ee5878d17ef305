"""`aaudit log ...`: run the transparency log, publish bundles to it, fetch entries and proofs.

    aaudit log serve --db log.db --listen 127.0.0.1:7300
    aaudit log publish bundle.json --log 127.0.0.1:7300 [--log-key KEY] [--witness-state F]
    aaudit log get 7 --log HOST:PORT
    aaudit log checkpoint --log HOST:PORT [--log-key KEY]
    aaudit log prove 7 --log HOST:PORT [--tree-size N] [--from-size M] [--bundle bundle.json]
    aaudit log audit --db log.db
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from verifier.errors import ParseError, UnusableInput
from verifier.inputs import host_port, load_json
from verifier.models import b64e

DEFAULT_LISTEN = "127.0.0.1:7300"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("log", help="the transparency log: serve, publish, get, checkpoint, prove, audit",
                              description="An append-only Merkle log (RFC 9162) of audit bundles with signed "
                              "checkpoints (C2SP signed notes). See docs/TRANSPARENCY_LOG.md.")
    sub = p.add_subparsers(dest="log_command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the log server", description="Serve the log stored in --db over gRPC. "
                       "The log key is made on first start beside the database (DB.key, mode 0600); the verifier "
                       "key printed at start goes into verifiers' policies ([log] public_key).")
    s.add_argument("--db", required=True, metavar="PATH", help="SQLite database (created if missing)")
    s.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", type=listen_address,
                   help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free port)")
    s.add_argument("--origin", metavar="NAME", help="the log's name, first start only (default HOSTNAME/aaudit-log); "
                   "a schema-less URL such as example.com/audits is recommended")
    s.add_argument("--port-file", metavar="FILE", help="write the bound port here once listening (for scripts)")
    s.set_defaults(func=_serve)

    pub = sub.add_parser("publish", help="append a bundle and store its log entry in it",
                         description="Append the bundle (without its logEntry) to the log, check the returned "
                         "checkpoint and inclusion proof, and write them into the bundle under \"logEntry\".")
    pub.add_argument("bundle", metavar="BUNDLE.json", help="the bundle to append; written back with its logEntry")
    _remote(pub)
    _key(pub)
    _from_size(pub)
    pub.add_argument("--out", metavar="FILE", help="write the published bundle here (default: replace BUNDLE.json)")
    pub.set_defaults(func=_publish)

    g = sub.add_parser("get", help="print one entry", description="Print the bytes of entry INDEX.")
    g.add_argument("index", type=int, metavar="INDEX", help="the entry's index in the log")
    _remote(g)
    g.add_argument("--out", metavar="FILE", help="write the entry here instead of standard output")
    g.set_defaults(func=_get)

    c = sub.add_parser("checkpoint", help="print the latest signed checkpoint",
                       description="Print the log's latest signed checkpoint note.")
    _remote(c)
    _key(c)
    c.set_defaults(func=_checkpoint)

    pr = sub.add_parser("prove", help="inclusion (and consistency) proof for an entry",
                        description="Print the inclusion proof of entry INDEX as JSON. With --bundle, re-prove that "
                        "published bundle against the latest (or --tree-size) checkpoint and rewrite its logEntry, "
                        "e.g. to add a consistency proof from a witness's size.")
    pr.add_argument("index", type=int, nargs="?", metavar="INDEX", help="entry index (default with --bundle: "
                    "the bundle's logEntry.index)")
    _remote(pr)
    pr.add_argument("--tree-size", type=int, metavar="N", help="prove in the tree of N entries (default: latest)")
    _key(pr)
    _from_size(pr)
    pr.add_argument("--bundle", metavar="BUNDLE.json", help="update this published bundle's logEntry in place")
    pr.set_defaults(func=_prove)

    a = sub.add_parser("audit", help="re-derive the stored tree and check every hash and checkpoint",
                       description="Recompute every leaf and tree hash from the stored entries and every "
                       "checkpoint's root, and verify every checkpoint signature. Exit 1 with the first "
                       "disagreement. Safe to run while the server is running.")
    a.add_argument("--db", required=True, metavar="PATH", help="the log's SQLite database")
    a.add_argument("--log-key", metavar="KEY", help="the verifier key to check signatures with (default: the key "
                   "beside the database; pass the published key to also catch a replaced key file)")
    a.set_defaults(func=_audit)


def listen_address(text: str) -> str:
    """HOST:PORT with a port from 0 to 65535, checked before anything is opened or listens."""
    try:
        return host_port(text, "--listen", DEFAULT_LISTEN, listen=True)
    except UnusableInput as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--listen ")) from None


def seconds(text: str) -> float:
    """A positive, finite number of seconds (at most a day: gRPC deadlines beyond are an error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0 and at most 86400")
    return value


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", required=True, metavar="HOST:PORT", help="the log server")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS", help="per request (default 10)")


def _key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-key", metavar="KEY", help="the log's verifier key (name+keyid+base64): check the "
                   "checkpoint's signature with it")


def _from_size(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--from-size", type=int, metavar="M", help="also include a consistency proof from tree size M "
                   "(the size a verifier's witness last saw)")
    g.add_argument("--witness-state", metavar="FILE", help="like --from-size, with M read from this "
                   "`aaudit-verify --witness-state` file")


def _from_size_of(args: argparse.Namespace) -> int | None:
    if args.witness_state is None:
        return args.from_size
    from verifier.logentry import load_witness_state

    state = load_witness_state(args.witness_state, args.log_key)
    return None if state is None else state.size


def _read_bundle(path: str) -> dict[str, Any]:
    """A bundle file, read as strictly as `aaudit-verify` reads it (no duplicate keys, NaN, deep nesting)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnusableInput(f"cannot read {path}: {exc.strerror}") from None
    obj = load_json(data, path)
    if not isinstance(obj, dict):
        raise ParseError(f"{path}: a bundle is a JSON object")
    return obj


def _write_atomic(path: str, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; a bundle is public, so keep the old file's mode or use 0644
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _serve(args: argparse.Namespace) -> int:
    from tlog.log import SQLiteLog
    from tlog.server import serve

    log = SQLiteLog(args.db, origin=args.origin)
    try:
        server, port = serve(log, args.listen)
    except BaseException:
        log.close()
        raise
    host = args.listen.rsplit(":", 1)[0]
    print(f"origin:  {log.origin}")
    print(f"log key: {log.signer.verifier_key}")
    print(f"entries: {log.size}")
    print(f"listening on {host}:{port}", flush=True)
    if args.port_file:
        Path(args.port_file).write_text(str(port))

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        server.stop(grace=5).wait()
        log.close()
    return 0


def _publish(args: argparse.Namespace) -> int:
    from tlog.client import LogClient
    from tlog.publish import publish_bundle

    bundle = _read_bundle(args.bundle)
    with LogClient(args.log, args.timeout) as client:
        out = publish_bundle(client, bundle, log_key=args.log_key, from_size=_from_size_of(args))
    dest = args.out or args.bundle
    _write_atomic(dest, _dump(out))
    e = out["logEntry"]
    print(f"published as entry {e['index']} of {e['origin']} (tree size {e['treeSize']}); wrote {dest}")
    return 0


def _get(args: argparse.Namespace) -> int:
    from tlog.client import LogClient

    with LogClient(args.log, args.timeout) as client:
        data = client.entry(args.index)
    if args.out:
        _write_atomic(args.out, data)
    else:
        sys.stdout.buffer.write(data + (b"" if data.endswith(b"\n") else b"\n"))
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from tlog.client import LogClient
    from tlog.publish import checkpoint_of

    with LogClient(args.log, args.timeout) as client:
        note = client.checkpoint()
    cp = checkpoint_of(note, args.log_key)
    sys.stdout.write(note)
    if args.log_key:
        print(f"signature by {cp.origin} verified (size {cp.size})", file=sys.stderr)
    return 0


def _prove(args: argparse.Namespace) -> int:
    from tlog.client import LogClient
    from tlog.publish import checkpoint_of, refresh_bundle

    if args.index is None and args.bundle is None:
        raise UnusableInput("give an entry INDEX or --bundle")
    from_size = _from_size_of(args)
    with LogClient(args.log, args.timeout) as client:
        if args.bundle:
            out = refresh_bundle(client, _read_bundle(args.bundle), index=args.index, tree_size=args.tree_size,
                                 log_key=args.log_key, from_size=from_size)
            _write_atomic(args.bundle, _dump(out))
            e = out["logEntry"]
            print(f"entry {e['index']} re-proven in tree size {e['treeSize']}; wrote {args.bundle}")
            return 0
        proof, note = client.inclusion_proof(args.index, args.tree_size)
        if args.log_key and note is not None:
            checkpoint_of(note, args.log_key)
        result: dict[str, Any] = {"index": proof.index, "treeSize": proof.tree_size,
                                  "inclusionProof": [b64e(h) for h in proof.hashes], "checkpoint": note}
        if from_size is not None:
            result["consistencyProof"] = client.consistency_proof(from_size, proof.tree_size).to_json()
    sys.stdout.buffer.write(_dump(result))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from tlog.audit import audit

    print(audit(args.db, args.log_key).describe())
    return 0
