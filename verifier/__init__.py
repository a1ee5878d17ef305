"""Offline verification of Attestable Audits bundles and TEE evidence (`aaudit-verify`).

The names below are the public API, what third parties and the CLI use: verify a bundle or one
piece of evidence against a `Policy` (`policy.load` reads a policy file, `policy.baseline` gives
the built-in one), or one disclosed per-sample record against its bundle (`verify_sample`), and
read the `Verdict`. Errors carry their exit code: `UnusableInput` (and its
`ParseError`, `PolicyError`) means 2, any other `AAuditError` (`VerificationError`) means 1.
Everything else in the package's modules is internal and may change.
"""

from verifier import policy
from verifier.bundle import MEDIA_TYPE, verify_bundle, verify_bundle_file
from verifier.errors import AAuditError, ParseError, PolicyError, UnusableInput, VerificationError
from verifier.evidence import verify_evidence
from verifier.models import PLATFORMS, Evidence, Status, Step, Verdict
from verifier.policy import Policy
from verifier.sample import SampleDisclosure, verify_sample

__all__ = [
    "MEDIA_TYPE", "PLATFORMS", "AAuditError", "Evidence", "ParseError", "Policy", "PolicyError", "SampleDisclosure",
    "Status", "Step", "UnusableInput", "Verdict", "VerificationError", "policy", "verify_bundle", "verify_bundle_file",
    "verify_evidence", "verify_sample",
]
