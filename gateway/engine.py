"""The inference engine behind the gateway: an OpenAI-compatible HTTP server on 127.0.0.1, and the
launcher that starts one as a child process.

Two kinds of engine speak the same OpenAI HTTP API to the gateway (docs/RECEIPTS.md, "Parts"):

- `embedded`: this module run as `python -m gateway.engine` (transformers, Starlette, uvicorn). For
  tests, the demo and CPU deployments. One worker thread owns the tokenizer and the model and serves
  requests one at a time, in arrival order; streamed tokens leave as they are generated.
- `vllm`: `vllm serve` for GPU deployments, where vLLM is installed.

What the embedded engine implements of the OpenAI API: `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions` (`prompt` one string), both with `stream` (server-sent events framed as OpenAI
frames them, ending with `data: [DONE]`), and `GET /health`. Parameters: `model`, `messages` or
`prompt`, `temperature` (0 is greedy), `top_p`, `max_tokens` (`max_completion_tokens` for chat),
`seed`, `stop` (up to 4 strings), `stream`, `stream_options.include_usage`, `n` (1 only), `user`.
Any other parameter is refused with 400 and named, so a request never silently means less than it
says. Sampling uses only the request's parameters (never the checkpoint's `generation_config`), and
a per-request `torch.Generator`: the same seed and parameters give the same text.

Counting: `prompt_tokens` is the length of the token ids the model saw; `completion_tokens` counts
every token the model produced, the end-of-sequence token and a token that completed a stop string
included (as vLLM counts them).

Chat prompts use the tokenizer's chat template when it has one (the `developer` role is given to it
as `system`, the role templates know). Otherwise, the fallback template is
one line per message, `System: ...`, `User: ...`, `Assistant: ...` (the `developer` role is written
as `System`), each followed by a newline, then `Assistant:` for the answer.

Confidentiality: nothing here logs a prompt or an answer. uvicorn's access log is off, internal
failures are logged by exception type only, and an error message sent back to a client never quotes
the model's output. Bodies are bounded (`--max-body-bytes`), and `max_tokens` plus the prompt must
fit in `--max-model-len`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import inspect
import ipaddress
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from verifier.errors import AAuditError, ParseError, UnusableInput
from verifier.inputs import load_json

__all__ = ["EngineError", "EngineProcess", "start_engine", "main"]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_WAITING = 64  # requests queued behind the one being served; more get 503
MAX_STOP_STRINGS = 4  # as the OpenAI API
MAX_STOP_CHARS = 512
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
DEFAULT_READY_TIMEOUT_S = 600.0  # a large model under vLLM can take minutes to load
STOP_GRACE_S = 10.0  # between SIGTERM and SIGKILL
VLLM_QUIET_SINCE = (0, 10, 1)  # vLLM logs no requests by default from this version on

_log = logging.getLogger("gateway.engine")


class EngineError(AAuditError):
    """The engine could not be started or stopped as asked."""


class BadRequest(UnusableInput):
    """A request the engine refuses: answered with an OpenAI-style JSON error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Sampling:
    """The parameters that decide the output; `max_tokens` None means the endpoint's default."""

    temperature: float
    top_p: float
    max_tokens: int | None
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """One parsed request: `messages` for chat, `prompt` for completions."""

    chat: bool
    messages: tuple[tuple[str, str], ...]
    prompt: str
    sampling: Sampling
    stream: bool
    include_usage: bool


