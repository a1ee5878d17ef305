"""`aaudit enclave ...`: run the enclave service (inside the TEE)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path

from enclave.tee.select import GPU_CHOICES, TEE_CHOICES, make_attester


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enclave", help="run and inspect the enclave service (inside the TEE)",
                       description="Commands that run inside the TEE.")
    esub = p.add_subparsers(dest="enclave_command", required=True)
    s = esub.add_parser("serve", help="start the enclave gRPC service",
                        description="Start the enclave service: fresh keys at every start, evidence bound to them and "
                        "to each client's nonce, sealed uploads, two-party approval, one audit job at a time.")
    s.add_argument("--tee", choices=TEE_CHOICES, default="auto",
                   help="attester: 'auto' picks the TEE really present and never falls back to sim; "
                   "'sim' is for development and says SIMULATED in all evidence (default: auto)")
    s.add_argument("--gpu-evidence", choices=GPU_CHOICES, default="auto",
                   help="attach NVIDIA GPU evidence bound to the CPU evidence (default: auto)")
    s.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                   help="address to listen on (port 0 picks a free port; default 127.0.0.1:50051)")
    s.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="tmpfs folder for decrypted model files during a job (default /dev/shm)")
    s.add_argument("--unsafe-allow-disk-workdir", action="store_true",
                   help="DEVELOPMENT ONLY: allow a work folder that is not on tmpfs")
    s.add_argument("--device", default=None, help="torch device for the run (default: cuda if present, else cpu)")
    s.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    s.add_argument("--insecure-plaintext-loopback", action="store_true",
                   help="INSECURE, development only: serve plaintext gRPC (no attested TLS) on a loopback address")
    s.add_argument("--allow-party-key", action="append", metavar="PARTY.pub|KEY", default=None,
                   help="accept sessions only for these parties' identity keys: a .pub file, or the key in base64 "
                   "(as `aaudit keygen` prints it) or hex (repeat the flag; default: anyone may open a session, and "
                   "strangers can then fill the pending-session slots)")
    lim = s.add_argument_group("limits", "what all clients together may consume (defaults follow the machine)")
    for flag, field, kind, text in _LIMIT_FLAGS:
        lim.add_argument(flag, dest=field, type=kind, default=None, metavar="N", help=text)
    s.set_defaults(func=_serve)
    try:
        tools = importlib.import_module("aaudit.cmd_enclave_tools")
    except ModuleNotFoundError as exc:
        if exc.name != "aaudit.cmd_enclave_tools":
            raise
    else:
        tools.register_tools(esub)


_LIMIT_FLAGS = (
    ("--max-sessions", "max_sessions", int, "sessions held at once (default 64)"),
    ("--max-pending-sessions", "max_pending_sessions", int, "sessions created but not yet joined (default 16)"),
    ("--join-timeout-seconds", "join_timeout_s", float, "close a session nobody joined this long (default 120)"),
    ("--max-concurrent-uploads", "max_concurrent_uploads", int, "uploads in flight at once (default 8)"),
    ("--upload-idle-seconds", "upload_idle_s", float, "cut an upload that sends nothing this long (default 30)"),
    ("--upload-header-seconds", "upload_header_s", float, "an upload must send its signed header this soon (default 5)"),
    ("--min-upload-bytes-per-second", "min_upload_bytes_per_s", int,
     "cut an upload slower than this on average, once it has run --upload-idle-seconds (default 262144)"),
    ("--max-memory-bytes", "max_memory_bytes", int, "dataset and spec bytes held in memory (default: half the RAM)"),
    ("--max-tmpfs-bytes", "max_tmpfs_bytes", int, "decrypted model bytes on the work tmpfs (default: 90%% of free)"),
    ("--max-queued-jobs", "max_queued_jobs", int, "jobs waiting for the accelerator (default 8)"),
    ("--max-job-seconds", "max_deadline_s", int, "cap on any spec's deadline (default 86400)"),
    ("--min-documents-floor", "min_documents_floor", int,
     "least documents per task for output \"aggregate\", whatever the spec says (default 10)"),
    ("--session-idle-seconds", "session_idle_s", float, "close sessions idle this long (default 3600)"),
)


def _limits(args: argparse.Namespace, workdir: Path):  # noqa: ANN202
    from enclave.session import Limits
    from verifier.errors import UnusableInput

    overrides = {field: getattr(args, field) for _, field, _, _ in _LIMIT_FLAGS if getattr(args, field) is not None}
    bad = [flag for flag, field, _, _ in _LIMIT_FLAGS if field in overrides and not overrides[field] > 0]
    if bad:
        raise UnusableInput(f"{', '.join(bad)} must be greater than 0")
    if args.allow_party_key:
        from sealing.identity import load_public_raw

        overrides["party_keys"] = frozenset(load_public_raw(path) for path in args.allow_party_key)
    return Limits.for_machine(workdir, **overrides)


def _serve(args: argparse.Namespace) -> int:
    # The attester comes first: on a machine without the requested TEE this fails in milliseconds.
    attester = make_attester(args.tee, args.gpu_evidence)
    from enclave.measure import code_identity
    from enclave.service import EnclaveService, serve
    from enclave.workdir import make_workdir, wipe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    workdir = make_workdir(args.workdir, unsafe_allow_disk=args.unsafe_allow_disk_workdir)
    try:
        limits = _limits(args, workdir)
    except BaseException:
        wipe(workdir)
        raise
    service = EnclaveService(attester, code_identity(), workdir, device=args.device, limits=limits,
                             tls=not args.insecure_plaintext_loopback)
    from enclave.jobs import prewarm

    prewarm()  # the job fork server imports torch and lm-eval in the background, before the first job
    try:
        server = serve(service, args.listen)
    except BaseException:
        service.close()  # removes the work folder
        raise
    host = args.listen.rsplit(":", 1)[0]
    if attester.platform == "sim":
        print("WARNING: --tee sim: evidence is SIMULATED and proves nothing about hardware", file=sys.stderr)
    if not service.tls:
        print("WARNING: --insecure-plaintext-loopback: the channel is NOT authenticated", file=sys.stderr)
    print(f"enclave listening on {host}:{server.bound_port} ({'plaintext' if not service.tls else 'attested TLS'}, "
          f"platform {attester.platform}, code identity {service.code_identity})", flush=True)
    if args.port_file:
        args.port_file.write_text(str(server.bound_port))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("enclave stopping: cancelling jobs, dropping every session", file=sys.stderr, flush=True)
    server.stop(grace=1)
    service.close()
    return 0
