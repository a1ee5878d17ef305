"""The receipt gateway's HTTP API (docs/RECEIPTS.md): the OpenAI API in front of the engine, with a
signed receipt for every answer, the serving evidence, the provider's model upload and the proofs.

Attackers this module refuses (tests/test_gateway.py): a client sending parameters the receipt would
not bind (refused by name), duplicate JSON keys that the engine might read differently (the strict
reader refuses them; the engine gets the gateway's own serialisation), oversized bodies, a
conversation continuing a receipt this boot never issued, a model upload by anyone but the audited
provider or of anything but the audited model, and a nonce used twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import secrets
import time
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from enclave.keys import BootKeys
from enclave.tee import CompositeAttester
from gateway.provision import UPLOAD_HEADER, ProvisionHeader, Provisioner
from gateway.receipts import ReceiptChain, ReceiptStoreFull
from verifier.binding import NONCE_LEN, serving_binding
from verifier.bundle import EnclaveKeys, HpkeKey, SigningKey, TlsKey
from verifier.errors import AAuditError, ParseError, UnusableInput
from verifier.inputs import load_json
from verifier.receipt import AuditRef, GatewayRef, ModelRef, RequestRef, ResponseRef, Sampling, ServingEvidence

log = logging.getLogger("aaudit.gateway")

CONVERSATION_HEADER = "aaudit-conversation"
RECEIPT_HEADER = "aaudit-receipt-id"
RECEIPT_EVENT = b"event: aaudit-receipt\ndata: "
MAX_SEED = (1 << 53) - 1  # receipts are RFC 8785 JSON: integers beyond this have no exact form
_COMMON = {"model", "temperature", "top_p", "max_tokens", "seed", "stop", "stream", "stream_options", "n", "user"}
_ALLOWED = {"/v1/chat/completions": _COMMON | {"messages", "max_completion_tokens"},
            "/v1/completions": _COMMON | {"prompt"}}
_ROLES = {"system", "user", "assistant"}


class BadRequest(AAuditError):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


@dataclass(frozen=True)
class Settings:
    served_name: str
    max_tokens_default: int = 256     # chat; completions default to 16 like OpenAI's
    max_tokens_limit: int = 4096
    max_request_bytes: int = 1 << 20
    max_messages: int = 256
    max_upload_bytes: int = 1 << 40
    engine_timeout_s: float = 600.0
    body_timeout_s: float = 30.0      # a request body must arrive this soon (slow senders hold a slot)
    per_client: int = 64              # requests one client address may have in flight
    attest_per_s: float = 10.0        # attestations per second one client address may ask for


def _error(message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def applied(path: str, body: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], Sampling]:
    """The request the engine gets (defaults made explicit) and the sampling parameters it applies."""
    unknown = sorted(set(body) - _ALLOWED[path])
    if unknown:
        raise BadRequest(f"parameter {unknown[0]!r} is not supported here: a receipt binds only the parameters "
                         f"it names ({', '.join(sorted(_ALLOWED[path]))}); see docs/RECEIPTS.md", unknown[0])
    if body.get("model") != settings.served_name:
        raise BadRequest(f"this gateway serves only the audited model {settings.served_name!r}", "model", 404)
    chat = path == "/v1/chat/completions"
    out: dict[str, Any] = {"model": settings.served_name}
    if chat:
        out["messages"] = _messages(body.get("messages"), settings)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be one string", "prompt")
        out["prompt"] = prompt
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise BadRequest("top_p must be greater than 0", "top_p")
    max_tokens = _max_tokens(body, chat, settings)
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(1 << 31)  # applied explicitly, so the receipt makes the answer reproducible
    elif isinstance(seed, bool) or not isinstance(seed, int) or not -MAX_SEED <= seed <= MAX_SEED:
        raise BadRequest(f"seed must be an integer within +-{MAX_SEED}", "seed")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stops):
        raise BadRequest("stop must be a string or a list of at most 4 non-empty strings", "stop")
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
        raise BadRequest("only n = 1 is served: each answer gets its own receipt", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream or not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise BadRequest("stream_options may only be {\"include_usage\": bool}, with stream = true",
                             "stream_options")
        out["stream_options"] = options
    if "user" in body and not isinstance(body["user"], str):
        raise BadRequest("user must be a string", "user")
    out.update(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stops, stream=stream)
    return out, Sampling(temperature, top_p, max_tokens, seed, tuple(stops))


def _messages(value: Any, settings: Settings) -> list[dict[str, str]]:
    if not isinstance(value, list) or not 0 < len(value) <= settings.max_messages:
        raise BadRequest(f"messages must be a list of 1 to {settings.max_messages} messages", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or not isinstance(m.get("role"), str) \
                or m["role"] not in _ROLES \
                or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": string}}",
                             "messages")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be a number from {lo:g} to {hi:g}", name)
    return float(value)


def _max_tokens(body: dict[str, Any], chat: bool, settings: Settings) -> int:
    given = [body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise BadRequest("max_tokens and max_completion_tokens differ; give one", "max_tokens")
    value = given[0] if given else (settings.max_tokens_default if chat else 16)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= settings.max_tokens_limit:
        raise BadRequest(f"max_tokens must be an integer from 1 to {settings.max_tokens_limit}", "max_tokens")
    return value


class Gateway:
    """One gateway boot: keys, the audit it serves under, the model once provisioned, the receipts."""

    def __init__(self, keys: BootKeys, attester: CompositeAttester, code_identity: str, bundle: dict[str, Any],
                 audit: AuditRef, model_digest: str, provider_key: bytes, workdir: Path, settings: Settings,
                 start_engine: Callable[[Path], Any]) -> None:
        self.keys, self.attester, self.code_identity = keys, attester, code_identity
        self.bundle, self.audit, self.settings = bundle, audit, settings
        self.model = ModelRef(settings.served_name, model_digest)
        self.serving_id = secrets.token_hex(16)
        self.provisioner = Provisioner(keys, self.serving_id, provider_key, model_digest, workdir,
                                       max_bytes=settings.max_upload_bytes)
        self.chain = ReceiptChain(keys.signing, GatewayRef(keys.signing_public, code_identity, attester.platform),
                                  self.model, audit)
        self.state = "awaiting-model"
        self.engine: Any = None
        self._start_engine = start_engine
        self._http: aiohttp.ClientSession | None = None
        self._attest_slots = threading.BoundedSemaphore(4)

    # --- attestation ---------------------------------------------------------------------------
    def attest(self, nonce: bytes) -> ServingEvidence:
        self.provisioner.nonces.issue(nonce)
        hpke_pub = self.keys.hpke.public_bytes()
        with self._attest_slots:
            evidence = self.attester.attest(serving_binding(self.keys.signing_public, self.keys.hpke.suite, hpke_pub,
                                                        self.keys.tls.public_der, nonce))
        keys = EnclaveKeys(SigningKey("ed25519", self.keys.signing_public), HpkeKey(self.keys.hpke.suite, hpke_pub),
                           TlsKey(self.keys.tls.public_der))
        return ServingEvidence(nonce.hex(), evidence, keys, self.code_identity, self.attester.platform,
                               self.serving_id, self.state, self.model, self.audit)

    # --- the engine ----------------------------------------------------------------------------
    def serve_model(self, folder: Path) -> None:
        self.state = "starting"
        try:
            self.engine = self._start_engine(folder)
        except BaseException:
            self.state = "awaiting-model"
            raise
        self.state = "serving"

    def http(self) -> aiohttp.ClientSession:
        """The loopback HTTP client to the engine (aiohttp: the engine hop is most of the gateway's CPU,
        and aiohttp's C parser costs less per answer than a pure-Python client). Bytes are relayed as
        the engine sent them: no content decoding, no proxy from the environment."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                base_url=self.engine.base_url.rstrip("/").removesuffix("/v1"), auto_decompress=False,
                trust_env=False, headers={"accept-encoding": "identity"},
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=512),
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=self.settings.engine_timeout_s))
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None


