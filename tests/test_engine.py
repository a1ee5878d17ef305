"""The embedded engine over real HTTP: the official OpenAI client and raw requests against
`python -m gateway.engine` serving the demo's tiny model, and the launcher's process handling.

One engine serves the whole module (it takes a few seconds to start); `--threads 1` keeps it fast
on a busy two-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.demo_assets import build_tiny_model
from gateway import engine as engine_mod
from gateway.engine import EngineError, start_engine

NAME = "tiny-audited"
BODY_LIMIT = 64 * 1024
PROMPT = "Question: What is the capital of France?\nAnswer:"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engine") / "model", seed=7)


@pytest.fixture(scope="module")
def engine(model_dir: Path):
    proc = start_engine("embedded", model_dir, NAME, extra=["--threads", "1", "--max-body-bytes", str(BODY_LIMIT)],
                        ready_timeout_s=120)
    with proc:
        yield proc


@pytest.fixture(scope="module")
def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0, timeout=60)


def tokens(model_dir: Path, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids)


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Name a planet."}], **kw)


# --- the OpenAI API through the official client ---------------------------------------------------------


def test_lists_the_served_model(client, engine) -> None:
    assert [m.id for m in client.models.list()] == [NAME]
    assert httpx.get(engine.base_url.removesuffix("/v1") + "/health").status_code == 200


def test_chat_stream_is_the_whole_answer_in_pieces(client, model_dir) -> None:
    whole = chat(client, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-") and whole.model == NAME
    assert whole.choices[0].message.role == "assistant" and text
    assert isinstance(whole.created, int) and abs(whole.created - time.time()) < 600
    # Documented fallback template (the tiny tokenizer has no chat template): "User: ...\nAssistant:"
    assert whole.usage.prompt_tokens == tokens(model_dir, "User: Name a planet.\nAssistant:")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(chat(client, temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the answer came in one piece, not streamed"
    assert "".join(deltas) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_completions_whole_and_streamed(client, model_dir) -> None:
    whole = client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=20)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.usage.prompt_tokens == tokens(model_dir, PROMPT)
    pieces = list(client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=20, stream=True))
    assert {p.object for p in pieces} == {"text_completion"}
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_seed_decides_the_sample(client) -> None:
    def sample(seed: int, **kw) -> str:
        return client.completions.create(model=NAME, prompt=PROMPT, temperature=1.0, max_tokens=16, seed=seed,
                                         **kw).choices[0].text

    assert sample(11) == sample(11)
    assert sample(11, top_p=0.9) == sample(11, top_p=0.9)
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1, "different seeds all gave the same text"
    # A stream with the same seed samples the same tokens.
    streamed = client.completions.create(model=NAME, prompt=PROMPT, temperature=1.0, max_tokens=16, seed=11,
                                         stream=True)
    assert "".join(p.choices[0].text for p in streamed) == sample(11)


def test_stop_strings_cut_the_answer(client) -> None:
    full = client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=40).choices[0].text
    # A stop string from the middle of the answer, at its first occurrence (it may span tokens).
    at = next(k for k in range(4, len(full) - 3) if full.find(full[k:k + 3]) == k
              and full[k:k + 3].strip() and "\ufffd" not in full[k:k + 3])
    stop = full[at:at + 3]
    for stream in (False, True):
        result = client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=40, stream=stream,
                                           stop=["never-in-this-answer", stop])
        if stream:
            result = list(result)
            text, reason = "".join(p.choices[0].text for p in result), result[-1].choices[0].finish_reason
        else:
            text, reason = result.choices[0].text, result.choices[0].finish_reason
        assert (text, reason) == (full[:at], "stop"), f"stream={stream}"
    # A stop string that never completes holds text back only until the answer ends.
    assert client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=40,
                                     stop=full[-1] + "\x00").choices[0].text == full


def test_max_tokens_ends_with_length(client, model_dir) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, temperature=0, max_tokens=3)
    assert out.choices[0].finish_reason == "length"
    n = tokens(model_dir, PROMPT)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (n, 3, n + 3)
    out = chat(client, temperature=0, max_completion_tokens=2)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 2


def test_client_gets_bad_request_errors(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, n=2)
    assert exc.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="not served here"):
        client.completions.create(model="some-other-model", prompt="hi")


def test_stream_leaves_before_the_answer_is_done(engine) -> None:
    """Tokens reach the client as they are made: the first piece arrives long before the last."""
    body = {"model": NAME, "prompt": PROMPT, "temperature": 0, "max_tokens": 400, "stream": True}
    start, arrivals = time.monotonic(), []
    with httpx.stream("POST", f"{engine.base_url}/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) > 20
    assert arrivals[0] < arrivals[-1] / 3, arrivals[:3] + arrivals[-3:]


def test_a_client_that_leaves_stops_its_generation(engine) -> None:
    """A client that disconnects mid-stream frees the engine at once (else one client could hold it)."""
    body = {"model": NAME, "prompt": "Question:", "temperature": 0, "max_tokens": 500}
    start = time.monotonic()
    assert httpx.post(f"{engine.base_url}/completions", json=body, timeout=60).json()["usage"]["completion_tokens"] \
        == 500
    whole = time.monotonic() - start
    with httpx.stream("POST", f"{engine.base_url}/completions", json={**body, "stream": True}, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: {"))
    start = time.monotonic()
    httpx.post(f"{engine.base_url}/completions", json={**body, "max_tokens": 1}, timeout=60)
    assert time.monotonic() - start < whole / 2


def test_concurrent_requests_get_their_own_answers(client) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model=NAME, prompt=PROMPT, temperature=1.0, max_tokens=12,
                                         seed=seed).choices[0].text

    alone = {seed: sample(seed) for seed in (21, 22, 23, 24)}
    with ThreadPoolExecutor(4) as pool:
        together = dict(zip(alone, pool.map(sample, alone)))
    assert together == alone


def test_sse_framing_is_openais(engine) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 4,
            "stream": True}
    raw = httpx.post(f"{engine.base_url}/chat/completions", json=body, timeout=60).content
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
    last = json.loads(events[-3][6:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")


# --- refusals over raw HTTP -----------------------------------------------------------------------------


def post(engine, path: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{engine.base_url}{path}", content=content, headers={"content-type": "application/json"},
                      timeout=60)


def refused(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    return error


def ok_chat(**kw) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **kw}


@pytest.mark.parametrize(("body", "param", "code"), [
    (b'{"model": "tiny-audited", "messages": [', None, "invalid_json"),
    (b"[]", None, None),
    (b"\xff\xfe", None, "invalid_json"),
    (json.dumps(ok_chat(n=2)).encode(), "n", None),
    (json.dumps(ok_chat(model="gpt-4o")).encode(), "model", "model_not_found"),
    (json.dumps(ok_chat(max_tokens=600)).encode(), "max_tokens", "context_length_exceeded"),
    (json.dumps(ok_chat(max_tokens=0)).encode(), "max_tokens", None),
    (json.dumps(ok_chat(temperature=3)).encode(), "temperature", None),
    (json.dumps(ok_chat(top_p=0)).encode(), "top_p", None),
    (json.dumps(ok_chat(seed="1")).encode(), "seed", None),
    (json.dumps(ok_chat(stop=["a", "b", "c", "d", "e"])).encode(), "stop", None),
    (json.dumps(ok_chat(stream_options={"include_usage": True})).encode(), "stream_options", None),
    (json.dumps(ok_chat(messages=[])).encode(), "messages", None),
    (json.dumps(ok_chat(messages=[{"role": "tool", "content": "x"}])).encode(), "messages[0].role", None),
    (json.dumps(ok_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])).encode(),
     "messages[0].content", None),
    (json.dumps(ok_chat(messages=[{"role": "user", "content": "x", "name": "bob"}])).encode(), "messages[0]", None),
    # Parameters the engine does not implement are refused by name, never silently ignored.
    (json.dumps(ok_chat(logprobs=True)).encode(), "logprobs", "unsupported_parameter"),
    (json.dumps(ok_chat(presence_penalty=1.0)).encode(), "presence_penalty", "unsupported_parameter"),
    # Smuggling: a reader that keeps the first duplicate and one that keeps the last would disagree.
    (b'{"model": "tiny-audited", "messages": [{"role": "user", "content": "Hi"}], "seed": 1, "seed": 2}', None,
     "invalid_json"),
    (b'{"model": "tiny-audited", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', None,
     "invalid_json"),
])
def test_bad_chat_requests_get_400(engine, body: bytes, param: str | None, code: str | None) -> None:
    error = refused(post(engine, "/chat/completions", body))
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_wrong_types_anywhere_get_400_never_500(engine) -> None:
    """Type confusion in any field is a clear refusal (or a valid request), never a server error."""
    wrong = [[], {}, "x", 1.5, True, 10**30, [{}]]
    with httpx.Client(base_url=engine.base_url, timeout=60) as http:
        for path, good in (("/completions", {"model": NAME, "prompt": "Hi", "max_tokens": 1}),
                           ("/chat/completions", ok_chat(max_tokens=1))):
            for key in [*good, "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n", "user"]:
                for value in wrong:
                    response = http.post(path, json={**good, key: value})
                    assert response.status_code in (200, 400), (path, key, value, response.text)
        for message in ({"role": [], "content": "x"}, {"role": "user", "content": {}}, "x",
                        {"role": "user", "content": [{"type": "text", "text": []}]}):
            refused(http.post("/chat/completions", json=ok_chat(messages=[message])))


def test_bad_completions_requests_get_400(engine) -> None:
    base = {"model": NAME, "max_tokens": 2}
    assert refused(post(engine, "/completions", json.dumps({**base, "prompt": ["a", "b"]}).encode()))["param"] == \
        "prompt"
    assert refused(post(engine, "/completions", json.dumps({**base, "prompt": ""}).encode()))["param"] == "prompt"
    assert refused(post(engine, "/completions", json.dumps({**base, "prompt": "x",
                                                              "messages": []}).encode()))["param"] == "messages"
    long_prompt = " ".join(["seven"] * 600)  # more tokens than the 512 positions
    assert refused(post(engine, "/completions", json.dumps({**base, "prompt": long_prompt}).encode()))["code"] == \
        "context_length_exceeded"


def test_oversized_body_is_refused(engine) -> None:
    body = json.dumps({"model": NAME, "prompt": "x" * (BODY_LIMIT + 10), "max_tokens": 1}).encode()
    assert refused(post(engine, "/completions", body))["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit holds while reading
        yield body[:1000]
        yield body[1000:]

    response = httpx.post(f"{engine.base_url}/completions", content=chunks(), timeout=60)
    assert refused(response)["code"] == "request_too_large"


def test_unknown_paths_and_methods_get_json_errors(engine) -> None:
    assert refused(httpx.get(f"{engine.base_url}/embeddings"), 404)
    assert refused(httpx.get(f"{engine.base_url}/completions"), 405)


def test_prompts_never_reach_the_log_or_an_error(engine) -> None:
    secret = "SECRET-PROMPT-7f3a9c"
    answered = httpx.post(f"{engine.base_url}/completions", json={"model": NAME, "prompt": secret, "max_tokens": 3},
                          timeout=60)
    assert answered.status_code == 200
    for path, body in (("/completions", {"model": NAME, "prompt": secret, "logprobs": 2}),
                       ("/completions", {"model": NAME, "prompt": secret, "max_tokens": 10_000}),
                       ("/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": secret}],
                                              "tools": []})):
        assert secret not in refused(httpx.post(f"{engine.base_url}{path}", json=body, timeout=60))["message"]
    time.sleep(0.2)
    assert secret not in engine.output_tail()


# --- the launcher ---------------------------------------------------------------------------------------


def test_vllm_absent_is_a_clear_error(monkeypatch, tmp_path, model_dir) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(engine_mod, "_vllm_module_available", lambda: False)
    with pytest.raises(EngineError, match="vLLM is not installed.*embedded"):
        start_engine("vllm", model_dir, NAME)
    with pytest.raises(EngineError, match="unknown engine kind 'sglang'"):
        start_engine("sglang", model_dir, NAME)


def fake_vllm(tmp_path: Path, script: str, monkeypatch) -> None:
    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(engine_mod, "_vllm_module_available", lambda: False)


def test_vllm_from_this_interpreter(monkeypatch, model_dir) -> None:
    """vLLM importable here runs from this interpreter; one too old to be quiet by default is told to be."""
    monkeypatch.setattr(engine_mod, "_vllm_module_available", lambda: True)
    monkeypatch.setattr(engine_mod, "_vllm_version_ok", lambda: False)
    command = engine_mod._command("vllm", model_dir, NAME, 8123, ["--data-parallel-size", "2"])
    assert command == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model_dir), "--host",
                       "127.0.0.1", "--port", "8123", "--served-model-name", NAME, "--disable-uvicorn-access-log",
                       "--disable-log-requests", "--data-parallel-size", "2"]


def test_readiness_ignores_proxy_settings(engine) -> None:
    """A proxy in the environment would see (or fake) the engine's answers; readiness never uses one."""
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
           "no_proxy": ""}
    code = "import sys, urllib.request, gateway.engine as e; print({}(sys.argv[1]).status)"
    for opener, works in (("e._NO_PROXY.open", True), ("urllib.request.urlopen", False)):
        out = subprocess.run([sys.executable, "-c", code.format(opener), f"{engine.base_url}/models"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert (out.stdout.strip() == "200") is works, (opener, out.stderr[-300:])


def test_vllm_command_and_early_exit(monkeypatch, tmp_path, model_dir) -> None:
    fake_vllm(tmp_path, 'echo "vllm got: $*" >&2\nexit 3\n', monkeypatch)
    proc = start_engine("vllm", model_dir, NAME, extra=["--tensor-parallel-size", "2"], ready_timeout_s=30)
    with pytest.raises(EngineError) as exc:
        proc.wait_ready()
    message = str(exc.value)
    assert "exited with code 3 before it was ready" in message
    assert (f"vllm got: serve {model_dir} --host 127.0.0.1 --port {proc.port} --served-model-name {NAME} "
            "--disable-uvicorn-access-log --tensor-parallel-size 2") in message
    with pytest.raises(EngineError, match="not allowed"):
        start_engine("vllm", model_dir, NAME, extra=["--enable-log-requests"])


@pytest.mark.parametrize("kind,extra", [
    ("embedded", ["--model=/host/other-model"]), ("embedded", ["--model", "/host/other-model"]),
    ("embedded", ["--dtype=float16"]), ("embedded", ["--served-model-name", "x"]),
    ("vllm", ["--tokenizer", "/host/tok"]), ("vllm", ["--chat-template=/host/t.jinja"]),
    ("vllm", ["--lora-modules", "a=/host/lora"]), ("vllm", ["--quantization", "awq"]),
    ("vllm", ["--trust-remote-code"]), ("vllm", ["--hf-overrides", "{}"]), ("embedded", ["/host/other-model"]),
])
def test_engine_options_that_would_change_what_is_served_are_refused(model_dir, kind: str, extra: list[str]) -> None:
    """A host operator's --engine-arg must never choose the weights, tokenizer, template, adapters, dtype
    or quantisation: every receipt would still name the audited model."""
    with pytest.raises(EngineError, match="not allowed|not the value of an allowed option"):
        start_engine(kind, model_dir, NAME, extra=extra)


def test_stop_kills_a_stubborn_engine_and_its_children(monkeypatch, tmp_path, model_dir) -> None:
    """An engine that ignores SIGTERM and has a child of its own: stop() still leaves nothing."""
    monkeypatch.setattr(engine_mod, "STOP_GRACE_S", 0.5)
    fake_vllm(tmp_path, f"trap '' TERM\nsleep 300 &\necho $! > {tmp_path}/child\nwait\n", monkeypatch)
    proc = start_engine("vllm", model_dir, NAME, ready_timeout_s=0.5)
    deadline = time.monotonic() + 10
    while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "child").read_text())
    with pytest.raises(EngineError, match="not ready after 0.5 s"):
        proc.wait_ready()  # stops it
    assert proc._proc.returncode == -9
    assert not Path(f"/proc/{proc.pid}").exists(), "the engine was not reaped"
    assert gone(child), f"the engine's child {child} still runs"


def gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether a process that is not ours has ended (absent, or a zombie its new parent has yet to reap)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_engine_refuses_a_public_address(model_dir) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.engine", "--model", str(model_dir), "--served-model-name",
                          NAME, "--port", "8000", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a loopback address" in out.stderr and "Traceback" not in out.stderr


def test_an_engine_that_cannot_start_says_why(tmp_path) -> None:
    proc = start_engine("embedded", tmp_path / "absent", NAME, ready_timeout_s=60)
    with pytest.raises(EngineError, match=r"exited with code 2 before it was ready(.|\n)*absent is not a folder"):
        proc.wait_ready()


def test_stop_leaves_no_process(engine, client) -> None:
    """Last in this file: the module's engine stops (gracefully, on SIGTERM) and is reaped."""
    assert [m.id for m in client.models.list()] == [NAME]
    engine.stop()
    assert engine._proc.returncode in (0, -signal.SIGTERM)  # uvicorn's graceful exit, not SIGKILL
    assert not Path(f"/proc/{engine.pid}").exists()
    engine.stop()  # again: nothing to do
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
