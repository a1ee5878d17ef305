"""Verify a user's disclosure (docs/RECEIPTS.md, step F) against a policy, step by step.

Order: the audit bundle (every step of `verify_bundle`, prefixed "audit: ") -> the serving evidence
binds the gateway's keys ("serving: ") -> per exchange ("exchange N: "): the receipt's signature by
the attested gateway key, the exact request and response bytes, the request's own parameters
against the applied ones, code identity, model digest and audit reference against the audit, the
receipt's Merkle proof into its signed batch and the batch's transparency-log entry -> across
exchanges: the conversation chain (no exchange withheld) and the receipt sequence.

A regulator reads what the audit promised beside what was served: `claims["promised"]` holds the
audit's headline results, `claims["served"]` each exchange's prompt and answer as the receipt binds
them. Malformed input raises `ParseError`; everything a check can refuse is a FAILED step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from verifier import dsse
from verifier.binding import serving_binding
from verifier.bundle import AuditBundle, verify_bundle
from verifier.errors import ParseError
from verifier.evidence import verify_evidence
from verifier.inputs import load_json, read_file
from verifier.logentry import LogEntry, check_log_entry
from verifier.merkle import leaf_hash, verify_inclusion
from verifier.models import CPU_PLATFORMS, LOG_ENTRY_KEY, Verdict
from verifier.platforms import allowlist
from verifier.policy import Policy
from verifier.receipt import (
    AuditRef,
    Disclosure,
    Exchange,
    Receipt,
    ReceiptPredicate,
    Sampling,
    ServingEvidence,
    batch_log_entry_bytes,
    leaf,
    parse_batch,
    parse_receipt,
    payload_digest,
)
from verifier.statement import parse_statement

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class _Audit:
    """What the receipts must agree with, read from the disclosed bundle (whose own steps say
    whether it verified)."""

    ref: AuditRef | None           # None: the bundle has no (readable) log entry to name it by
    statement_digest: str
    model_digest: str | None       # None (and the rest empty): the statement does not parse
    dataset_digest: str | None = None
    spec_digest: str | None = None
    judges_digest: str | None = None  # None also when the audit used no judge models
    finished_at: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def verify_disclosure_file(path: str | Path, policy: Policy, *, at: datetime,
                           witness_state: str | None = None) -> Verdict:
    data = read_file(path, "disclosure")
    return verify_disclosure(load_json(data, f"disclosure {path}"), policy, at=at, witness_state=witness_state)


def verify_disclosure(obj: Any, policy: Policy, *, at: datetime, witness_state: str | None = None) -> Verdict:
    disclosure = Disclosure.from_json(obj)
    verdict = Verdict(subject="disclosure")
    audit = _audit(disclosure.bundle, policy, at, witness_state, verdict)
    gateway_key = _serving(disclosure.serving, audit, policy, at, verdict)
    platform = disclosure.serving.evidence.platform
    receipts = []
    served = []
    for n, exchange in enumerate(disclosure.exchanges, 1):
        receipt, logged = _exchange(n, exchange, gateway_key, platform, audit, policy, at, witness_state, verdict)
        receipts.append(receipt)
        served.append(_served(n, exchange, receipt, logged))
    _chain([e.proof.receipt for e in disclosure.exchanges], receipts, verdict)
    _history(disclosure.exchanges, receipts, verdict)
    verdict.claims.update(
        platform=platform,
        promised={"model_digest": audit.model_digest, "dataset_digest": audit.dataset_digest,
                  "spec_digest": audit.spec_digest, "judges_digest": audit.judges_digest,
                  "finished_at": audit.finished_at,
                  "statement_digest": audit.statement_digest,
                  "log": None if audit.ref is None else f"{audit.ref.log_origin} entry {audit.ref.log_index}",
                  "results": headline(audit.results)},
        served=served,
    )
    return verdict


# --- the audit and the gateway -------------------------------------------------------------------
def _audit(bundle: dict[str, Any], policy: Policy, at: datetime, witness_state: str | None,
           verdict: Verdict) -> _Audit:
    audit = verify_bundle(bundle, policy, at=at, witness_state=witness_state)
    failed = [s.name for s in audit.failures]
    verdict.check("audit bundle", audit.verified,
                  "the audit bundle verifies under the policy (its steps follow, marked \"audit:\")",
                  f"the audit bundle does not verify: {', '.join(failed) or 'no check passed'} failed")
    verdict.extend(audit, "audit: ")
    verdict.unpinned = list(audit.unpinned)
    verdict.claims["audit"] = audit.claims

    envelope = AuditBundle.from_json(bundle).envelope   # verify_bundle parsed it already
    payload = envelope.payload
    try:
        statement = parse_statement(payload)
    except ParseError:      # the "audit: statement" step says why
        statement = None
    try:
        entry = LogEntry.from_json(bundle[LOG_ENTRY_KEY]) if LOG_ENTRY_KEY in bundle else None
    except ParseError:      # the "audit: log entry" step says why
        entry = None
    digest = payload_digest(envelope)
    ref = None if entry is None else AuditRef(digest, entry.origin, entry.index)
    if statement is None:
        return _Audit(ref, digest, None)
    return _Audit(ref, digest, statement.subject_digest, statement.digest_of("dataset"), statement.digest_of("spec"),
                  statement.digest_of("judges"), statement.finished_at.isoformat(), statement.results)


def _serving(serving: ServingEvidence, audit: _Audit, policy: Policy, at: datetime, verdict: Verdict) -> bytes:
    """The steps for the serving evidence; returns the gateway's attested receipt-signing key."""
    ev, keys = serving.evidence, serving.gateway
    key = keys.signing_key.public
    if ev.platform not in CPU_PLATFORMS:
        verdict.fail("serving: evidence platform", f"{ev.platform} evidence cannot stand alone; a CPU TEE must vouch")
    verify_evidence(ev, at=at, policy=policy, verdict=verdict, prefix="serving: ",
                    expected_report_data=serving_binding(key, keys.hpke.suite, keys.hpke.public, keys.tls.public,
                                                     serving.nonce_bytes))
    for name in policy.unpinned(ev.platform):
        if name not in verdict.unpinned:
            verdict.unpinned.append(name)
    # What the gateway says it serves (its receipts sign the same facts, checked per exchange).
    verdict.check("serving: platform", serving.platform == ev.platform, f"the gateway says {serving.platform}",
                  f"the gateway says {serving.platform}, its evidence is {ev.platform}")
    verdict.check("serving: model digest", serving.model.digest == audit.model_digest,
                  f"the gateway serves {serving.model.digest}, the audited model",
                  f"the gateway serves {serving.model.digest}, the audit is of {audit.model_digest}")
    verdict.check("serving: audit ref", audit.ref is not None and serving.audit == audit.ref,
                  "the gateway serves under the disclosed audit", _ref_mismatch(serving.audit, audit))
    return key


