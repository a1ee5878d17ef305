"""The client side of a receipt gateway (docs/RECEIPTS.md): attest it, pin its TLS key, provision the
model (provider), chat and keep every byte with its receipt (user), and pack a disclosure.

Nothing is sent to a gateway whose serving evidence did not verify under the caller's policy for a
nonce the caller just made, and whose audit bundle did not verify under the same policy. The HTTPS
channel trusts exactly the certificate whose key that evidence binds: no certificate authority.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from aaudit.client import AttestationRefused, _spki, fetch_certificate
from gateway.app import CONVERSATION_HEADER, RECEIPT_EVENT, RECEIPT_HEADER
from gateway.provision import UPLOAD_HEADER, ProvisionHeader
from sealing import keywrap
from sealing.stream import SealedAsset, SealedReader, read_key_file
from verifier.binding import NONCE_LEN, serving_binding, upload_message, wrap_info
from verifier import dsse
from verifier.bundle import AuditBundle, verify_bundle
from verifier.disclosure import answer_text
from verifier.errors import AAuditError, UnusableInput
from verifier.evidence import verify_evidence
from verifier.inputs import host_port, load_json
from verifier.logentry import LogEntry
from verifier.models import CPU_PLATFORMS, Verdict
from verifier.policy import Policy
from verifier.receipt import Disclosure, Exchange, ReceiptProof, ServingEvidence, parse_receipt, payload_digest

MAX_RESPONSE = 64 << 20


class GatewayError(AAuditError):
    """The gateway refused a request or answered something unusable."""


@dataclass(frozen=True)
class Attested:
    serving: ServingEvidence
    verdict: Verdict


@dataclass(frozen=True)
class Answer:
    request: bytes
    response: bytes
    receipt_id: str
    status: int
    path: str
    stream: bool

    @property
    def text(self) -> str:
        return answer_text(self.path, self.stream, self.response) or ""


class GatewayClient:
    """One caller's pinned HTTPS connection to one gateway."""

    def __init__(self, target: str, timeout: float = 120.0) -> None:
        self.target = host_port(target, "--gateway", "127.0.0.1:8443")
        cert = fetch_certificate(target, min(timeout, 30.0), alpn=("http/1.1",))
        self.pinned_tls = _spki(cert)
        context = ssl.create_default_context(cadata=cert.decode("ascii"))
        context.check_hostname = False  # the certificate itself is the trust anchor, pinned; no DNS name to check
        self.ssl_context = context
        self.base_url = f"https://{target}"
        self._http = httpx.Client(base_url=self.base_url, verify=context, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, **params: str) -> Any:
        try:
            resp = self._http.get(path, params=params)  # JSON answers, read whole (completions: see ask())
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway {self.target} unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise GatewayError(f"gateway {self.target} refused {path}: {_message(resp)}")
        return load_json(resp.content, f"the gateway's answer to {path}")

    # --- attestation ---------------------------------------------------------------------------
    def attest(self, policy: Policy, *, at: datetime | None = None) -> Attested:
        """Fresh nonce -> serving evidence -> verified under `policy` for exactly the keys it names,
        which must include the TLS key this channel is pinned to."""
        nonce = os.urandom(NONCE_LEN)
        serving = ServingEvidence.from_json(self._get("/v1/attestation", nonce=nonce.hex()))
        keys = serving.gateway
        verdict = Verdict(subject=f"gateway at {self.target}")
        if serving.evidence.platform not in CPU_PLATFORMS:
            verdict.fail("evidence platform", f"{serving.evidence.platform} evidence cannot stand alone")
        verdict.check("nonce", serving.nonce_bytes == nonce, "the evidence answers our fresh nonce",
                      "the evidence answers another nonce (a replay?)")
        verdict.check("channel key", keys.tls.public == self.pinned_tls,
                      "the attested TLS key is the one this channel is pinned to",
                      "the attested TLS key is not the key of this channel's certificate (a machine in the middle?)")
        verify_evidence(serving.evidence, at=at or datetime.now(timezone.utc), policy=policy, verdict=verdict,
                        expected_report_data=serving_binding(keys.signing_key.public, keys.hpke.suite, keys.hpke.public,
                                                         keys.tls.public, nonce))
        if not verdict.verified:
            raise AttestationRefused(verdict)
        return Attested(serving, verdict)

    def audit_bundle(self, policy: Policy, serving: ServingEvidence) -> dict[str, Any]:
        """The audit the gateway serves under, verified under `policy` and matching the evidence."""
        bundle = self._get("/v1/audit")
        verdict = verify_bundle(bundle, policy, at=datetime.now(timezone.utc))
        if not verdict.verified:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in verdict.failures) or "unpinned: " + \
                ", ".join(verdict.unpinned)
            raise GatewayError(f"the audit this gateway serves under does not verify under the policy ({reasons})")
        if verdict.claims.get("model_digest") != serving.model.digest:
            raise GatewayError("the gateway serves a model other than the one its audit bundle measured")
        parsed = AuditBundle.from_json(bundle)
        entry = LogEntry.from_json(parsed.log_entry) if parsed.log_entry is not None else None
        if entry is None or (payload_digest(parsed.envelope), entry.origin, entry.index) != \
                (serving.audit.statement_digest, serving.audit.log_origin, serving.audit.log_index):
            raise GatewayError("the audit bundle the gateway hands out is not the audit its evidence names")
        return bundle

    @staticmethod
    def check_receipt(attested: Attested, answer: "Answer", proof: ReceiptProof, conversation: str) -> None:
        """Check a receipt the moment it arrives, not at disclosure: signed by the attested key, over
        exactly the bytes we sent and got, for this model and audit, continuing our conversation."""
        s = attested.serving
        if not dsse.verify(proof.receipt, s.gateway.signing_key.public):
            raise GatewayError(f"receipt {proof.id} is not signed by the attested gateway key")
        r = parse_receipt(proof.receipt).predicate
        problems = [what for what, ok in (
            ("id", r.id == answer.receipt_id == proof.id),
            ("request bytes", r.request.sha256 == hashlib.sha256(answer.request).hexdigest()),
            ("response bytes", r.response.sha256 == hashlib.sha256(answer.response).hexdigest()),
            ("model", r.model == s.model), ("audit", r.audit == s.audit), ("conversation", r.conversation == conversation),
        ) if not ok]
        if problems:
            raise GatewayError(f"receipt {proof.id} does not match this exchange ({', '.join(problems)})")

    # --- provider: the model -------------------------------------------------------------------
    def provision(self, attested: Attested, asset: SealedAsset, identity: Any,
                  on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        s = attested.serving
        party, signing = identity.public_raw(), s.gateway.signing_key.public
        nonce = s.nonce_bytes
        data_key = read_key_file(asset.key_path)
        wrapped = keywrap.wrap(data_key, s.gateway.hpke.public, s.gateway.hpke.suite,
                               wrap_info("model", asset.digest, signing, party, s.serving_id, nonce))
        del data_key
        reader = SealedReader(asset.sealed_path)
        signature = identity.sign(upload_message(signing, s.serving_id, "model", asset.digest, reader.header,
                                                 wrapped, nonce))
        header = ProvisionHeader(asset.digest, wrapped, reader.header, party, nonce, signature)

        def body() -> Iterator[bytes]:
            for chunk in reader:
                yield chunk
                if on_progress:
                    on_progress(len(chunk))

        try:
            resp = self._http.post("/v1/provision", content=body(), headers={UPLOAD_HEADER: header.encode()},
                                   timeout=None)
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway {self.target}: upload failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise GatewayError(f"gateway {self.target} refused the model: {_message(resp)}")
        return load_json(resp.content, "the gateway's answer to the upload")

    # --- user: answers and receipts --------------------------------------------------------------
    def ask(self, path: str, body: dict[str, Any], conversation: str = "") -> Answer:
        """Send one request and keep its exact bytes, the exact response bytes and the receipt id."""
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"content-type": "application/json"}
        if conversation:
            headers[CONVERSATION_HEADER] = conversation
        try:
            with self._http.stream("POST", path, content=raw, headers=headers) as resp:
                chunks, size = [], 0
                for chunk in resp.iter_raw():
                    size += len(chunk)
                    if size > MAX_RESPONSE:
                        raise GatewayError(f"the answer is larger than {MAX_RESPONSE} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway {self.target} unreachable: {type(exc).__name__}: {exc}") from None
        data = b"".join(chunks)
        if resp.status_code != 200:
            raise GatewayError(f"gateway {self.target} refused the request: {_message(resp, data)}")
        rid = resp.headers.get(RECEIPT_HEADER, "")
        if not rid:
            raise GatewayError("the gateway answered without a receipt id")
        if body.get("stream"):
            # the receipt covers the bytes before its own event; keep exactly those
            cut = data.rfind(b"\n\n" + RECEIPT_EVENT)
            if cut < 0:
                raise GatewayError("the stream ended without its receipt event")
            data = data[:cut + 2]
        return Answer(raw, data, rid, resp.status_code, path, bool(body.get("stream")))

    def receipt(self, receipt_id: str, *, wait_logged_s: float = 0.0) -> ReceiptProof:
        """The receipt and its proofs; with `wait_logged_s`, poll until its batch is in the log."""
        deadline = time.monotonic() + wait_logged_s
        while True:
            proof = ReceiptProof.from_json(self._get(f"/v1/receipts/{receipt_id}"))
            if proof.status == "logged" or time.monotonic() >= deadline:
                return proof
            time.sleep(0.25)