_COMMON = {"model", "temperature", "top_p", "max_tokens", "seed", "stop", "stream", "stream_options", "n", "user"}
_CHAT_ONLY = {"messages", "max_completion_tokens"}
_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def parse_request(body: bytes, *, chat: bool, served_name: str) -> Request:
    """The request body, checked field by field; `BadRequest` names the first field at fault."""
    try:
        obj = load_json(body, "request body")
    except ParseError as exc:
        raise BadRequest(f"{exc}; send one JSON object", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("the request body must be a JSON object")
    known = _COMMON | (_CHAT_ONLY if chat else {"prompt"})
    for key in obj:
        if key not in known:
            raise BadRequest(f"unsupported parameter {key[:80]!r}; this engine accepts {', '.join(sorted(known))}",
                             param=key[:80], code="unsupported_parameter")
    get = {k: v for k, v in obj.items() if v is not None}.get  # JSON null means "not given"

    model = get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required: the served model name (GET /v1/models)", param="model")
    if model != served_name:
        raise BadRequest(f"model {model[:120]!r} is not served here; this engine serves {served_name!r}",
                         param="model", code="model_not_found")
    n = get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n != 1:
        raise BadRequest("only n=1 is supported", param="n")
    if get("user") is not None and not isinstance(get("user"), str):
        raise BadRequest("'user' must be a string", param="user")
    stream = get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    include_usage = _stream_options(get("stream_options"), stream)

    if chat:
        messages, prompt = _messages(get("messages")), ""
        newer, older = get("max_completion_tokens"), get("max_tokens")
        if newer is not None and older is not None and newer != older:
            raise BadRequest("give max_completion_tokens or max_tokens, not both", param="max_completion_tokens")
        max_tokens = (_positive_int(newer, "max_completion_tokens") if newer is not None
                      else _positive_int(older, "max_tokens"))
    else:
        messages, prompt = (), get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be one string (lists and token ids are not supported)", param="prompt")
        max_tokens = _positive_int(get("max_tokens"), "max_tokens")
    temperature, top_p = get("temperature", 1.0), get("top_p", 1.0)
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be a number from 0 to 2 (0 is greedy)", param="temperature")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise BadRequest("'top_p' must be a number above 0 and at most 1", param="top_p")
    sampling = Sampling(temperature=float(temperature), top_p=float(top_p),
                        max_tokens=max_tokens, seed=_seed(get("seed")), stop=_stop(get("stop")))
    return Request(chat=chat, messages=messages, prompt=prompt, sampling=sampling, stream=stream,
                   include_usage=include_usage)


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise BadRequest("'stream_options' is only allowed with stream: true", param="stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"} or \
            not isinstance(value.get("include_usage", False), bool):
        raise BadRequest("'stream_options' may hold only include_usage (true or false)", param="stream_options")
    return value.get("include_usage", False)


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with role and content", param=where)
        extra = set(message) - {"role", "content"}
        if extra:
            raise BadRequest(f"{where} has unsupported field {sorted(extra)[0][:80]!r}; give role and content",
                             param=where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(_ROLES)}", param=f"{where}.role")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       and set(p) == {"type", "text"} for p in content):
                raise BadRequest(f"{where}.content parts must be {{\"type\": \"text\", \"text\": ...}}",
                                 param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
        out.append((role, content))
    return tuple(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be an integer of at least 1", param=name)
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**64:
        raise BadRequest("'seed' must be an integer from -2**63 to 2**64-1", param="seed")
    return value % 2**64


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS or \
            not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings of at "
                         f"most {MAX_STOP_CHARS} characters", param="stop")
    return tuple(stops)


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _Started:
    prompt_tokens: int


@dataclass(frozen=True)
class _Finished:
    reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass(frozen=True)
class _Failed:
    kind: str  # the exception's type name: never its message, which could quote text


class _Detokenizer:
    """Incremental decoding: text for each new token once it forms whole characters. Each step
    decodes a short window that starts a token or more back, so tokenizers that change a token's
    text by its neighbour (leading spaces) give the text a decode of the whole answer would."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok, self._ids, self._prefix, self._read = tokenizer, [], 0, 0

    def _decode(self, start: int, end: int | None) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=True)

    def add(self, token: int) -> str:
        self._ids.append(token)
        before, now = self._decode(self._prefix, self._read), self._decode(self._prefix, None)
        if len(now) > len(before) and not now.endswith("\ufffd"):  # U+FFFD: a character cut mid-bytes
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before, now = self._decode(self._prefix, self._read), self._decode(self._prefix, None)
        return now[len(before):] if len(now) > len(before) else ""


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, if any does."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string: held back."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


class TextModel:
    """Tokenizer and model, used by one thread at a time (the engine's worker)."""

    def __init__(self, model_dir: Path, *, device: str, dtype: str, max_model_len: int | None) -> None:
        import torch

        from enclave.runner import _load_model  # safetensors only, never the folder's own code

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineError("--device cuda, but torch finds no CUDA device here; use --device cpu")
        if dtype == "auto":  # as the audit runner loads it, so served numerics match the audited ones
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.dtype = dtype
        self.model, self.tokenizer = _load_model(model_dir, self.device, getattr(torch, dtype))
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if max_model_len is not None and limit is not None and max_model_len > limit:
            raise EngineError(f"--max-model-len {max_model_len} exceeds the model's {limit} positions")
        if max_model_len is None and limit is None:
            raise EngineError("the model's config gives no context length; pass --max-model-len")
        self.max_model_len: int = max_model_len or limit
        # The key-value cache argument (and output field) is `cache` from transformers 5, `past_key_values` before.
        params = inspect.signature(self.model.forward).parameters
        self._cache = "cache" if "cache" in params else "past_key_values"
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                        *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])}

    def encode(self, request: Request) -> list[int]:
        if not request.chat:
            return self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        if self.tokenizer.chat_template:
            from jinja2 import TemplateError

            messages = [{"role": "system" if r == "developer" else r, "content": c} for r, c in request.messages]
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as exc:
                raise BadRequest(f"the model's chat template refused these messages: {str(exc)[:200]}",
                                 param="messages") from None
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{_ROLES[r]}: {c}\n" for r, c in request.messages) + "Assistant:"
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def budget(self, request: Request, prompt_tokens: int) -> int:
        """The request's max_tokens, defaulted and checked against the context length."""
        room = self.max_model_len - prompt_tokens
        param = "messages" if request.chat else "prompt"
        if prompt_tokens == 0:
            raise BadRequest(f"the {param} is empty; give some text", param=param)
        if room < 1:
            raise BadRequest(f"this model's maximum context length is {self.max_model_len} tokens; the {param} has "
                             f"{prompt_tokens}; shorten it", param=param, code="context_length_exceeded")
        wanted = request.sampling.max_tokens
        if wanted is None:
            return room if request.chat else min(COMPLETIONS_DEFAULT_MAX_TOKENS, room)
        if wanted > room:
            raise BadRequest(f"this model's maximum context length is {self.max_model_len} tokens; the {param} has "
                             f"{prompt_tokens} and max_tokens asks for {wanted}; ask for at most {room}",
                             param="max_tokens", code="context_length_exceeded")
        return wanted

    def generate(self, prompt_ids: list[int], sampling: Sampling, max_tokens: int,
                 cancel: threading.Event) -> Iterator[str | _Finished]:
        """Text deltas as tokens come, then `_Finished`. Stop strings are cut here, so a stream
        and a whole answer are the same text: a delta that could be the start of a stop string is
        held back until the next tokens decide."""
        import torch

        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        detok, held, produced, reason, cut = _Detokenizer(self.tokenizer), "", 0, "length", None
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True,
                             **self._last_logits_only)
            while produced < max_tokens and not cancel.is_set():
                token = self._pick(out.logits[0, -1], sampling, generator)
                produced += 1
                if token in self.eos_ids:
                    reason = "stop"
                    break
                held += detok.add(token)
                cut = _find_stop(held, sampling.stop)
                if cut is not None:
                    break
                ready = len(held) - _partial_stop(held, sampling.stop)
                if ready:
                    yield held[:ready]
                    held = held[ready:]
                if produced < max_tokens:
                    out = self.model(input_ids=torch.tensor([[token]], device=self.device),
                                     use_cache=True, **{self._cache: getattr(out, self._cache)})
        if cancel.is_set():
            return
        if cut is None:  # the last characters may still be waiting for bytes, or end in a stop string
            held += detok.flush()
            cut = _find_stop(held, sampling.stop)
        if cut is not None:
            held, reason = held[:cut], "stop"
        if held:
            yield held
        yield _Finished(reason, produced)

    @staticmethod
    def _pick(logits: Any, sampling: Sampling, generator: Any) -> int:
        import torch

        if sampling.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1:  # nucleus: the most likely tokens whose mass reaches top_p
            probs, order = torch.sort(probs, descending=True, stable=True)
            probs = probs * ((torch.cumsum(probs, dim=-1) - probs) < sampling.top_p)
            return int(order[torch.multinomial(probs, 1, generator=generator)])
        return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class _Job:
    request: Request
    emit: Callable[[object], None]
    cancel: threading.Event


