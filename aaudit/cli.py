"""`aaudit`: one command for every role. Each role's module registers its own subcommands.

A module in `_GROUPS` exposes `register(subparsers)`, adding a parser whose `func(args) -> int` runs
it. Errors of this project (`AAuditError`) become a one-line message and exit 2 (bad input) or 1.
Anything else is a bug: it is reported by its type only (its message could hold a secret or a
path the user did not mean to show) and exits 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from verifier.errors import AAuditError, UnusableInput

# Modules that add subcommands; imported lazily so `aaudit --help` stays fast.
_GROUPS = (
    "aaudit.cmd_assets",   # seal, digest, keygen
    "aaudit.cmd_enclave",  # enclave serve | measure | reference-values
    "aaudit.cmd_parties",  # provider / auditor client commands
    "aaudit.cmd_gateway",  # gateway serve, user chat | refresh | disclose
    "aaudit.cmd_policy",   # policy init
    "aaudit.demo",         # demo
    "tlog.cli",            # log serve | publish | get | checkpoint | prove | audit
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaudit", description="Attestable Audits: AI benchmark audits inside TEEs "
                                     "with results anyone can verify. See `aaudit-verify` for third parties.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message on one line: text quoted from elsewhere (gRPC details, parser errors) may hold newlines."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UnusableInput as exc:
        print(f"aaudit {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except AAuditError as exc:
        print(f"aaudit {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"aaudit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # defence in depth: every known failure raises an AAuditError above
        print(f"aaudit {args.command}: internal error: {type(exc).__name__}; please report", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
