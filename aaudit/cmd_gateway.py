"""`aaudit gateway serve` (inside the TEE), `aaudit provider provision` and `aaudit user chat | refresh |
disclose`: serving the audited model with a receipt for every answer (steps E and F, docs/RECEIPTS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from verifier.errors import UnusableInput

ENGINES = ("embedded", "vllm")


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gateway", help="serve the audited model with a receipt per answer (inside the TEE)",
                       description="The receipt gateway: serves the OpenAI API for the model an audit measured, "
                       "signs a receipt for every answer and logs the receipts (docs/RECEIPTS.md).")
    gsub = g.add_subparsers(dest="gateway_command", required=True)
    s = gsub.add_parser("serve", help="start the gateway for one audited model",
                        description="Verify the audit bundle under --policy (refuse to start otherwise), make fresh "
                        "keys, serve HTTPS with a certificate whose key the attestation binds, wait for the provider "
                        "to upload the audited model (`aaudit provider provision`), start the inference engine on "
                        "it and answer with receipts, publishing receipt batches to --log.")
    s.add_argument("--bundle", required=True, type=Path, metavar="BUNDLE.json",
                   help="the audit bundle, published to the log (it carries its logEntry)")
    s.add_argument("--policy", required=True, type=Path, metavar="POLICY.toml",
                   help="the operator's policy: the bundle must verify under it; its [log] key checks the log")
    s.add_argument("--log", required=True, metavar="HOST:PORT", help="the transparency log receiving receipt batches")
    s.add_argument("--log-key", default=None, metavar="KEY",
                   help="the log's verifier key (default: the policy's [log] public_key)")
    s.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT",
                   help="HTTPS address (port 0 picks a free port; default 127.0.0.1:8443)")
    s.add_argument("--tee", default="auto", help="attester, as for `aaudit enclave serve` (default: auto)")
    s.add_argument("--gpu-evidence", default="auto", help="NVIDIA GPU evidence, as for `aaudit enclave serve`")
    s.add_argument("--engine", choices=ENGINES, default="embedded",
                   help="'embedded': the project's transformers server (CPU, tests, demo); 'vllm': `vllm serve` "
                   "(GPU deployments) (default: embedded)")
    s.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the engine, repeatable (e.g. --engine-arg=--tensor-parallel-size=2)")
    s.add_argument("--served-model-name", default="audited-model", metavar="NAME",
                   help="the model name clients pass (default: audited-model)")
    s.add_argument("--max-tokens", type=int, default=256, metavar="N",
                   help="max_tokens applied to chat requests that give none (default 256)")
    s.add_argument("--max-tokens-limit", type=int, default=4096, metavar="N", help="the largest max_tokens accepted")
    s.add_argument("--batch-seconds", type=float, default=2.0, metavar="S",
                   help="publish a receipt batch at least this often (default 2)")
    s.add_argument("--batch-max", type=int, default=1024, metavar="N",
                   help="or as soon as this many receipts wait (default 1024)")
    s.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="tmpfs folder for the decrypted model (default /dev/shm)")
    s.add_argument("--unsafe-allow-disk-workdir", action="store_true",
                   help="DEVELOPMENT ONLY: allow a work folder that is not on tmpfs")
    s.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    s.set_defaults(func=_serve)

    u = sub.add_parser("user", help="talk to an audited model and keep receipts; disclose them",
                       description="A user of a receipt gateway: every command attests the gateway with a fresh "
                       "nonce, verifies its evidence and the audit it serves under against --policy, and talks "
                       "HTTPS pinned to the attested key.")
    usub = u.add_subparsers(dest="user_command", required=True)
    c = usub.add_parser("chat", help="ask the audited model; keep request, answer and receipt",
                        description="Send PROMPT (with the conversation so far) to the gateway, print the answer, "
                        "and keep the exact request and response bytes and the receipt with its proofs in "
                        "--conversation (mode 0600). Waits up to --wait seconds for the receipt to be logged.")
    c.add_argument("prompt", metavar="PROMPT", help="your question")
    _gateway(c)
    c.add_argument("--conversation", required=True, type=Path, metavar="DIR", help="the conversation's folder")
    c.add_argument("--stream", action="store_true", help="stream the answer (SSE)")
    c.add_argument("--system", default=None, metavar="TEXT", help="a system message to start the conversation with")
    c.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="longest answer in tokens (default: the gateway's)")
    c.add_argument("--temperature", type=float, default=None, metavar="T", help="0 to 2 (default 1; 0 is greedy)")
    c.add_argument("--seed", type=int, default=None, metavar="N",
                   help="sampling seed (default: the gateway picks one; the receipt records it either way)")
    c.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the receipt's batch to reach the log (default 30)")
    c.set_defaults(func=_chat)

    r = usub.add_parser("refresh", help="fetch the log proofs of receipts not yet logged",
                        description="For every exchange of --conversation whose receipt was not yet in the "
                        "transparency log, fetch its current proofs from the gateway.")
    _gateway(r)
    r.add_argument("--conversation", required=True, type=Path, metavar="DIR", help="the conversation's folder")
    r.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for each receipt's batch to reach the log (default 30)")
    r.set_defaults(func=_refresh)

    d = usub.add_parser("disclose", help="pack a conversation for a regulator",
                        description="Write disclosure.json: every exchange's exact request and response bytes, its "
                        "receipt and proofs, the serving evidence and the audit bundle. Check it with "
                        "`aaudit-verify disclosure`.")
    d.add_argument("--conversation", required=True, type=Path, metavar="DIR", help="the conversation's folder")
    d.add_argument("--out", required=True, type=Path, metavar="DISCLOSURE.json", help="where to write the disclosure")
    d.add_argument("--log", default=None, metavar="HOST:PORT",
                   help="re-prove the audit's and every receipt batch's log entry under the log's latest checkpoint, "
                   "so a regulator's witness checks one tree (needs --log-key)")
    d.add_argument("--log-key", default=None, metavar="KEY", help="the log's verifier key (the policy's [log] key)")
    d.set_defaults(func=_disclose)


def register_provision(rsub: argparse._SubParsersAction) -> None:
    """`aaudit provider provision`, registered under the provider's commands."""
    p = rsub.add_parser("provision", help="upload the sealed model into a receipt gateway",
                        description="Attest the gateway, check that the audit it serves under verifies under "
                        "--policy and measured your model, then wrap the model's data key to the attested gateway "
                        "key (for this gateway boot and nonce only), sign the upload header and stream the model.")
    p.add_argument("sealed", type=Path, metavar="SEALED_DIR", help="the folder `aaudit seal model` wrote")
    _gateway(p)
    p.add_argument("--identity", required=True, type=Path, metavar="provider.key",
                   help="your Ed25519 identity key (the audit's provider key)")
    p.set_defaults(func=_provision)