def _ref_mismatch(got: AuditRef, audit: _Audit) -> str:
    if audit.ref is None:
        return (f"names the audit at {got.log_origin} entry {got.log_index}, and the disclosed bundle has no "
                "log entry to compare")
    differ = [f"{name} {g!r}, not {w!r}" for name, g, w in (
        ("statement", got.statement_digest, audit.ref.statement_digest), ("log", got.log_origin, audit.ref.log_origin),
        ("log index", got.log_index, audit.ref.log_index)) if g != w]
    return "names another audit: " + "; ".join(differ)


# --- one exchange --------------------------------------------------------------------------------
def _exchange(n: int, ex: Exchange, key: bytes, platform: str, audit: _Audit, policy: Policy, at: datetime,
              witness_state: str | None, verdict: Verdict) -> tuple[Receipt | None, dict[str, Any] | None]:
    """The steps of exchange `n`; returns its receipt (None if unreadable) and its batch's log position."""
    p = f"exchange {n}: "
    env = ex.proof.receipt
    verdict.check(p + "receipt signature", env.payload_type == dsse.IN_TOTO_PAYLOAD_TYPE and dsse.verify(env, key),
                  "DSSE signature by the attested gateway key verifies",
                  "DSSE signature does not verify with the attested gateway key: the receipt was altered or signed "
                  "by another key")
    try:
        receipt = parse_receipt(env, f"exchange {n} receipt")
    except ParseError as exc:
        verdict.fail(p + "receipt", str(exc))
        return None, None
    r = receipt.predicate
    problems = []
    if ex.proof.id != r.id:
        problems.append(f"the proof is for receipt {ex.proof.id[:40]!r}, the receipt's id is {r.id}")
    if datetime.fromisoformat(r.time) > at:
        problems.append(f"issued {r.time}, after the verification time {at.isoformat()}")
    verdict.check(p + "receipt", not problems, f"receipt {r.id}, sequence {r.sequence}, issued {r.time}",
                  "; ".join(problems))
    verdict.check(p + "receipt key", r.gateway.signing_key == key and r.gateway.platform == platform,
                  "names the attested gateway key",
                  "names another gateway key than the attested one" if r.gateway.signing_key != key else
                  f"says platform {r.gateway.platform}, the gateway's evidence is {platform}")
    for what, data, want in (("request", ex.request, r.request.sha256), ("response", ex.response, r.response.sha256)):
        got = hashlib.sha256(data).hexdigest()
        verdict.check(f"{p}{what} bytes", got == want, f"{len(data)} bytes hash to the receipt's sha256 {want}",
                      f"the disclosed {what} hashes to {got}, the receipt binds {want}: the {what} was altered")
    _request(p, ex.request, r, verdict)
    allowlist.check(verdict, p + "code identity", r.gateway.code_identity, policy.code_identities)
    verdict.check(p + "model digest", r.model.digest == audit.model_digest,
                  f"{r.model.digest} is the audited model",
                  f"the gateway served {r.model.digest}, the audit is of {audit.model_digest}")
    verdict.check(p + "audit ref", audit.ref is not None and r.audit == audit.ref,
                  "served under the disclosed audit (statement digest, log origin and index)",
                  _ref_mismatch(r.audit, audit))
    return receipt, _batch(p, ex, receipt, env, key, policy, witness_state, verdict)