def _message(resp: httpx.Response, data: bytes | None = None) -> str:
    raw = resp.content if data is None else data
    try:
        return f"{resp.status_code}: {json.loads(raw)['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


# --- a conversation kept on disk, and its disclosure ---------------------------------------------
class Conversation:
    """A folder holding one conversation: the serving evidence, the audit bundle, and per exchange
    the exact request and response bytes and the receipt proof (all private to the user, mode 0600)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _write(self, name: str, data: bytes) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def _read(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except OSError as exc:
            raise UnusableInput(f"{self.folder}: cannot read {name}: {exc.strerror}") from None

    def exchanges(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name.split(".")[0]) for p in self.folder.glob("*.request.json")
                      if p.name.split(".")[0].isdigit())

    def start(self, serving: ServingEvidence, bundle: dict[str, Any]) -> None:
        self._write("serving.json", json.dumps(serving.to_json(), indent=1).encode())
        self._write("audit-bundle.json", json.dumps(bundle, indent=1).encode())

    def serving_id(self) -> str | None:
        if not (self.folder / "serving.json").is_file():
            return None
        return ServingEvidence.from_json(load_json(self._read("serving.json"), "serving.json")).serving_id

    def add(self, answer: Answer, proof: ReceiptProof) -> int:
        n = (self.exchanges() or [0])[-1] + 1
        self._write(f"{n:03d}.request.json", answer.request)
        self._write(f"{n:03d}.response", answer.response)
        self._write(f"{n:03d}.receipt.json", json.dumps(proof.to_json(), indent=1).encode())
        return n

    def update_proof(self, n: int, proof: ReceiptProof) -> None:
        self._write(f"{n:03d}.receipt.json", json.dumps(proof.to_json(), indent=1).encode())

    def proof(self, n: int) -> ReceiptProof:
        return ReceiptProof.from_json(load_json(self._read(f"{n:03d}.receipt.json"), f"{n:03d}.receipt.json"))

    def last_receipt_digest(self) -> str:
        numbers = self.exchanges()
        return payload_digest(self.proof(numbers[-1]).receipt) if numbers else ""

    def history(self) -> list[dict[str, str]]:
        """The chat messages so far, to send with the next question."""
        messages: list[dict[str, str]] = []
        for n in self.exchanges():
            request = load_json(self._read(f"{n:03d}.request.json"), "request")
            if isinstance(request, dict) and "messages" in request:
                messages = list(request["messages"])
                messages.append({"role": "assistant", "content": answer_text(
                    "/v1/chat/completions", bool(request.get("stream")), self._read(f"{n:03d}.response")) or ""})
        return messages

    def disclosure(self) -> Disclosure:
        numbers = self.exchanges()
        if not numbers:
            raise UnusableInput(f"{self.folder} holds no exchanges")
        exchanges = []
        for n in numbers:
            proof = self.proof(n)
            if proof.status != "logged":
                raise UnusableInput(f"exchange {n}'s receipt is not in the transparency log yet (status "
                                    f"{proof.status}); run `aaudit user refresh` and try again")
            exchanges.append(Exchange(self._read(f"{n:03d}.request.json"), self._read(f"{n:03d}.response"), proof))
        serving = ServingEvidence.from_json(load_json(self._read("serving.json"), "serving.json"))
        bundle = load_json(self._read("audit-bundle.json"), "audit-bundle.json")
        return Disclosure(tuple(exchanges), serving, bundle)


def reprove(disclosure: Disclosure, backend: Any, log_key: str) -> Disclosure:
    """The same disclosure with the bundle's and every batch's log entry proven under one (the latest)
    checkpoint, so a regulator's witness sees one tree size, not several to reconcile."""
    from tlog.publish import prove_entry, refresh_bundle
    from verifier.logentry import LogEntry
    from verifier.receipt import batch_log_entry_bytes

    bundle = refresh_bundle(backend, disclosure.bundle, log_key=log_key)
    size = LogEntry.from_json(bundle["logEntry"]).tree_size
    exchanges = []
    for ex in disclosure.exchanges:
        batch = ex.proof.batch
        if batch is None or batch.log_entry is None:
            raise UnusableInput(f"receipt {ex.proof.id} is not in the log yet; run `aaudit user refresh` first")
        entry = prove_entry(backend, batch_log_entry_bytes(batch.envelope), batch.log_entry.index, tree_size=size,
                            log_key=log_key)
        exchanges.append(replace(ex, proof=replace(ex.proof, batch=replace(batch, log_entry=entry))))
    return replace(disclosure, exchanges=tuple(exchanges), bundle=bundle)

