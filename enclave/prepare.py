"""Step B in the enclave: turn the provider's model M into Mq, seal Mq for the provider, sign the link.

A prepare job runs like an audit job: queued for the accelerator, in its own child process (the
fork server of enclave/jobs.py), stopped by the supervisor at its deadline or on cancel. The child
loads M from the session's tmpfs folder, applies the method and writes Mq with
`save_pretrained(safe_serialization=True)` into a new folder in the same tmpfs work folder, with
M's other files (tokenizer, ...) copied beside it. The server then seals Mq under a fresh data key
(`sealing.stream.seal`, into tmpfs as well), wraps that key to the recipient key the provider
signed, wipes Mq's plaintext, and signs a prepare statement bound to fresh evidence
(`enclave.report.sign_and_attest`, verified by `verifier.prepare`).

Methods (`verifier.prepare.METHODS`):
- `cast:bfloat16`, `cast:float16`, `cast:float32`: every floating-point weight in that dtype
  (transformers' `dtype=` at load), recorded as library "transformers".
- `int8-weight-only`: torchao `Int8WeightOnlyConfig()` (per-row int8 weights, activations as is).
- `int4-weight-only`: torchao `IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))`.
  torchao's `Int4WeightOnlyConfig` needs a CUDA kernel library (mslk for "plain", tinygemm for
  "tile_packed_to_4d") and refuses the CPU; the Intx form is the same 4-bit group-wise weight
  quantisation, runs on CPU and CUDA alike and gives the same Mq on both (int4 values held in
  int8 storage, so the file is the size of int8's). Measured in docs/FORMATS.md.

Why torchao and not optimum-quanto: transformers (5.x) saves torchao-quantised models with
`save_pretrained` as safetensors and loads them back with `from_pretrained` (so lm-eval's HFLM
audits Mq like any model, with the quantisation named in Mq's config.json); its quanto integration
says `is_serializable = False`, so a quanto Mq could not leave the job as files.

Child wire protocol (pickle from parent, JSON from child, as in enclave/jobs.py): parent -> child
`(model_dir, out_dir, method, device)`; child -> parent `["progress", stage, fraction, message]`,
then `["done", {"library", "version", "config", "versions", "device"}]` or `["failed", message]`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from benchmarks.judges import weight_index_escapes
from enclave.jobs import JobFailed, _detach, _die_with_parent, parse_message, supervise
from enclave.keys import BootKeys
from enclave.report import sign_and_attest
from enclave.session import PrepareInputs
from enclave.tee import CompositeAttester
from enclave.workdir import wipe
from sealing.digest import listing_and_digest
from sealing.keywrap import wrap
from sealing.stream import SealedAsset, read_key_file, seal
from verifier.binding import prepared_wrap_info
from verifier.errors import AAuditError
from verifier.manifest import SessionRef
from verifier.models import canonical_json
from verifier.prepare import (
    METHODS,
    MethodInfo,
    ModelRef,
    PrepareBundle,
    PreparePredicate,
    PrepareRequest,
    PrepareStatement,
)
from verifier.statement import PlatformInfo, model_subjects

CASTS = {"cast:bfloat16": "bfloat16", "cast:float16": "float16", "cast:float32": "float32"}
INT4_GROUP_SIZE = 32
# Files save_pretrained writes for Mq, and weight files of M that Mq replaces: not copied from M.
_REPLACED_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth", ".ckpt",
                      ".gguf")
_WRITTEN = {"config.json", "generation_config.json"}


@dataclass(frozen=True)
class Prepared:
    """A finished prepare job: sealed Mq on tmpfs (streamed to the provider, then wiped), the data key
    wrapped to the provider's recipient key, and the signed prepare bundle."""

    folder: Path
    sealed: SealedAsset
    wrapped_key: bytes
    bundle: bytes


