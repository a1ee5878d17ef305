"""`aaudit-verify`: the third parties' verifier. Exit 0 verified, 1 failed, 2 unusable input."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

from verifier import policy as policy_mod
from verifier.errors import AAuditError, UnusableInput
from verifier.evidence import verify_evidence
from verifier.inputs import decode_blob, parse_hex, parse_time, read_certs, read_file
from verifier.models import PLATFORMS, Evidence, Verdict
from verifier.render import as_json, disclosure_report, table, verdict_line

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; this keeps its message short and on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_UNUSABLE)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--at", metavar="TIME", help="verification time, ISO 8601 (default: now); used for "
                   "every certificate, CRL and collateral validity check")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the step table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aaudit-verify",
                     description="Verify attestable audit bundles, disclosures and TEE evidence, offline.",
                     epilog="Exit status: 0 verified, 1 verification failed, 2 unusable input.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("bundle", help="verify an audit bundle (evidence, keys, signed report, log entry)",
                       description="Verify an audit bundle against a policy: platform evidence, key binding, "
                       "DSSE signature, the final evidence bound to the statement, party keys, expected digests, "
                       "compliance thresholds and (if present or required) the transparency-log entry. A policy "
                       "that leaves a digest, the code identity or the log unpinned fails unless --allow-unpinned.")
    b.add_argument("bundle", metavar="BUNDLE.json", help="the audit bundle to check")
    b.add_argument("--policy", required=True, metavar="POLICY.toml", help="what the bundle must satisfy (docs/POLICY.md)")
    b.add_argument("--witness-state", metavar="FILE", help="remember the newest log checkpoint seen here and "
                   "demand consistency with it")
    b.add_argument("--allow-unpinned", action="store_true", help="exit 0 even when the policy leaves the model, "
                   "dataset or spec digest, the code identity or the log unpinned (the verdict then says "
                   "VERIFIED (UNPINNED: ...))")
    _common(b)

    pr = sub.add_parser("prepare", help="verify a prepare bundle (step B: M -> Mq in an enclave) on its own",
                        description="Verify a prepare bundle written by `aaudit provider prepare`: platform evidence, "
                        "key binding, DSSE signature, the final evidence bound to the prepare statement, the "
                        "provider's signed request, the code identity, and the policy's [prepare] pins (original "
                        "model digest, accepted methods). An audit bundle of Mq carries this bundle and `bundle` "
                        "checks the whole chain M -> Mq -> R.")
    pr.add_argument("prepare", metavar="PREPARE.json", help="the prepare bundle to check")
    pr.add_argument("--policy", required=True, metavar="POLICY.toml", help="what the bundle must satisfy "
                    "(docs/POLICY.md; [prepare] pins the original model and the methods)")
    pr.add_argument("--allow-unpinned", action="store_true", help="exit 0 even when the policy leaves the original "
                    "model digest or the code identity unpinned")
    _common(pr)

    d = sub.add_parser("disclosure", help="verify a user's disclosure: audit bundle, serving evidence, receipts",
                       description="Verify a disclosure (docs/RECEIPTS.md): the audit bundle under the policy, the "
                       "serving evidence binding the gateway's keys, and per exchange the receipt's signature, the "
                       "exact request and response bytes, the sampling parameters, code identity, model digest and "
                       "audit reference, the receipt's batch and its transparency-log entry; then that the "
                       "conversation is disclosed from its first exchange with none left out. Prints what the audit "
                       "promised beside what was served.")
    d.add_argument("disclosure", metavar="DISCLOSURE.json", help="what `aaudit user disclose` wrote")
    d.add_argument("--policy", required=True, metavar="POLICY.toml", help="the policy the audit bundle and the "
                   "serving evidence must satisfy ([expect] code_identity also pins the gateway)")
    d.add_argument("--witness-state", metavar="FILE", help="remember the newest log checkpoint seen here and "
                   "demand consistency with it (the bundle's and each batch's log entry)")
    d.add_argument("--allow-unpinned", action="store_true", help="exit 0 even when the policy leaves the model, "
                   "dataset or spec digest, the code identity or the log unpinned")
    _common(d)

    e = sub.add_parser("evidence", help="verify one piece of platform attestation evidence",
                       description="Verify raw TEE evidence. Evidence may be raw bytes, hex or base64 text; "
                       "certificates PEM or DER, in any order. Without --policy a baseline applies: authentic "
                       "and not debug (TDX: TCB status UpToDate); measurements are then not pinned. Simulated "
                       "(sim) evidence needs a --policy with allow_simulated = true.")
    e.add_argument("--platform", required=True, choices=PLATFORMS, help="the kind of evidence in --evidence")
    e.add_argument("--evidence", required=True, metavar="FILE",
                   help="the raw report, quote or document (binary, hex or base64)")
    e.add_argument("--certs", action="append", default=[], metavar="FILE", help="certificate file(s), repeatable")
    e.add_argument("--collateral", metavar="FILE", help="platform collateral (TDX: dcap-qvl JSON)")
    e.add_argument("--nonce", metavar="HEX", help="expected nonce (Nitro nonce, NVIDIA request nonce; "
                   "SEV-SNP/TDX: compared with report data, zero-padded)")
    e.add_argument("--report-data", metavar="HEX", help="expected report data (zero-padded to 64 bytes)")
    e.add_argument("--policy", metavar="POLICY.toml",
                   help="measurements, TCB and debug rules to apply (needed to accept sim evidence)")
    e.add_argument("--allow-debug", action="store_true", help="baseline only: accept debug-mode evidence")
    _common(e)

    s = sub.add_parser("sample", help="verify one disclosed per-sample record against its audit bundle",
                       description="Verify a record disclosed with `aaudit auditor disclose-sample`: the bundle "
                       "verifies under the policy (every step of `aaudit-verify bundle`), the disclosure names that "
                       "bundle's signed statement, and the record's RFC 8785 JSON is the leaf at its index under the "
                       "statement's samples root, for the signed number of records. Prints the record's task, "
                       "document and metrics when all holds.")
    s.add_argument("sample", metavar="SAMPLE.json", help="written by `aaudit auditor disclose-sample`")
    s.add_argument("--bundle", required=True, metavar="BUNDLE.json", help="the audit bundle the record belongs to")
    s.add_argument("--policy", required=True, metavar="POLICY.toml", help="what the bundle must satisfy")
    s.add_argument("--allow-unpinned", action="store_true", help="as for `bundle`: exit 0 even when the policy "
                   "leaves a digest, the code identity or the log unpinned")
    _common(s)
    return parser


def _evidence(args: argparse.Namespace) -> Verdict:
    at = parse_time(args.at)
    blob = decode_blob(read_file(args.evidence, "evidence"))
    certs: list[bytes] = []
    for path in args.certs:
        certs.extend(read_certs(read_file(path, "certificates"), path))
    collateral = read_file(args.collateral, "collateral") if args.collateral else None
    if args.policy:
        if args.allow_debug:
            raise UnusableInput("--allow-debug applies to the baseline only; say allow_debug in the policy instead")
        pol = policy_mod.load(args.policy)
    else:
        pol = policy_mod.baseline(args.platform, args.allow_debug)
    ev = Evidence(args.platform, blob, tuple(certs), collateral)
    verdict, _ = verify_evidence(
        ev, at=at, policy=pol,
        expected_report_data=parse_hex(args.report_data, "--report-data", 64),
        expected_nonce=parse_hex(args.nonce, "--nonce", 64),
    )
    if not args.policy:
        verdict.skip("policy", "no --policy given: baseline checks only, measurements were NOT pinned")
    verdict.claims.setdefault("verified_at", at.isoformat())
    return verdict


def _bundle(args: argparse.Namespace) -> Verdict:
    from verifier.bundle import verify_bundle_file

    return verify_bundle_file(args.bundle, policy_mod.load(args.policy), at=parse_time(args.at),
                              witness_state=args.witness_state)


def _prepare(args: argparse.Namespace) -> Verdict:
    from verifier.prepare import verify_prepare_file

    return verify_prepare_file(args.prepare, policy_mod.load(args.policy), at=parse_time(args.at))


def _disclosure(args: argparse.Namespace) -> Verdict:
    from verifier.disclosure import verify_disclosure_file

    return verify_disclosure_file(args.disclosure, policy_mod.load(args.policy), at=parse_time(args.at),
                                  witness_state=args.witness_state)


def _sample(args: argparse.Namespace) -> Verdict:
    from verifier.sample import verify_sample_files

    return verify_sample_files(args.sample, args.bundle, policy_mod.load(args.policy), at=parse_time(args.at))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        verdict = {"evidence": _evidence, "bundle": _bundle, "disclosure": _disclosure, "sample": _sample,
                   "prepare": _prepare}[
            args.command](args)
    except UnusableInput as exc:
        _report_error(args, str(exc))
        return EXIT_UNUSABLE
    except AAuditError as exc:
        _report_error(args, str(exc), unusable=False)
        return EXIT_FAILED
    allow_unpinned = getattr(args, "allow_unpinned", False)
    accepted = verdict.accepted(allow_unpinned)
    try:
        if args.json:
            platform = verdict.claims.get("platform", verdict.subject)
            as_json(verdict, sys.stdout, platform=platform, simulated=platform == "sim", verified=accepted,
                    checks_passed=verdict.verified, summary=verdict_line(verdict, allow_unpinned=allow_unpinned))
        elif args.command == "disclosure":  # the step table, then what was promised beside what was served
            shown = {k: v for k, v in verdict.claims.items() if k not in ("audit", "promised", "served")}
            table(dataclasses.replace(verdict, claims=shown), sys.stdout, allow_unpinned=allow_unpinned)
            disclosure_report(verdict.claims, sys.stdout)
        else:
            table(verdict, sys.stdout, allow_unpinned=allow_unpinned)
        sys.stdout.flush()
    except BrokenPipeError:  # `aaudit-verify ... | head`: the reader left; the verdict still decides the exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if accepted else EXIT_FAILED


def _report_error(args: argparse.Namespace, message: str, unusable: bool = True) -> None:
    if getattr(args, "json", False):
        import json

        print(json.dumps({"verified": False, "error": message, "unusable_input": unusable}))
    else:
        print(f"aaudit-verify: {'unusable input' if unusable else 'failed'}: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