def _request(p: str, body: bytes, r: ReceiptPredicate, verdict: Verdict) -> None:
    """The request is the API call the receipt says it is, and asked for what was applied."""
    try:
        req = load_json(body, "request")
    except ParseError as exc:
        verdict.fail(p + "request", str(exc))
        return
    if not isinstance(req, dict):
        verdict.fail(p + "request", "the request body is not a JSON object")
        return
    problems = []
    if r.request.method != "POST" or r.request.path not in (CHAT, COMPLETIONS):
        problems.append(f"{r.request.method} {r.request.path} is not a completion call")
    if r.request.path == CHAT and not isinstance(req.get("messages"), list):
        problems.append("a chat request without messages")
    if r.request.path == COMPLETIONS and not isinstance(req.get("prompt"), str):
        problems.append("a completion request without a prompt string")
    if req.get("model") != r.model.name:
        problems.append(f"asks for model {str(req.get('model'))[:60]!r}, the receipt names {r.model.name!r}")
    stream = req.get("stream") or False
    if stream is not r.response.stream:
        problems.append(f"stream is {stream!r} in the request, {r.response.stream} in the receipt")
    verdict.check(p + "request", not problems, f"POST {r.request.path} for {r.model.name}"
                  + (", streamed" if r.response.stream else ""), "; ".join(problems))
    _sampling(p, req, r.request.path, r.sampling, verdict)


_INTEGERS = ("seed", "max_tokens", "max_completion_tokens")


