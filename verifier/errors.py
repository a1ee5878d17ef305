"""Errors of the verifier. Two kinds, because they map to two exit codes.

`UnusableInput` (exit 2): the input could not be read at all (malformed file, bad encoding,
truncated structure, missing argument). `VerificationError` (exit 1): the input was read and a
check failed. Both carry a message a person can act on; neither ever shows a traceback.
"""

from __future__ import annotations


class AAuditError(Exception):
    """Base of every error this project raises on purpose."""


class UnusableInput(AAuditError):
    """The input could not be parsed or read (CLI exit 2)."""


class ParseError(UnusableInput):
    """Bytes do not form the structure they claim to be (bounds, lengths, encodings)."""


class PolicyError(UnusableInput):
    """A policy file is malformed or ambiguous."""


class VerificationError(AAuditError):
    """A check ran and failed (CLI exit 1)."""