class _Worker:
    """The one thread that tokenizes and generates. A daemon, so a stuck generation never keeps the
    process from exiting on SIGTERM."""

    def __init__(self, model: TextModel) -> None:
        self.model, self._jobs = model, queue.Queue()
        threading.Thread(target=self._run, name="engine-worker", daemon=True).start()

    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancel.is_set():
                continue
            try:
                prompt_ids = self.model.encode(job.request)
                max_tokens = self.model.budget(job.request, len(prompt_ids))
                job.emit(_Started(len(prompt_ids)))
                for event in self.model.generate(prompt_ids, job.request.sampling, max_tokens, job.cancel):
                    job.emit(event)
            except BadRequest as exc:
                job.emit(exc)
            except Exception as exc:  # its message may quote text: only the type is logged and sent
                _log.error("generation failed: %s", type(exc).__name__)
                job.emit(_Failed(type(exc).__name__))


# ---------------------------------------------------------------------------------------------
# HTTP


def _error(message: str, status: int = 400, *, param: str | None = None, code: str | None = None,
           kind: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def build_app(worker: _Worker, served_name: str, max_body_bytes: int) -> Any:
    """The Starlette app: routes, JSON errors for every refusal, nothing logged but failure types."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    created = int(time.time())

    async def models(_: HTTPRequest) -> Any:
        return JSONResponse({"object": "list", "data": [{
            "id": served_name, "object": "model", "created": created, "owned_by": "attestable-audits",
            "max_model_len": worker.model.max_model_len}]})

    async def health(_: HTTPRequest) -> Any:
        return JSONResponse({"status": "ok"})

    async def read_body(http: HTTPRequest) -> bytes:
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise BadRequest(f"the request body is {int(declared)} bytes; at most {max_body_bytes} are accepted",
                             code="request_too_large")
        body = bytearray()
        async for chunk in http.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise BadRequest(f"the request body exceeds {max_body_bytes} bytes", code="request_too_large")
        return bytes(body)

    async def submit(request: Request) -> tuple[int, asyncio.Queue, threading.Event]:
        if worker.waiting() >= MAX_WAITING:
            raise BadRequest(f"the engine has {MAX_WAITING} requests waiting; retry later", status=503,
                             code="engine_overloaded")
        loop, events, cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def emit(event: object) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone: nobody is listening
                cancel.set()

        worker.submit(_Job(request, emit, cancel))
        try:
            first = await events.get()
        except BaseException:
            cancel.set()
            raise
        if isinstance(first, BadRequest):
            raise first
        if isinstance(first, _Failed):  # the worker has logged its type
            raise BadRequest("the engine failed to serve this request", status=500)
        return first.prompt_tokens, events, cancel

    def completion(chat: bool) -> Callable[[HTTPRequest], Any]:
        async def endpoint(http: HTTPRequest) -> Any:
            try:
                request = parse_request(await read_body(http), chat=chat, served_name=served_name)
                prompt_tokens, events, cancel = await submit(request)
            except BadRequest as exc:
                return _error(exc.message, exc.status, param=exc.param, code=exc.code)
            except Exception as exc:
                _log.error("request failed: %s", type(exc).__name__)
                return _error("the engine failed to serve this request", 500)
            meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(16)}",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": served_name}
            if request.stream:
                return StreamingResponse(_stream(chat, meta, request.include_usage, prompt_tokens, events, cancel),
                                         media_type="text/event-stream; charset=utf-8",
                                         headers={"cache-control": "no-cache"})
            try:
                parts, event = [], await events.get()
                while isinstance(event, str):
                    parts.append(event)
                    event = await events.get()
            finally:
                cancel.set()  # no-op once finished; stops generating if this handler is cancelled
            if isinstance(event, _Failed):
                return _error("the engine failed to serve this request", 500)
            text = "".join(parts)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                      else {"index": 0, "text": text})
            return JSONResponse({**meta, "choices": [{**choice, "logprobs": None, "finish_reason": event.reason}],
                                 "usage": _usage(prompt_tokens, event.completion_tokens)})
        return endpoint

    async def http_error(_: HTTPRequest, exc: Exception) -> Any:
        status = getattr(exc, "status_code", 500)
        return _error(getattr(exc, "detail", "error"), status, kind="invalid_request_error" if status < 500 else None)

    return Starlette(routes=[Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
                             Route("/v1/chat/completions", completion(True), methods=["POST"]),
                             Route("/v1/completions", completion(False), methods=["POST"])],
                     exception_handlers={HTTPException: http_error})


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _stream(chat: bool, meta: dict[str, Any], include_usage: bool, prompt_tokens: int,
                  events: asyncio.Queue, cancel: threading.Event) -> AsyncIterator[bytes]:
    """OpenAI's chunk sequence: (chat) a role chunk, one chunk per delta, a chunk with the finish
    reason, (with include_usage) a last chunk with no choices and the usage, then [DONE]."""
    meta = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}
    usage = {"usage": None} if include_usage else {}

    def chunk(payload: dict[str, Any], reason: str | None = None) -> bytes:
        return _sse({**meta, "choices": [{"index": 0, **payload, "logprobs": None, "finish_reason": reason}],
                     **usage})

    try:
        if chat:
            yield chunk({"delta": {"role": "assistant", "content": ""}})
        event = await events.get()
        while isinstance(event, str):
            yield chunk({"delta": {"content": event}} if chat else {"text": event})
            event = await events.get()
        if isinstance(event, _Failed):
            yield _sse({"error": {"message": "the engine failed to finish this answer", "type": "server_error",
                                  "param": None, "code": None}})
            return
        yield chunk({"delta": {}} if chat else {"text": ""}, event.reason)
        if include_usage:
            yield _sse({**meta, "choices": [], "usage": _usage(prompt_tokens, event.completion_tokens)})
        yield b"data: [DONE]\n\n"
    finally:
        cancel.set()  # the client went away, or the answer is complete


# ---------------------------------------------------------------------------------------------
# The engine process


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.engine",
        description="The embedded inference engine: an OpenAI-compatible HTTP server on 127.0.0.1 for one "
                    "local model (transformers). The gateway starts it; it logs no prompts or answers.")
    p.add_argument("--model", required=True, type=Path, help="folder of the model (safetensors, config, tokenizer)")
    p.add_argument("--served-model-name", required=True, help="the name clients give as 'model'")
    p.add_argument("--port", required=True, type=int, help="TCP port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1); "
                   "the engine refuses any other, since only the gateway may reach it")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype; the gateway passes the dtype its audit ran the model in (auto: bfloat16 on "
                   "CUDA, float32 on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs; auto is CUDA when available")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, one per core); 1 is fastest for a small "
                        "model on a busy machine")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length: prompt plus max_tokens (default: the model's position count)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"engine: error: {message}", file=sys.stderr)
        return 2

    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            return fail(f"--host {args.host} is not a loopback address; the engine listens on 127.0.0.1 only")
    except ValueError:
        return fail(f"--host {args.host!r} is not an IP address; use 127.0.0.1")
    if not 0 < args.port < 65536:
        return fail(f"--port {args.port} is not a TCP port")
    if args.max_model_len is not None and args.max_model_len < 2:
        return fail("--max-model-len must be at least 2")
    if args.max_body_bytes < 1024:
        return fail("--max-body-bytes must be at least 1024")
    if args.threads is not None and args.threads < 1:
        return fail("--threads must be at least 1")
    if not args.model.is_dir():
        return fail(f"--model {args.model} is not a folder")

    from enclave.runner import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)  # load from the folder only, never from a hub
    logging.basicConfig(level=logging.WARNING, format="engine: %(message)s")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = TextModel(args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len)
    except EngineError as exc:
        return fail(str(exc))
    except Exception as exc:  # loading reads only the operator's folder: its message is safe to show
        return fail(f"cannot load the model from {args.model}: {type(exc).__name__}: {str(exc)[:300]}")

    import uvicorn

    app = build_app(_Worker(model), args.served_model_name, args.max_body_bytes)
    print(f"engine: serving {args.served_model_name!r} on http://{args.host}:{args.port}/v1 ({model.device}, "
          f"{model.dtype}, max-model-len {model.max_model_len})", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                                  lifespan="off", server_header=False, timeout_graceful_shutdown=2)).run()
    return 0


# ---------------------------------------------------------------------------------------------
# The launcher


class EngineProcess:
    """A running engine: its OpenAI base URL, readiness, and a stop that leaves no process behind.
    As a context manager it waits until ready on entry and stops on exit."""

    def __init__(self, kind: str, served_name: str, port: int, proc: subprocess.Popen,
                 ready_timeout_s: float) -> None:
        self.kind, self.served_name, self.port, self.ready_timeout_s = kind, served_name, port, ready_timeout_s
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._proc = proc
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._tail_lock = threading.Lock()
        self._drainer = threading.Thread(target=_drain, args=(proc, self._tail, self._tail_lock),
                                         name=f"engine-{port}-output", daemon=True)
        self._drainer.start()
        self._finalizer = weakref.finalize(self, _stop_process, proc, STOP_GRACE_S)  # also at interpreter exit

    @property
    def pid(self) -> int:
        return self._proc.pid

    def output_tail(self) -> str:
        """The engine's last output lines (its stderr and stdout; never prompt text). After the
        engine has ended, waits briefly for the lines still in the pipe."""
        if self._proc.returncode is not None:
            self._drainer.join(timeout=2)
        with self._tail_lock:
            return "\n".join(self._tail)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until GET /v1/models lists the served model. Raises `EngineError` (and stops the
        process) if it exits first, if another server answers on the port, or on timeout."""
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while True:
            code = _exit_code(self._proc)
            if code is not None:
                self.stop()
                raise EngineError(f"the {self.kind} engine exited with {_describe_exit(code)} before it was ready; "
                                  f"its last output:\n{self.output_tail() or '(none)'}")
            try:
                with _NO_PROXY.open(f"{self.base_url}/models", timeout=2) as response:
                    listed = json.loads(response.read())
                names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
                if self.served_name in names:
                    return
                self.stop()
                raise EngineError(f"another server answers on port {self.port} (it lists {names[:5]}); "
                                  "start the engine again on a free port")
            except (OSError, ValueError, AttributeError):  # not listening yet, or not JSON yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"the {self.kind} engine was not ready after {self.ready_timeout_s if timeout_s is None else timeout_s:g} s; "
                                  f"its last output:\n{self.output_tail() or '(none)'}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the engine's process group, SIGKILL after a grace period; reaps the process."""
        self._finalizer()

    def __enter__(self) -> EngineProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# Loopback only: an HTTP(S)_PROXY in the environment must not see, or answer for, the engine.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _drain(proc: subprocess.Popen, tail: collections.deque[str], lock: threading.Lock) -> None:
    """Keep the engine's last output lines in memory (never on disk); reading keeps the pipe from
    filling up and blocking the engine. The pipe is closed here, at its end, never under a reader."""
    assert proc.stdout is not None
    with proc.stdout as output:
        for line in output:
            with lock:
                tail.append(line.decode("utf-8", "replace").rstrip())


def _exit_code(proc: subprocess.Popen) -> int | None:
    """The exit code if the engine has exited, without reaping it: an unreaped leader keeps its
    process group id from being reused, so a later killpg can only reach the engine's own children."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def _stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _exit_code(proc) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # the leader, if still running, and any children it left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_module_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _vllm_version_ok() -> bool:
    """Whether vLLM in this interpreter logs no requests by default (unknown when only the binary is
    found: then `--enable-log-requests` is still refused and the access log turned off)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = tuple(int(x) for x in re.findall(r"\d+", version("vllm"))[:3])
    except PackageNotFoundError:
        return True
    return found >= VLLM_QUIET_SINCE


# The engine options an operator may pass: how the audited model runs, never which weights, tokenizer,
# template, adapters, dtype or quantisation it runs with (those would serve something the audit did
# not measure while every receipt names the audited digest).
ALLOWED_OPTIONS = {
    "embedded": frozenset({"--device", "--max-model-len", "--threads", "--max-body-bytes"}),
    "vllm": frozenset({"--tensor-parallel-size", "--data-parallel-size", "--pipeline-parallel-size",
                       "--max-model-len", "--gpu-memory-utilization", "--max-num-seqs", "--max-num-batched-tokens",
                       "--enforce-eager", "--swap-space", "--block-size", "--enable-prefix-caching"}),
}
# The engine's environment: what it needs to find its libraries and devices, nothing an operator
# could use to point it at other weights or code.
_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "TERM", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
                        "LD_LIBRARY_PATH", "OMP_NUM_THREADS"})