def _sampling(p: str, req: dict[str, Any], path: str, applied: Sampling, verdict: Verdict) -> None:
    """Every sampling parameter the request sets (not null) must be the one the receipt says was applied."""
    limits = ("max_tokens", "max_completion_tokens") if path == CHAT else ("max_tokens",)
    wanted: list[tuple[str, Any]] = [("temperature", applied.temperature), ("top_p", applied.top_p),
                                     *((name, applied.max_tokens) for name in limits),
                                     ("seed", applied.seed), ("stop", applied.stop)]
    set_by_request = [name for name, _ in wanted if req.get(name) is not None]
    problems = [f"the request asks {name} {repr(req[name])[:60]}, the gateway applied {got!r}" for name, got in wanted
                if name in set_by_request and not _same(name, req[name], got)]
    applied_text = (f"temperature {applied.temperature:g}, top_p {applied.top_p:g}, max_tokens {applied.max_tokens}, "
                    f"seed {applied.seed}, stop {list(applied.stop)}")
    verdict.check(p + "sampling", not problems,
                  f"applied {applied_text}; the request set {', '.join(set_by_request) or 'none'}, the rest are the "
                  "gateway's defaults", "; ".join(problems))


def _same(name: str, asked: Any, applied: Any) -> bool:
    """A request's parameter as the API reads it equals the applied one (stop: a string is one stop)."""
    if name == "stop":
        return ((asked,) if isinstance(asked, str) else tuple(asked) if isinstance(asked, list) else None) == applied
    if isinstance(asked, bool) or not isinstance(asked, int if name in _INTEGERS else (int, float)):
        return False
    return asked == applied


def _batch(p: str, ex: Exchange, receipt: Receipt, env: dsse.Envelope, key: bytes, policy: Policy,
           witness_state: str | None, verdict: Verdict) -> dict[str, Any] | None:
    """The receipt is a leaf of a batch the gateway signed, and the batch is in the log; returns the
    batch's proven log position."""
    proof, r = ex.proof, receipt.predicate
    required = policy.log is not None and policy.log.require_inclusion
    if proof.batch is None:
        why = f"the receipt is {proof.status}, in no signed batch yet" + (
            f" (the gateway's last publish failed: {proof.log_error[:200]})" if proof.log_error else "")
        if required:
            verdict.fail(p + "batch", f"{why}, and the policy requires transparency-log inclusion; fetch the receipt "
                         f"again (GET /v1/receipts/{r.id}) once it is logged")
        else:
            verdict.skip(p + "batch", f"{why}; the policy does not require transparency-log inclusion")
        return None
    b = proof.batch
    verdict.check(p + "batch signature", b.envelope.payload_type == dsse.IN_TOTO_PAYLOAD_TYPE
                  and dsse.verify(b.envelope, key), "DSSE signature by the attested gateway key verifies",
                  "the batch's DSSE signature does not verify with the attested gateway key")
    try:
        batch = parse_batch(b.envelope, f"{p}batch")
    except ParseError as exc:
        verdict.fail(p + "batch", str(exc))
        return None
    bp = batch.predicate
    problems = []
    if bp.gateway != r.gateway:
        problems.append("the batch names another gateway than the receipt")
    if bp.audit != r.audit:
        problems.append("the batch names another audit than the receipt")
    if not bp.first_sequence <= r.sequence <= bp.last_sequence:
        problems.append(f"sequence {r.sequence} is outside the batch's {bp.first_sequence}..{bp.last_sequence}")
    elif b.index != r.sequence - bp.first_sequence:
        problems.append(f"index {b.index} is not sequence {r.sequence} - firstSequence {bp.first_sequence}")
    verdict.check(p + "batch", not problems, f"receipt {b.index + 1} of the batch of sequences "
                  f"{bp.first_sequence}..{bp.last_sequence}", "; ".join(problems))
    receipt_leaf = leaf_hash(leaf(payload_digest(env)))
    verdict.check(p + "batch inclusion", verify_inclusion(receipt_leaf, b.index, bp.count, b.inclusion_proof,
                                                          batch.root),
                  f"the Merkle proof leads from the receipt to the batch root {batch.root.hex()}",
                  f"the Merkle proof does not lead from the receipt at index {b.index} of {bp.count} to the batch "
                  "root: the receipt, the batch or the proof was altered")
    return check_log_entry(batch_log_entry_bytes(b.envelope), None if b.log_entry is None else b.log_entry.to_json(),
                           policy.log, verdict, witness_state, prefix=p + "batch ", what="receipt batch",
                           missing_hint=f"fetch the receipt again (GET /v1/receipts/{r.id}) once its batch is logged")