def output_bound(method: str, model_bytes: int) -> int:
    """Upper bound of Mq's plaintext size, to reserve tmpfs before the job: a cast to float32 at
    most doubles a 16-bit model; every other method keeps or shrinks the weights."""
    return 2 * model_bytes + (1 << 20) if method == "cast:float32" else model_bytes + (1 << 20)


def prepare(inputs: PrepareInputs, *, workdir: Path, keys: BootKeys, tls_public: bytes, attester: CompositeAttester,
            code_identity: str, device: str | None, progress: Callable[[str, float, str], None]) -> Prepared:
    """Run one prepare job end to end; Mq's plaintext is wiped before this returns or raises."""
    started = _now()
    plain = workdir / f"prepared-{secrets.token_hex(8)}"
    out = workdir / f"prepared-sealed-{secrets.token_hex(8)}"
    try:
        progress("prepare", 0.0, f"{inputs.method}: loading the model in a job process")
        done = run_prepare(inputs.model_dir, plain, inputs.method, device=device, deadline_s=inputs.deadline_s,
                           progress=progress, cancel=inputs.cancel)
        progress("seal", 0.0, "digesting and sealing Mq under a new data key")
        listing, digest = listing_and_digest(plain)
        total = sum(e["size"] for e in listing) or 1
        sealed_so_far = [0]

        def advance(n: int) -> None:
            sealed_so_far[0] += n
            progress("seal", sealed_so_far[0] / total, "")

        sealed = seal(plain, out, "model", progress=advance)
        if sealed.digest != digest:
            raise JobFailed("Mq changed while it was sealed; prepare again")
    except BaseException:
        wipe(out)
        raise
    finally:
        wipe(plain)  # Mq's plaintext never outlives the job
    try:
        progress("report", 0.0, "signing the prepare statement and taking the final attestation")
        wrapped = wrap(read_key_file(sealed.key_path), inputs.recipient, inputs.recipient_suite,
                       prepared_wrap_info(digest, keys.signing_public, inputs.provider, inputs.session_id, inputs.job,
                                          inputs.nonce))
        sealed.key_path.unlink()
        statement = PrepareStatement(
            subject=model_subjects(listing),
            predicate=PreparePredicate(
                original=ModelRef(inputs.model_digest, len(inputs.model_listing), inputs.model_bytes),
                prepared=ModelRef(digest, len(listing), sum(e["size"] for e in listing)),
                method=MethodInfo(inputs.method, done["library"], done["version"], done["config"]),
                request=PrepareRequest(SessionRef(inputs.session_id, inputs.session_nonce, inputs.job),
                                       inputs.provider, inputs.recipient_suite, inputs.recipient, inputs.signature),
                enclave_key=keys.signing_public,
                platform=PlatformInfo(attester.platform, attester.platform == "sim", code_identity),
                versions=done["versions"],
                device=done["device"],
                started_at=started,
                finished_at=_now(),
                nonce=inputs.nonce.hex(),
            ),
        )
        envelope, enclave, session, final = sign_and_attest(statement.to_json(), keys=keys, tls_public=tls_public,
                                                            attester=attester, nonce=inputs.nonce)
        bundle = canonical_json(PrepareBundle(envelope, enclave, inputs.nonce.hex(), session, final).to_json())
        progress("report", 1.0, "done")
        return Prepared(out, sealed, wrapped, bundle)
    except BaseException:
        wipe(out)
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_prepare(model_dir: Path, out_dir: Path, method: str, *, device: str | None, deadline_s: float,
                progress: Callable[[str, float, str], None], cancel: threading.Event) -> dict[str, Any]:
    """Run `quantise` in a child process of the jobs' fork server; returns what it reports as done.
    Raises JobDeadline, JobCancelled or JobFailed like `enclave.jobs.run_job`."""
    return supervise(_child_main, "prepare job",
                     lambda conn: conn.send((str(model_dir), str(out_dir), method, device)), _parse,
                     deadline_s=deadline_s, progress=progress, cancel=cancel)


