"""The receipt gateway end to end over real HTTPS on 127.0.0.1 (issue 9): `aaudit gateway serve` with
the simulated TEE in front of the embedded engine on a tiny model, a real transparency log over gRPC,
the provider's attested upload, the official `openai` client, receipts and their proofs.

Attacks tried: a model upload by a stranger's key, of another model, with a replayed nonce or an
altered header; parameters the receipt would not bind; duplicate JSON keys; oversized bodies; a
conversation continuing a receipt never issued; a gateway started on an audit that does not verify.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from aaudit.user import GatewayClient, GatewayError
from benchmarks.demo_assets import build_tiny_model
from gateway.provision import UPLOAD_HEADER, ProvisionHeader
from gateway.serve import bind
from sealing.digest import file_listing
from sealing.identity import generate_identity, load_identity
from sealing.stream import SealedReader, seal
from tests.bundle_factory import gateway_policy_toml, make_bundle
from tests.tlog_support import running_log
from tlog.publish import publish_bundle
from verifier import dsse, policy as policies
from verifier.receipt import parse_receipt, payload_digest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


@dataclass
class World:
    root: Path
    target: str
    policy_path: Path
    sealed: Path
    other_sealed: Path
    provider_key: Path
    stranger_key: Path
    bundle_path: Path
    log_target: str
    proc: subprocess.Popen


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aaudit.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _start(world_root: Path, bundle: Path, policy: Path, log_target: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port_file = world_root / f"port-{os.urandom(4).hex()}"
    proc = subprocess.Popen([sys.executable, "-m", "aaudit.cli", "gateway", "serve", "--bundle", str(bundle),
                             "--policy", str(policy), "--log", log_target, "--listen", "127.0.0.1:0", "--tee", "sim",
                             "--gpu-evidence", "none", "--port-file", str(port_file), "--batch-seconds", "0.3",
                             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"gateway did not start: {out}\n{err}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text()}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gateway")
    model = build_tiny_model(root / "model")
    other = build_tiny_model(root / "other-model", seed=1)
    provider, provider_key, _ = generate_identity(root / "keys", "provider")
    _, stranger_key, _ = generate_identity(root / "stranger", "provider")
    sealed = seal(model, root / "sealed", "model", chunk_size=1 << 16)  # several chunks: one can be cut
    seal(other, root / "other-sealed", "model")
    made = make_bundle(provider=provider._key, model_listing=file_listing(model))
    assert made.digests["model"] == sealed.digest
    with running_log(root / "log.db") as log:
        made.bundle = publish_bundle(log.client, made.bundle, log_key=log.key)
        bundle_path = made.write(root)
        policy_path = root / "policy.toml"
        policy_path.write_text(gateway_policy_toml(made, log.key))
        policies.load(policy_path)
        proc, target = _start(root, bundle_path, policy_path, log.target)
        try:
            yield World(root, target, policy_path, root / "sealed", root / "other-sealed", provider_key, stranger_key,
                        bundle_path, log.target, proc)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            for secret in ("Traceback", "Say something"):
                assert secret not in out + err


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[GatewayClient]:
    with GatewayClient(world.target) as c:
        yield c


def _asset(folder: Path):  # noqa: ANN202
    from sealing.stream import SealedAsset

    return SealedAsset.load(folder / "model.json")


def test_connections_the_gateway_accepts_send_without_nagle_delays() -> None:
    """With Nagle on, an answer's body record waits for the client to ACK its header record, and the
    client delays that ACK: about 40 ms more per answer, and per streamed chunk. asyncio turns Nagle
    off only on connections accepted from a socket that says it is TCP; `bind` must make one."""

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[int] = loop.create_future()

        class Accepted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        sock = bind("127.0.0.1:0")
        server = await loop.create_server(Accepted, sock=sock)
        try:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            try:
                return await asyncio.wait_for(made, 10)
            finally:
                writer.close()
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_a_gateway_refuses_to_start_on_an_audit_that_does_not_verify(world: World) -> None:
    made_policy = world.policy_path.read_text().replace(_asset(world.sealed).digest, "sha256:" + "ab" * 32)
    bad = world.root / "wrong-model-policy.toml"
    bad.write_text(made_policy)
    res = _cli("gateway", "serve", "--bundle", str(world.bundle_path), "--policy", str(bad), "--log",
               world.log_target, "--listen", "127.0.0.1:0", "--tee", "sim", "--gpu-evidence", "none")
    assert res.returncode == 1, res.stderr
    assert "refusing to serve: the audit bundle does not verify" in res.stderr and "model digest" in res.stderr
    assert "Traceback" not in res.stderr


def test_uploads_other_than_the_audited_model_from_the_audited_provider_are_refused(world: World,
                                                                                    client: GatewayClient) -> None:
    policy = policies.load(world.policy_path)
    # a stranger's key, though it holds the audited model's sealed copy
    with pytest.raises(GatewayError, match="only the provider named in the audit's manifest"):
        client.provision(client.attest(policy), _asset(world.sealed), load_identity(world.stranger_key))
    # the audited provider, with another model: refused before anything is decrypted
    with pytest.raises(GatewayError, match="serves only the audited model"):
        client.provision(client.attest(policy), _asset(world.other_sealed), load_identity(world.provider_key))
    # the CLI refuses before sending anything
    res = _cli("provider", "provision", str(world.other_sealed), "--gateway", world.target, "--policy",
               str(world.policy_path), "--identity", str(world.provider_key))
    assert res.returncode == 1 and "nothing was sent" in res.stderr


def test_an_upload_header_cannot_be_altered_or_its_nonce_replayed(world: World, client: GatewayClient) -> None:
    policy = policies.load(world.policy_path)
    asset, identity = _asset(world.sealed), load_identity(world.provider_key)
    attested = client.attest(policy)
    captured: dict[str, str] = {}
    real_post = client._http.post

    def truncated(url: str, *, content, headers, timeout):  # noqa: ANN001, ANN202 - send only the first chunk
        captured.update(headers)
        return real_post(url, content=[next(iter(content))], headers=headers, timeout=timeout)

    client._http.post = truncated  # type: ignore[method-assign]
    try:
        with pytest.raises(GatewayError, match="model upload refused"):
            client.provision(attested, asset, identity)
    finally:
        client._http.post = real_post  # type: ignore[method-assign]
    header = ProvisionHeader.decode(captured[UPLOAD_HEADER])
    body = list(SealedReader(asset.sealed_path))
    replay = client._http.post("/v1/provision", content=body, headers={UPLOAD_HEADER: header.encode()})
    assert replay.status_code == 403 and "already used" in replay.json()["error"]["message"]
    altered = ProvisionHeader(header.digest, header.wrapped_key[:-1] + bytes([header.wrapped_key[-1] ^ 1]),
                              header.stream_header, header.party_key, header.attest_nonce, header.signature)
    res = client._http.post("/v1/provision", content=body, headers={UPLOAD_HEADER: altered.encode()})
    assert res.status_code == 403 and "signature does not verify" in res.json()["error"]["message"]
    res = client._http.post("/v1/provision", content=body, headers={UPLOAD_HEADER: "not base64!"})
    assert res.status_code == 400


def test_no_answers_before_the_model_is_provisioned(world: World, client: GatewayClient) -> None:
    res = client._http.post("/v1/completions", json={"model": "audited-model", "prompt": "hi"})
    assert res.status_code == 503 and "aaudit provider provision" in res.json()["error"]["message"]


@pytest.fixture(scope="module")
def serving(world: World, client: GatewayClient) -> World:
    res = _cli("provider", "provision", str(world.sealed), "--gateway", world.target, "--policy",
               str(world.policy_path), "--identity", str(world.provider_key), timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"the gateway computed {_asset(world.sealed).digest} and is serving" in res.stdout
    return world


def _openai(world: World, client: GatewayClient) -> openai.OpenAI:
    """The official client, unchanged; only its HTTP client trusts the pinned certificate."""
    return openai.OpenAI(base_url=f"https://{world.target}/v1", api_key="unused",
                         http_client=httpx.Client(verify=client.ssl_context))


def test_the_official_openai_client_gets_answers_with_receipts(serving: World, client: GatewayClient,
                                                               request: pytest.FixtureRequest) -> None:
    attested = client.attest(policies.load(serving.policy_path))
    assert attested.serving.state == "serving"
    gateway_key = attested.serving.gateway.signing_key.public
    oa = _openai(serving, client)
    request.addfinalizer(oa.close)
    assert [m.id for m in oa.models.list()] == ["audited-model"]
    raw = oa.chat.completions.with_raw_response.create(
        model="audited-model", messages=[{"role": "user", "content": "Say something"}], max_tokens=8, temperature=0)
    completion = raw.parse()
    rid = raw.headers["aaudit-receipt-id"]
    proof = client.receipt(rid, wait_logged_s=20)
    assert proof.status == "logged" and dsse.verify(proof.receipt, gateway_key)
    receipt = parse_receipt(proof.receipt).predicate
    assert receipt.response.sha256 == hashlib.sha256(raw.http_response.content).hexdigest()
    assert receipt.model.digest == _asset(serving.sealed).digest
    assert (receipt.sampling.temperature, receipt.sampling.max_tokens) == (0.0, 8)
    assert receipt.request.path == "/v1/chat/completions" and completion.choices[0].message.content is not None
    # streamed through the official client: the same answer for the same seed
    chunks = list(oa.chat.completions.create(model="audited-model", messages=[{"role": "user", "content": "Say something"}],
                                             max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.choices[0].message.content
    completion2 = oa.completions.create(model="audited-model", prompt="Once", max_tokens=4, seed=7)
    assert completion2.choices[0].text is not None


def test_a_stream_ends_with_its_receipt_over_the_exact_bytes_sent(serving: World, client: GatewayClient) -> None:
    answer = client.ask("/v1/completions", {"model": "audited-model", "prompt": "Once", "max_tokens": 6,
                                            "stream": True, "seed": 3})
    assert answer.response.endswith(b"data: [DONE]\n\n")
    proof = client.receipt(answer.receipt_id, wait_logged_s=20)
    receipt = parse_receipt(proof.receipt).predicate
    assert receipt.response.stream and receipt.response.sha256 == hashlib.sha256(answer.response).hexdigest()
    assert receipt.request.sha256 == hashlib.sha256(answer.request).hexdigest()
    assert receipt.sampling.seed == 3 and answer.text


def test_a_stream_the_client_leaves_halfway_still_gets_its_receipt(serving: World, client: GatewayClient) -> None:
    """No answer without a receipt: the bytes sent before the client hung up are receipted, marked
    incomplete, and fetchable by the id the client got in the headers."""
    body = {"model": "audited-model", "prompt": "Once", "max_tokens": 400, "stream": True, "seed": 5}
    with client._http.stream("POST", "/v1/completions", json=body) as res:
        rid = res.headers["aaudit-receipt-id"]
        next(res.iter_raw())  # one piece of the answer, then hang up
    deadline = time.monotonic() + 20
    while (proof := _proof_or_none(client, rid)) is None:
        assert time.monotonic() < deadline, "no receipt for the abandoned stream"
        time.sleep(0.2)
    response = parse_receipt(proof.receipt).predicate.response
    assert response.stream and not response.complete


def _proof_or_none(client: GatewayClient, rid: str):  # noqa: ANN202
    try:
        return client.receipt(rid)
    except GatewayError:
        return None


def test_requests_the_receipt_could_not_bind_are_refused_by_name(serving: World, client: GatewayClient) -> None:
    post = client._http.post
    res = post("/v1/completions", json={"model": "audited-model", "prompt": "x", "logprobs": 2})
    assert res.status_code == 400 and "'logprobs'" in res.json()["error"]["message"]
    assert res.json()["error"]["param"] == "logprobs"
    res = post("/v1/completions", content=b'{"model": "audited-model", "prompt": "x", "seed": 1, "seed": 2}',
               headers={"content-type": "application/json"})
    assert res.status_code == 400 and "duplicate" in res.json()["error"]["message"]
    res = post("/v1/completions", json={"model": "another", "prompt": "x"})
    assert res.status_code == 404 and "audited model" in res.json()["error"]["message"]
    res = post("/v1/completions", json={"model": "audited-model", "prompt": "x", "n": 2})
    assert res.status_code == 400
    res = post("/v1/completions", json={"model": "audited-model", "prompt": "x" * (2 << 20)})
    assert res.status_code == 413
    res = post("/v1/completions", json={"model": "audited-model", "prompt": "x"},
               headers={"aaudit-conversation": "sha256:" + "00" * 32})
    assert res.status_code == 400 and "start a new conversation" in res.json()["error"]["message"]
    assert client._http.get("/v1/receipts/" + "00" * 16).status_code == 404
    res = post("/v1/chat/completions", json={"model": "audited-model", "messages": [{"role": ["user"], "content": "x"}]})
    assert res.status_code == 400 and res.json()["error"]["param"] == "messages"
    assert client._http.get("/v1/attestation", params={"nonce": "zz"}).status_code == 400
    # an attestation flood from one address is cut (each attestation keeps a nonce until it is used)
    codes = [client._http.get("/v1/attestation", params={"nonce": os.urandom(32).hex()}).status_code
             for _ in range(40)]
    assert 429 in codes and codes[0] == 200
    time.sleep(2.5)  # the bucket refills: later tests attest again


def test_seeds_are_applied_explicitly_so_answers_are_reproducible(serving: World, client: GatewayClient) -> None:
    body = {"model": "audited-model", "prompt": "Once", "max_tokens": 6, "temperature": 1.0}
    first = client.ask("/v1/completions", body)
    seed = parse_receipt(client.receipt(first.receipt_id).receipt).predicate.sampling.seed
    again = client.ask("/v1/completions", {**body, "seed": seed})
    assert again.text == first.text


def test_a_user_chats_discloses_and_the_conversation_chain_binds_every_exchange(serving: World) -> None:
    conv = serving.root / "conversation"
    common = ("--gateway", serving.target, "--policy", str(serving.policy_path), "--conversation", str(conv))
    first = _cli("user", "chat", "Hello there", *common, "--max-tokens", "6", "--seed", "1")
    assert first.returncode == 0, first.stderr
    assert "logged (entry" in first.stdout and first.stdout.startswith("answer: ")
    second = _cli("user", "chat", "And again", *common, "--max-tokens", "6", "--stream")
    assert second.returncode == 0, second.stderr
    from aaudit.user import Conversation

    c = Conversation(conv)
    p1, p2 = c.proof(1), c.proof(2)
    assert parse_receipt(p2.receipt).predicate.conversation == payload_digest(p1.receipt)
    assert parse_receipt(p1.receipt).predicate.conversation == ""
    # the conversation cannot fork: exchange 1 was continued by exchange 2 already
    with GatewayClient(serving.target) as c:
        fork = c._http.post("/v1/chat/completions", json={"model": "audited-model", "messages": [
            {"role": "user", "content": "x"}]}, headers={"aaudit-conversation": payload_digest(p1.receipt)})
    assert fork.status_code == 409 and "cannot fork" in fork.json()["error"]["message"]
    request2 = json.loads((conv / "002.request.json").read_bytes())
    assert [m["role"] for m in request2["messages"]] == ["user", "assistant", "user"]
    assert oct((conv / "001.response").stat().st_mode & 0o777) == "0o600"
    out = serving.root / "disclosure.json"
    res = _cli("user", "disclose", "--conversation", str(conv), "--out", str(out))
    assert res.returncode == 0, res.stderr
    disclosure = json.loads(out.read_text())
    assert len(disclosure["exchanges"]) == 2
    assert base64.b64decode(disclosure["exchanges"][0]["request"]) == (conv / "001.request.json").read_bytes()
    verify = subprocess.run([sys.executable, "-m", "verifier.cli", "disclosure", str(out), "--policy",
                             str(serving.policy_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "What the audit promised" in verify.stdout and "What was served" in verify.stdout
    # re-proven under one checkpoint, the disclosure also passes a regulator's witness
    log_key = policies.load(serving.policy_path).log.public_key
    res = _cli("user", "disclose", "--conversation", str(conv), "--out", str(out), "--log", serving.log_target,
               "--log-key", log_key)
    assert res.returncode == 0, res.stderr
    verify = subprocess.run([sys.executable, "-m", "verifier.cli", "disclosure", str(out), "--policy",
                             str(serving.policy_path), "--witness-state", str(serving.root / "witness.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    disclosure = json.loads(out.read_text())
    # one byte of a disclosed answer changed: the regulator's check names the step
    response = bytearray(base64.b64decode(disclosure["exchanges"][1]["response"]))
    response[len(response) // 2] ^= 1
    disclosure["exchanges"][1]["response"] = base64.b64encode(bytes(response)).decode()
    tampered = serving.root / "tampered.json"
    tampered.write_text(json.dumps(disclosure))
    verify = subprocess.run([sys.executable, "-m", "verifier.cli", "disclosure", str(tampered), "--policy",
                             str(serving.policy_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 1 and "exchange 2: response bytes" in verify.stdout