# --- across exchanges ----------------------------------------------------------------------------
def _chain(envelopes: list[dsse.Envelope], receipts: list[Receipt | None], verdict: Verdict) -> None:
    """One conversation from its first exchange, none left out; the gateway's sequence in order."""
    unread = [str(n) for n, r in enumerate(receipts, 1) if r is None]
    if unread:
        for name in ("conversation chain", "receipt sequence"):
            verdict.fail(name, f"the receipt of exchange {', '.join(unread)} could not be read")
        return
    preds = [r.predicate for r in receipts if r is not None]
    digests = [payload_digest(e) for e in envelopes]
    problems = []
    if preds[0].conversation:
        problems.append("exchange 1 continues an earlier exchange of its conversation that is not disclosed: "
                        "the earlier exchanges are withheld")
    for n in range(1, len(preds)):
        conv = preds[n].conversation
        if conv == digests[n - 1]:
            continue
        if not conv:
            problems.append(f"exchange {n + 1} starts a new conversation: a disclosure holds one conversation")
        elif conv in digests:
            problems.append(f"exchange {n + 1} continues exchange {digests.index(conv) + 1}, not exchange {n}")
        else:
            problems.append(f"exchange {n + 1} continues an exchange that is not disclosed: an exchange between "
                            f"exchange {n} and exchange {n + 1} is withheld")
    verdict.check("conversation chain", not problems,
                  f"{len(preds)} exchange(s), the first starting the conversation, each continuing the one before",
                  "; ".join(problems))

    problems = []
    for n in range(1, len(preds)):
        before, now = preds[n - 1], preds[n]
        if now.sequence <= before.sequence:
            problems.append(f"exchange {n + 1} has sequence {now.sequence}, not after exchange {n}'s {before.sequence}")
        elif now.sequence == before.sequence + 1 and now.previous != digests[n - 1]:
            problems.append(f"exchange {n + 1} (sequence {now.sequence}) does not name exchange {n}'s receipt as "
                            "its previous one")
    seqs = ", ".join(str(pr.sequence) for pr in preds)
    verdict.check("receipt sequence", not problems, f"sequences {seqs} in the gateway's order, consecutive ones "
                  "chained", "; ".join(problems))


def _history(exchanges: tuple[Exchange, ...], receipts: list[Receipt | None], verdict: Verdict) -> None:
    """What the model was shown is what it said: exchange 1 carries no answer of the model's that no
    receipt backs, and each later request repeats the one before, with the answer it got, unchanged."""
    if any(r is None for r in receipts):
        verdict.fail("conversation history", "a receipt could not be read")
        return
    problems = []
    previous: tuple[Any, str | None] | None = None
    for n, (ex, receipt) in enumerate(zip(exchanges, receipts), 1):
        r = receipt.predicate  # type: ignore[union-attr]
        request = _json_or_none(ex.request)
        answer = answer_text(r.request.path, r.response.stream, ex.response)
        context = _context(request)
        if context is None:
            problems.append(f"exchange {n}'s request holds no messages or prompt")
        elif previous is None:
            if isinstance(context, list) and any(m.get("role") == "assistant" for m in context):
                problems.append("exchange 1 puts words in the model's mouth: it carries assistant turns no "
                                "disclosed receipt backs")
        else:
            before, said = previous
            expected = (before + [{"role": "assistant", "content": said}] if isinstance(before, list)
                        else None if before is None else before + (said or ""))
            if isinstance(context, list) and isinstance(expected, list):
                grew = [{"role": m.get("role"), "content": _content(m.get("content"))} for m in context]
                ok = grew[:len(expected)] == expected and len(grew) > len(expected)
            else:
                ok = isinstance(context, str) and isinstance(expected, str) and context.startswith(expected)
            if not ok:
                problems.append(f"exchange {n}'s request does not repeat exchange {n - 1}'s request and the answer "
                                "it got unchanged: the conversation shown to the model differs from the one "
                                "disclosed")
        if context is not None:
            previous = ([{"role": m.get("role"), "content": _content(m.get("content"))} for m in context]
                        if isinstance(context, list) else context, answer)
    verdict.check("conversation history", not problems,
                  "each request carries the conversation so far exactly as disclosed, answers included",
                  "; ".join(problems))