_DONE_KEYS = {"library": str, "version": str, "config": dict, "versions": dict, "device": str}


def _parse(data: bytes) -> list:
    """One checked message from the child (it runs the provider's model files, so no pickles)."""
    return parse_message(data, _done, "prepare job")


def _done(fields: dict[str, Any]) -> dict[str, Any]:
    if set(fields) != set(_DONE_KEYS) or not all(isinstance(fields[k], t) for k, t in _DONE_KEYS.items()) \
            or not all(isinstance(v, str) for v in fields["versions"].values()):
        raise ValueError("not a prepare job's result")
    return fields


def _child_main(conn: Connection) -> None:
    _die_with_parent()
    _detach()
    model_dir, out_dir, method, device = conn.recv()

    def send(*message: object) -> None:
        conn.send_bytes(json.dumps(message).encode())

    try:
        done = quantise(Path(model_dir), Path(out_dir), method, device=device,
                        progress=lambda stage, fraction, message: send("progress", stage, float(fraction), message))
    except AAuditError as exc:
        send("failed", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # other messages may quote the model's files; only the type is safe to show
        send("failed", type(exc).__name__)
    else:
        send("done", done)
    conn.close()


def quantise(model_dir: Path, out_dir: Path, method: str, *, device: str | None = None,
             progress: Callable[[str, float, str], None] = lambda *_: None) -> dict[str, Any]:
    """Write Mq = `method`(M) into `out_dir` (safetensors, plus M's non-weight files); returns the
    method's library, version and configuration, the library versions and the device used.
    Runs in the job process (it imports torch); also usable directly in tests."""
    import os

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    import torch
    from transformers import AutoModelForCausalLM

    if method not in METHODS:
        raise JobFailed(f"unknown prepare method {method!r}; known: {', '.join(METHODS)}")
    if escapes := weight_index_escapes(model_dir):  # Mq, sealed to the provider, would carry those weights
        raise JobFailed(f"the model cannot be prepared: {escapes}; M's weights are files of its own folder")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True,
                              "device_map": device}
    if method in CASTS:
        kwargs["dtype"] = getattr(torch, CASTS[method])
        library = "transformers"
    else:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig

        config = Int8WeightOnlyConfig() if method == "int8-weight-only" else \
            IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP_SIZE))
        kwargs.update(dtype="auto", quantization_config=TorchAoConfig(config))
        library = "torchao"
    progress("prepare", 0.1, f"{method}: loading M and applying {library}")
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):  # transformers fills them with random values: Mq would not be a function of M
        raise JobFailed(f"M's checkpoint lacks {len(info['missing_keys'])} of the weights its config.json describes "
                        "(transformers would initialise them at random, and Mq could be far larger than M); "
                        "upload a complete save_pretrained folder")
    progress("prepare", 0.6, f"{method}: writing Mq (safetensors)")
    out_dir.mkdir(mode=0o700)
    model.save_pretrained(out_dir, safe_serialization=True)
    del model
    _copy_other_files(model_dir, out_dir)
    saved = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    config_record = saved.get("quantization_config") if library == "torchao" else {"dtype": CASTS[method]}
    versions = {name: _version(name) for name in ("torch", "transformers", "torchao", "safetensors")}
    progress("prepare", 1.0, f"{method}: Mq written")
    return {"library": library, "version": versions[library], "config": config_record or {}, "versions": versions,
            "device": device}


def _copy_other_files(model_dir: Path, out_dir: Path) -> None:
    """M's tokenizer and other non-weight files go into Mq unchanged (its weights and config are new)."""
    for src in sorted(model_dir.rglob("*")):
        rel = src.relative_to(model_dir)
        if not src.is_file() or src.is_symlink() or str(rel) in _WRITTEN or src.name.endswith(_REPLACED_SUFFIXES):
            continue
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _version(name: str) -> str:
    with contextlib.suppress(Exception):
        return version(name)
    return "not installed"