def _gateway(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", required=True, metavar="HOST:PORT", help="the receipt gateway")
    p.add_argument("--policy", required=True, type=Path, metavar="POLICY.toml",
                   help="what gateway evidence and audit you accept (same format as aaudit-verify's)")


# --- commands ----------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import logging

    from enclave.measure import code_identity
    from enclave.tee.select import make_attester
    from enclave.workdir import make_workdir, wipe
    from gateway.app import Settings
    from gateway.engine import check_options, start_engine
    from gateway.serve import AuditNotServable, bind, check_audit, run
    from tlog.client import LogClient
    from tlog.publish import publish_entry
    from verifier import policy as policies
    from verifier.inputs import load_json
    from verifier.render import table

    if args.max_tokens < 1 or args.max_tokens_limit < args.max_tokens or args.batch_max < 1 or args.batch_seconds <= 0:
        raise UnusableInput("--max-tokens, --max-tokens-limit and --batch-max must be at least 1, "
                            "--max-tokens-limit at least --max-tokens, --batch-seconds above 0")
    check_options(args.engine, args.engine_arg)  # at boot, not when the model arrives
    attester = make_attester(args.tee, args.gpu_evidence)
    policy = policies.load(args.policy)
    log_key = args.log_key or (policy.log.public_key if policy.log is not None else None)
    if log_key is None:
        raise UnusableInput("the log's key is needed to check what it answers: give --log-key or a [log] table in "
                            "the policy")
    try:
        bundle = load_json(args.bundle.read_bytes(), f"bundle {args.bundle}")
    except OSError as exc:
        raise UnusableInput(f"cannot read {args.bundle}: {exc.strerror}") from None
    try:
        audit = check_audit(bundle, policy)
    except AuditNotServable as exc:
        if exc.verdict is not None:
            table(exc.verdict, sys.stderr)
        raise
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would log who asked what, when
    sock = bind(args.listen)
    workdir = make_workdir(args.workdir, unsafe_allow_disk=args.unsafe_allow_disk_workdir)
    log_client = LogClient(args.log)

    def engine(folder: Path):  # noqa: ANN202
        proc = start_engine(args.engine, folder, args.served_model_name, extra=args.engine_arg, dtype=audit.dtype)
        proc.wait_ready()
        return proc

    def ready(gw) -> None:  # noqa: ANN001
        port = sock.getsockname()[1]
        if attester.platform == "sim":
            print("WARNING: --tee sim: evidence is SIMULATED and proves nothing about hardware", file=sys.stderr)
        print(f"gateway listening on https://{args.listen.rsplit(':', 1)[0]}:{port} (platform {attester.platform}, "
              f"code identity {gw.code_identity}); serving audit {audit.ref.statement_digest} "
              f"(entry {audit.ref.log_index} of {audit.ref.log_origin}), model {audit.model_digest}; waiting for "
              "the provider's upload (`aaudit provider provision`)", flush=True)
        if args.port_file:
            args.port_file.write_text(str(port))

    settings = Settings(args.served_model_name, args.max_tokens, args.max_tokens_limit)
    try:
        run(audit, attester, code_identity(), workdir, settings, engine,
            lambda data: publish_entry(log_client, data, log_key=log_key), sock,
            batch_interval_s=args.batch_seconds, batch_max=args.batch_max, on_ready=ready)
    finally:
        log_client.close()
        wipe(workdir)
    print("gateway stopped: engine stopped, model wiped, last receipt batch published", file=sys.stderr)
    return 0


def _attest(client, args: argparse.Namespace, secrets: str):  # noqa: ANN001, ANN202
    from aaudit.cmd_parties import policy_warnings
    from verifier import policy as policies

    policy = policies.load(args.policy)
    for line in policy_warnings(policy, args.policy, secrets):
        print(line, file=sys.stderr)
    attested = client.attest(policy)
    s = attested.serving
    sim = " (SIMULATED)" if s.platform == "sim" else ""
    print(f"gateway {args.gateway}: {s.platform}{sim} evidence verified for our nonce; TLS key pinned; code identity "
          f"{s.code_identity}; state {s.state}", file=sys.stderr)
    return policy, attested


def _provision(args: argparse.Namespace) -> int:
    from aaudit.cmd_parties import _sealed
    from aaudit.progress import Progress, byte_counter
    from aaudit.user import GatewayClient, GatewayError
    from sealing.identity import load_identity

    identity = load_identity(args.identity)
    asset = _sealed(args.sealed, "model")
    with GatewayClient(args.gateway) as client:
        policy, attested = _attest(client, args, "model")
        client.audit_bundle(policy, attested.serving)
        if attested.serving.model.digest != asset.digest:
            raise GatewayError(f"the gateway serves the audit of model {attested.serving.model.digest}, not your "
                               f"sealed model {asset.digest}; nothing was sent")
        with Progress() as progress:
            answer = client.provision(attested, asset, identity,
                                      on_progress=byte_counter(progress, "upload model", asset.sealed_size))
    print(f"model accepted: the gateway computed {answer.get('digest')} and is {answer.get('state')}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from aaudit.user import Conversation, GatewayClient, GatewayError

    conv = Conversation(args.conversation)
    with GatewayClient(args.gateway) as client:
        policy, attested = _attest(client, args, "prompts")
        known = conv.serving_id()
        if known is None:
            conv.start(attested.serving, client.audit_bundle(policy, attested.serving))
        elif known != attested.serving.serving_id:
            raise GatewayError(f"the gateway restarted since this conversation began (its receipts chain is gone); "
                               f"start a new --conversation folder, or disclose {args.conversation} as it is")
        messages = conv.history() or ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        body: dict = {"model": attested.serving.model.name, "messages": messages}
        for key, value in (("max_tokens", args.max_tokens), ("temperature", args.temperature), ("seed", args.seed)):
            if value is not None:
                body[key] = value
        if args.stream:
            body["stream"] = True
        previous = conv.last_receipt_digest()
        answer = client.ask("/v1/chat/completions", body, previous)
        proof = client.receipt(answer.receipt_id, wait_logged_s=args.wait)
        client.check_receipt(attested, answer, proof, previous)
        n = conv.add(answer, proof)
    print(f"answer: {answer.text}")
    print(f"receipt {answer.receipt_id}: exchange {n}, {_where(proof)}; kept in {args.conversation}")
    return 0


def _where(proof) -> str:  # noqa: ANN001
    from verifier.receipt import parse_receipt

    seq = parse_receipt(proof.receipt).predicate.sequence
    if proof.status == "logged":
        return f"sequence {seq}, logged (entry {proof.batch.log_entry.index} of {proof.batch.log_entry.origin})"
    return f"sequence {seq}, {proof.status}: run `aaudit user refresh` later to fetch its log proof"


def _refresh(args: argparse.Namespace) -> int:
    from aaudit.user import Conversation, GatewayClient

    conv = Conversation(args.conversation)
    numbers = conv.exchanges()
    if not numbers:
        raise UnusableInput(f"{args.conversation} holds no exchanges")
    with GatewayClient(args.gateway) as client:
        _attest(client, args, "prompts")
        for n in numbers:
            old = conv.proof(n)
            if old.status == "logged":
                continue
            proof = client.receipt(old.id, wait_logged_s=args.wait)
            conv.update_proof(n, proof)
            print(f"exchange {n}: receipt {proof.id}: {_where(proof)}", file=sys.stderr)
    return 0


def _disclose(args: argparse.Namespace) -> int:
    from aaudit.user import Conversation, reprove

    disclosure = Conversation(args.conversation).disclosure()
    if args.log is not None:
        if args.log_key is None:
            raise UnusableInput("--log needs --log-key: the log's answers are checked against it")
        from tlog.client import LogClient

        with LogClient(args.log) as log:
            disclosure = reprove(disclosure, log, args.log_key)
    try:
        args.out.write_text(json.dumps(disclosure.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise UnusableInput(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"wrote {args.out}: {len(disclosure.exchanges)} exchange(s) with receipts, serving evidence and the audit "
          f"bundle; check it with `aaudit-verify disclosure {args.out} --policy POLICY.toml`")
    return 0