async def _body(request: Request, limit: int, timeout_s: float) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise BadRequest(f"request body larger than {limit} bytes", status=413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"request body larger than {limit} bytes", status=413)
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"the request body did not arrive within {timeout_s:g} s", status=408) from None
    return b"".join(chunks)


class _RateLimit:
    """A token bucket per client address (a bounded table: the least recently seen are dropped)."""

    def __init__(self, per_s: float, burst: float, clients: int = 4096) -> None:
        self.per_s, self.burst, self.clients = per_s, burst, clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, then = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_s)
        self._buckets[client] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        while len(self._buckets) > self.clients:
            self._buckets.popitem(last=False)
        return tokens >= 1


class _Guard:
    """The outermost layer. One client address holds at most `per_client` requests at once, and an
    exception never reaches uvicorn's log with its message and traceback (they may quote a prompt):
    Starlette has answered 500 by then; only the exception's type is logged."""

    def __init__(self, app: Any, per_client: int) -> None:
        self.app, self.per_client = app, per_client
        self._active: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        if self._active[client] >= self.per_client:
            await _error(f"more than {self.per_client} requests in flight from one address; wait for answers",
                         429, kind="rate_limit_error")(scope, receive, send)
            return
        self._active[client] += 1
        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - logged by type only, see the docstring
            log.error("request failed: %s", type(exc).__name__)
        finally:
            self._active[client] -= 1
            if not self._active[client]:
                del self._active[client]