_ENV_PREFIXES = ("LC_", "NCCL_", "NVIDIA_")


def check_options(kind: str, extra: Sequence[str]) -> None:
    """Refuse engine options outside `ALLOWED_OPTIONS[kind]`, and stray values."""
    allowed = ALLOWED_OPTIONS.get(kind, frozenset())
    value_may_follow = False
    for arg in extra:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            if name not in allowed:
                raise EngineError(f"engine option {name[:60]!r} is not allowed: it could change what is served "
                                  f"without the receipts showing it; allowed for {kind}: {', '.join(sorted(allowed))}")
            value_may_follow = "=" not in arg
        elif value_may_follow:
            value_may_follow = False
        else:
            raise EngineError(f"engine argument {arg[:60]!r} is not the value of an allowed option")


def _command(kind: str, model_dir: Path, served_name: str, port: int, extra: Sequence[str]) -> list[str]:
    check_options(kind, extra)
    if kind == "embedded":
        return [sys.executable, "-m", "gateway.engine", "--model", str(model_dir), "--served-model-name", served_name,
                "--host", "127.0.0.1", "--port", str(port), *extra]
    if kind != "vllm":
        raise EngineError(f"unknown engine kind {kind!r}; use 'embedded' or 'vllm'")
    if _vllm_module_available():
        base = [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        if not _vllm_version_ok():
            extra = ["--disable-log-requests", *extra]
    elif shutil.which("vllm"):
        base = [shutil.which("vllm")]
    else:
        raise EngineError("vLLM is not installed here (no `vllm` command and no vllm module); install vLLM on a GPU "
                          "machine, or use the embedded engine (kind 'embedded', transformers on CPU or one GPU)")
    return [*base, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", served_name, "--disable-uvicorn-access-log", *extra]


def start_engine(kind: str, model_dir: Path, served_name: str, *, port: int | None = None,
                 extra: Sequence[str] = (), dtype: str | None = None,
                 ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> EngineProcess:
    """Start an engine as a child process in its own process group and return at once; call
    `wait_ready()` (or use the result as a context manager) before sending requests.

    `dtype` is the gateway's, never the operator's: the dtype the audit ran the model in (its
    statement's runtime), so served numerics are the audited ones.

    `extra` goes to the engine's command line: for `embedded` e.g. `--device cuda`, `--max-model-len`;
    for `vllm` e.g. `--tensor-parallel-size 2`, `--data-parallel-size 2`, `--max-model-len`. The child
    runs with Hugging Face's offline switches set, and imports this same copy of `gateway`.
    """
    from enclave.runner import OFFLINE_ENV

    port = _free_port() if port is None else port
    command = _command(kind, Path(model_dir), served_name, port, [str(a) for a in extra])
    if dtype is not None:
        command += ["--dtype", dtype]
    here = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    env.update(OFFLINE_ENV, PYTHONPATH=here)
    if kind == "vllm":
        env["VLLM_LOGGING_LEVEL"] = "INFO"  # at DEBUG vLLM writes prompts to its log
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    except OSError as exc:
        raise EngineError(f"cannot start the {kind} engine ({command[0]}): {exc.strerror or exc}") from None
    return EngineProcess(kind, served_name, port, proc, ready_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