def _context(request: Any) -> list[dict[str, Any]] | str | None:
    if not isinstance(request, dict):
        return None
    if isinstance(request.get("prompt"), str):
        return request["prompt"]
    messages = request.get("messages")
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return messages
    return None


# --- what a regulator reads ----------------------------------------------------------------------
def headline(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task, the metrics (not their standard errors), named without lm-eval's ",none" filter."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.setdefault(task, {})[name if filt in ("", "none") else key] = value
    return out


def _served(n: int, ex: Exchange, receipt: Receipt | None, logged: dict[str, Any] | None) -> dict[str, Any]:
    """The exchange as the receipt binds it: prompt, answer and what was applied."""
    out: dict[str, Any] = {"exchange": n}
    request = _json_or_none(ex.request)
    if receipt is None:
        return {**out, "prompt": prompt_text(request), "answer": None}
    r = receipt.predicate
    answer = answer_text(r.request.path, r.response.stream, ex.response)
    return {**out, "receipt": r.id, "sequence": r.sequence, "time": r.time, "path": r.request.path,
            "stream": r.response.stream, "status": r.response.status,
            "sampling": {"temperature": r.sampling.temperature, "top_p": r.sampling.top_p,
                         "max_tokens": r.sampling.max_tokens, "seed": r.sampling.seed, "stop": list(r.sampling.stop)},
            "batch_log": None if logged is None else f"{logged['origin']} entry {logged['index']}",
            "prompt": prompt_text(request), "answer": answer}


def _json_or_none(data: bytes | str) -> Any:
    try:
        return load_json(data, "body")
    except ParseError:
        return None


def prompt_text(request: Any) -> str | None:
    """The last user message of a chat request, or a completion request's prompt."""
    if not isinstance(request, dict):
        return None
    if isinstance(request.get("prompt"), str):
        return request["prompt"]
    messages = request.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) \
        else []
    return _content(users[-1].get("content")) if users else None


def _content(content: Any) -> str | None:
    """A message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def answer_text(path: str, stream: bool, response: bytes) -> str | None:
    """The answer in the response bytes: choices[0]'s message content (chat) or text (completions);
    for a stream, the deltas of its SSE `data:` events up to `[DONE]`. None if there is none."""
    if not stream:
        return _choice_text(path, _json_or_none(response), "message")
    pieces = []
    for data in sse_data(response):
        if data == "[DONE]":
            break
        piece = _choice_text(path, _json_or_none(data), "delta")
        if piece is not None:
            pieces.append(piece)
    return "".join(pieces) if pieces else None


def _choice_text(path: str, obj: Any, member: str) -> str | None:
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    if path == COMPLETIONS:
        text = choices[0].get("text")
        return text if isinstance(text, str) else None
    message = choices[0].get(member)
    return _content(message.get("content")) if isinstance(message, dict) else None


def sse_data(stream: bytes) -> list[str]:
    """The data of each server-sent event (HTML Living Standard §9.2.6): `data:` lines of one event
    joined by newlines; other fields and comments ignored."""
    events, lines = [], []
    text = stream.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if not line:
            if lines:
                events.append("\n".join(lines))
            lines = []
        elif line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        events.append("\n".join(lines))
    return events