def build_app(gw: Gateway) -> Any:
    # Every attestation remembers a nonce (bounded, oldest evicted first): a flood from one address
    # must not push out the nonce a provider is about to upload with.
    attest_rate = _RateLimit(gw.settings.attest_per_s, burst=2 * gw.settings.attest_per_s)

    async def attestation(request: Request) -> Response:
        try:
            nonce = bytes.fromhex(request.query_params.get("nonce", ""))
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_LEN:
            return _error(f"nonce must be {NONCE_LEN} bytes in hex", param="nonce")
        if not attest_rate.allow((request.client or ("?", 0))[0]):
            return _error(f"more than {attest_rate.per_s:g} attestations per second from one address; each nonce "
                          "serves until used, so ask for one per session or upload", 429, kind="rate_limit_error")
        evidence = await run_in_threadpool(gw.attest, nonce)
        return JSONResponse(evidence.to_json())

    async def audit(request: Request) -> Response:
        return JSONResponse(gw.bundle)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": gw.settings.served_name, "object": "model", "created": 0, "owned_by": "attestable-audits",
             "digest": gw.model.digest}]})

    async def receipt(request: Request) -> Response:
        proof = gw.chain.proof(request.path_params["id"])
        if proof is None:
            return _error("no such receipt: not issued by this gateway boot, or forgotten after it was logged "
                          "(keep receipts: `aaudit user chat` saves them)", 404, "id", "not_found_error")
        return JSONResponse(proof.to_json())

    async def provision(request: Request) -> Response:
        if gw.state != "awaiting-model":
            return _error(f"the model is already provisioned (state {gw.state}); restart the gateway to serve "
                          "another upload", 409)
        try:
            header = ProvisionHeader.decode(request.headers.get(UPLOAD_HEADER, ""))
            receiving = await run_in_threadpool(gw.provisioner.begin, header)
        except AAuditError as exc:
            return _error(str(exc), 403 if not isinstance(exc, UnusableInput) else 400)
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= 4 << 20:
                    data, buffer = bytes(buffer), bytearray()
                    await run_in_threadpool(receiving.feed, data)
            await run_in_threadpool(receiving.feed, bytes(buffer))
            digest = await run_in_threadpool(receiving.finish)
            await run_in_threadpool(gw.serve_model, receiving.folder)
        except AAuditError as exc:
            receiving.abort()
            gw.provisioner.failed()
            return _error(f"model upload refused: {exc}", 400)
        except BaseException:
            receiving.abort()
            gw.provisioner.failed()
            raise
        log.info("model %s provisioned and served", digest)
        return JSONResponse({"digest": digest, "bytes": receiving.received, "state": gw.state})

    async def complete(request: Request) -> Response:
        if gw.state != "serving":
            return _error(f"no model is served yet (state {gw.state}): the provider uploads it with "
                          "`aaudit provider provision`", 503, kind="service_unavailable")
        path = request.url.path
        try:
            raw = await _body(request, gw.settings.max_request_bytes, gw.settings.body_timeout_s)
            try:
                body = load_json(raw, "request body")
            except ParseError as exc:
                raise BadRequest(str(exc)) from None
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            forward, sampling = applied(path, body, gw.settings)
            if not gw.chain.has_room():
                raise BadRequest("too many receipts wait for the transparency log; retry later", status=503)
            conversation = request.headers.get(CONVERSATION_HEADER, "")
            if conversation:
                claimed = gw.chain.continue_conversation(conversation)
                if claimed is None:
                    raise BadRequest(f"{CONVERSATION_HEADER} names no receipt this gateway boot issued (or it was "
                                     "forgotten); start a new conversation", CONVERSATION_HEADER)
                if claimed == "taken":
                    raise BadRequest(f"{CONVERSATION_HEADER}: that exchange was already continued; a conversation "
                                     "cannot fork (continue its latest exchange)", CONVERSATION_HEADER, 409)
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        rid = secrets.token_hex(16)
        request_ref = RequestRef("POST", path, hashlib.sha256(raw).hexdigest())
        upstream = await gw.http().post(path, data=json.dumps(forward).encode(),
                                        headers={"content-type": "application/json"})
        headers = {RECEIPT_HEADER: rid}
        if not forward["stream"] or upstream.status != 200:
            try:
                content = await upstream.read()
            finally:
                upstream.release()
            try:
                gw.chain.issue(rid, request_ref, ResponseRef(upstream.status, hashlib.sha256(content).hexdigest(),
                                                             forward["stream"]), sampling, conversation)
            except ReceiptStoreFull as exc:
                return _error(str(exc), 503, kind="service_unavailable")
            return Response(content, upstream.status, headers=headers,
                            media_type=upstream.headers.get("content-type", "application/json"))

        async def relay():  # noqa: ANN202 - an async generator of the bytes sent
            digest, complete = hashlib.sha256(), False
            try:
                async for chunk in upstream.content.iter_any():
                    digest.update(chunk)
                    yield chunk
                complete = True
            finally:
                upstream.release()
                if not complete:  # the client left mid-stream: what was sent still gets its receipt
                    _issue_quietly(ResponseRef(200, digest.hexdigest(), True, complete=False))
            envelope = _issue_quietly(ResponseRef(200, digest.hexdigest(), True))
            if envelope is not None:
                event = json.dumps({"id": rid, "receipt": envelope.to_json()}, separators=(",", ":")).encode()
                yield RECEIPT_EVENT + event + b"\n\n"

        def _issue_quietly(response: ResponseRef) -> Any:
            try:
                return gw.chain.issue(rid, request_ref, response, sampling, conversation)[0]
            except ReceiptStoreFull:  # checked before the engine was asked; only a race gets here
                log.error("a streamed answer went out without a receipt: the receipt store filled meanwhile")
                return None

        return StreamingResponse(relay(), 200, headers=headers, media_type="text/event-stream")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(f"no such endpoint: {request.method} {request.url.path}", 404, kind="not_found_error")

    async def failed(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer: _Guard logs the exception's type, once
        return _error("the gateway failed to answer this request; see the operator's log", 500, kind="server_error")

    async def unreachable(request: Request, exc: Exception) -> Response:
        log.error("engine unreachable: %s", type(exc).__name__)
        return _error("the inference engine did not answer", 502, kind="server_error")

    routes = [
        Route("/v1/attestation", attestation, methods=["GET"]),
        Route("/v1/audit", audit, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/receipts/{id}", receipt, methods=["GET"]),
        Route("/v1/provision", provision, methods=["POST"]),
        Route("/v1/chat/completions", complete, methods=["POST"]),
        Route("/v1/completions", complete, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gw.aclose()

    return _Guard(Starlette(routes=routes, lifespan=lifespan,
                            exception_handlers={404: not_found, 405: not_found, aiohttp.ClientError: unreachable,
                                                Exception: failed}), gw.settings.per_client)

