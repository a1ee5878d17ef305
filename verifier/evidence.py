"""Verify one piece of platform evidence (and its composite GPU evidence) against a policy.

This is the one path both `aaudit-verify evidence` and `aaudit-verify bundle` take, so a bundle's
evidence gets exactly the checks a standalone report gets.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from verifier import platforms
from verifier.binding import gpu_nonce
from verifier.models import GPU_PLATFORMS, Evidence, Verdict
from verifier.platforms import Bound
from verifier.policy import Policy, how_to_accept


def pad_report_data(value: bytes) -> bytes:
    """Report data given shorter than 64 bytes is compared right-padded with zeros (as SNP tools do)."""
    if len(value) > 64:
        raise ValueError("report data is at most 64 bytes")
    return value.ljust(64, b"\x00")


def verify_evidence(
    evidence: Evidence,
    *,
    at: datetime,
    policy: Policy,
    expected_report_data: bytes | None = None,
    expected_nonce: bytes | None = None,
    verdict: Verdict | None = None,
    prefix: str = "",
) -> tuple[Verdict, Bound]:
    """Append the steps for `evidence` to `verdict` (a new one if None); return it and what it binds.

    Raises `UnusableInput` only when the evidence cannot be parsed at all.
    """
    verdict = verdict if verdict is not None else Verdict(subject=evidence.platform)
    sub = Verdict(subject=evidence.platform)
    name = evidence.platform
    if not policy.accepts(name):
        sub.fail("platform accepted", f"policy {policy.source} does not accept platform {name!r}; "
                 f"to accept it a policy file needs {how_to_accept(name)}")
        verdict.extend(sub, prefix)
        verdict.claims.setdefault("platform", name)
        return verdict, Bound()
    sub.ok("platform accepted", f"{name} is accepted by policy {policy.source}")
    bound = platforms.get(name).verify(evidence, at=at, policy=policy.platforms[name], verdict=sub)

    if expected_report_data is not None:
        want = pad_report_data(expected_report_data)
        got = bound.report_data
        if got is None:
            sub.fail("report data", f"{name} evidence carries no report data to compare")
        else:
            sub.check("report data", hmac.compare_digest(got, want), "matches the expected report data",
                      f"is {got.hex()}, expected {want.hex()}")
    if expected_nonce is not None:
        got = bound.nonce if bound.nonce is not None else bound.report_data
        if got is None:
            sub.fail("nonce", f"{name} evidence carries no nonce")
        elif bound.nonce is None:  # platforms without a nonce field carry it in report data
            want = pad_report_data(expected_nonce)
            sub.check("nonce", hmac.compare_digest(got, want), "report data carries the expected nonce",
                      f"report data is {got.hex()}, expected nonce {expected_nonce.hex()} (zero-padded)")
        else:
            sub.check("nonce", hmac.compare_digest(got, expected_nonce), "matches the expected nonce",
                      f"is {got.hex()}, expected {expected_nonce.hex()}")

    _verify_gpu(evidence, bound, at=at, policy=policy, verdict=sub)
    claims = {"platform": name, **sub.claims}
    verdict.extend(sub, prefix)
    if prefix:
        verdict.claims[prefix.rstrip(": ")] = claims
    else:
        verdict.claims.update(claims)
    return verdict, bound


def _verify_gpu(evidence: Evidence, bound: Bound, *, at: datetime, policy: Policy, verdict: Verdict) -> None:
    if evidence.platform in GPU_PLATFORMS:
        if evidence.gpu:
            verdict.fail("gpu evidence", "GPU evidence cannot carry further GPU evidence")
        return
    if not evidence.gpu:
        if policy.gpu_required:
            verdict.fail("gpu evidence", "policy requires NVIDIA GPU evidence and none is attached")
        return
    if bound.report_data is None:
        verdict.fail("gpu evidence", "CPU evidence has no report data to bind GPU evidence to")
        return
    want = gpu_nonce(bound.report_data)
    gpu_claims = []
    for i, gpu in enumerate(evidence.gpu):
        label = f"gpu[{i}] "
        if gpu.platform not in GPU_PLATFORMS:
            verdict.fail(label + "platform", f"{gpu.platform!r} is not a GPU platform")
            continue
        sub, _ = verify_evidence(gpu, at=at, policy=policy, expected_nonce=want)
        verdict.extend(sub, label)
        gpu_claims.append(sub.claims)
    verdict.claims["gpus"] = gpu_claims
