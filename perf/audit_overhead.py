"""What the attested audit costs over plain lm-eval, on the same model, tasks, batch size and dtype.

Issue 12 asks: job time (run request to bundle) / plain lm-eval <= 1.03x, and end to end (first
upload to verified bundle) / plain <= 1.10x, at the 87M-parameter, 400-question size on the shared
2-core machine. Method:

- One random-weight Llama (seeded; --layers/--hidden/... or an existing folder with --model), an
  MMLU-shaped multiple-choice task of --questions questions (four lettered options, generated
  offline from a seed) and, with --gen-prompts N > 0, a short-answer generation task. The audit
  spec's [engine] carries --batch-size and --dtype. The parties seal model, data and spec once.
- A (plain): stock lm-eval in this process: `HFLM(pretrained=<plaintext folder>, dtype, batch_size,
  device)` and `lm_eval.simple_evaluate` on the tasks as `spec_to_lm_eval_yaml` writes them
  (TaskManager(include_defaults=False, include_path=...), the spec's seeds, log_samples=True,
  offline). Like the enclave's runner, it skips lm-eval's environment report (git, pip,
  nvidia-smi subprocesses), which is not evaluation work and would flatter the ratio.
- B (attested): a real sim enclave on loopback (attested TLS, gRPC). Per run: a new session, the
  three sealed uploads, both parties' signed approvals, the signed run request followed to the
  bundle (the job runs in the enclave's job process), `verify_bundle` against a third-party policy
  expecting the three digests, then the session is closed (its plaintext dropped).
- Runs alternate A, B, A, B for --pairs pairs; reported are the medians of per-pair ratios B/A for
  job time and for end to end, the medians of each side's phases (B's from the times the client sees
  the job's progress stages: queue + job start until "loading model", model load + task build until
  the first request phase, evaluation until "done", report + sign until the bundle arrives), and
  tokens/s (prompt + generated tokens of the evaluation, counted once from A's samples, over each
  side's evaluation time).
- The two sides' aggregate numbers must be equal (every metric of every task), else exit 1.

Exit 1 if a library or input is missing, a run fails, a bundle does not verify, results differ, or
the run is at the target size and a target is not met; 2 for unusable options.

    python perf/audit_overhead.py [--pairs 3] [--layers 12 --hidden 768] [--questions 400]  # the target size
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

JOB_TARGET, E2E_TARGET = 1.03, 1.10
TARGET_SIZE = "87M parameters, 400 questions"
MC_TASK, GEN_TASK = "aa_overhead_mc", "aa_overhead_gen"
_WORDS = ("river", "stone", "copper", "lantern", "orbit", "meadow", "signal", "harbor", "cipher", "granite",
          "falcon", "ember", "tide", "prism", "vector", "canyon", "willow", "quartz", "beacon", "delta",
          "atlas", "nimbus", "cobalt", "summit", "glacier", "thistle", "marble", "ridge", "saffron", "basalt")


def fail(message: str, code: int = 1) -> int:
    print(f"audit_overhead: FAILED: {message}", file=sys.stderr)
    return code


@dataclass
class Attested:
    uploads_s: float
    approvals_s: float
    job_s: float
    verify_s: float
    stages: dict[str, float]  # phase -> seconds
    results: dict[str, Any]

    @property
    def e2e_s(self) -> float:
        return self.uploads_s + self.approvals_s + self.job_s + self.verify_s


@dataclass
class Plain:
    load_s: float
    eval_s: float
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(repr=False)

    @property
    def total_s(self) -> float:
        return self.load_s + self.eval_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs, alternating plain and attested (default 3)")
    ap.add_argument("--model", type=Path, help="an existing Hugging Face Llama folder (safetensors) instead of a "
                                                "random one; its own tokenizer is used")
    ap.add_argument("--layers", type=int, default=4, help="random model: hidden layers (default 4; the issue's "
                                                           "87M-parameter target size is --layers 12 --hidden 768)")
    ap.add_argument("--hidden", type=int, default=384, help="random model: hidden size (default 384: 7M "
                                                            "parameters, so 3 pairs take about 3 min on 2 cores)")
    ap.add_argument("--intermediate", type=int, help="random model: MLP size (default 8/3 x hidden, rounded to 256)")
    ap.add_argument("--heads", type=int, help="random model: attention heads (default hidden / 64)")
    ap.add_argument("--kv-heads", type=int, help="random model: key/value heads (default: as many as --heads)")
    ap.add_argument("--vocab", type=int, default=512, help="random model: embedding rows (default 512, the "
                                                           "tokenizer's size; larger adds real lm_head cost)")
    ap.add_argument("--questions", type=int, default=400, help="MMLU-shaped multiple-choice questions (default 400)")
    ap.add_argument("--gen-prompts", type=int, default=0, help="prompts of a generation task (default 0: none)")
    ap.add_argument("--gen-tokens", type=int, default=16, help="max new tokens per generation prompt (default 16)")
    ap.add_argument("--batch-size", default="8", help='the spec\'s [engine] batch_size: 1-1024 or "auto" (default 8)')
    ap.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                    help="the spec's [engine] dtype, and the random model's stored dtype unless auto (default auto)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu); both sides use it")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the model, the questions and the spec")
    args = ap.parse_args()
    if args.pairs < 1 or args.questions < 20 or args.gen_prompts < 0 or args.gen_tokens < 1:
        return fail("--pairs must be >= 1, --questions >= 20 (the spec's document floor), --gen-prompts >= 0, "
                    "--gen-tokens >= 1", 2)
    if args.batch_size != "auto" and not args.batch_size.isdigit():
        return fail(f'--batch-size must be an integer or "auto", not {args.batch_size!r}', 2)
    if args.model is not None and not (args.model / "config.json").is_file():
        return fail(f"--model {args.model}: no config.json there; give a Hugging Face model folder", 2)
    from importlib.util import find_spec

    missing = [m for m in ("torch", "transformers", "lm_eval", "safetensors") if find_spec(m) is None]
    if missing:
        return fail(f"{', '.join(missing)} not installed: this benchmark needs torch, transformers and lm-eval "
                    "(pip install -e '.[enclave]'; offline: see perf/gpu_audit.sh)")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail(f"--device {args.device} but torch sees no CUDA device (torch {torch.__version__})")

    import logging

    logging.getLogger("aaudit.enclave").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="audit-overhead-"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf-datasets-cache")  # the plain side's Arrow cache: removed after
    try:
        return _measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(args: argparse.Namespace, tmp: Path) -> int:
    from e2e_helpers import Parties, RunningEnclave, approve_both, open_session, provision

    from benchmarks.spec import parse_spec, spec_to_lm_eval_yaml
    from enclave.measure import code_identity
    from sealing.identity import generate_identity, generate_samples_key
    from sealing.stream import seal
    from verifier import policy

    t0 = time.perf_counter()
    model_dir = args.model or _random_model(tmp / "parties" / "model", args)
    params = _parameter_count(model_dir)
    data = tmp / "parties" / "data"
    data.mkdir(parents=True)
    rng = random.Random(args.seed)
    (data / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _mc_records(rng, args.questions)))
    if args.gen_prompts:
        (data / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _gen_records(rng, args.gen_prompts)))
    recipient, samples_key, _ = generate_samples_key(tmp / "parties" / "keys", "auditor")
    spec_text = _spec_toml(args, recipient)
    (tmp / "parties" / "spec").mkdir()
    (tmp / "parties" / "spec" / "audit.toml").write_text(spec_text)
    spec = parse_spec(spec_text.encode())
    plain_tasks = tmp / "plain-tasks"
    plain_tasks.mkdir()
    for name, text in spec_to_lm_eval_yaml(spec, str(data)).items():
        (plain_tasks / f"{name}.yaml").write_text(text)
    sealed = {"model": seal(model_dir, tmp / "parties" / "sealed", "model"),
              "dataset": seal(data, tmp / "parties" / "sealed", "dataset"),
              "spec": seal(tmp / "parties" / "spec" / "audit.toml", tmp / "parties" / "sealed", "spec")}
    provider, _, _ = generate_identity(tmp / "parties" / "keys", "provider")
    auditor, _, _ = generate_identity(tmp / "parties" / "keys", "auditor")
    enclave_policy = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]}},
                                  "enclave-policy")
    third_party = policy.parse({"allow_simulated": True, "sim": {"measurements": [code_identity()]},
                                "expect": {**{f"{k}_digest": a.digest for k, a in sealed.items()},
                                           "code_identity": [code_identity()]}}, "third-party-policy")
    parties = Parties(tmp / "parties", b"", sealed, provider, auditor, enclave_policy, samples_key)
    tasks = ", ".join(f"{t.name} ({t.config['output_type']})" for t in spec.tasks)
    print(f"model: {params / 1e6:.1f}M parameters ({model_dir if args.model else 'random, ' + _shape(args)}); "
          f"tasks: {tasks}; {args.questions} questions, {args.gen_prompts} generation prompts; "
          f"batch_size {args.batch_size}, dtype {args.dtype}, device {args.device}; "
          f"model {sealed['model'].plaintext_size / 1e6:.0f} MB sealed; setup {time.perf_counter() - t0:.1f} s")

    enclave = RunningEnclave()
    plains: list[Plain] = []
    attested: list[Attested] = []
    try:
        with enclave.client() as client:
            for i in range(args.pairs):
                a = _plain(model_dir, spec, plain_tasks, args.device)
                b = _attested(client, parties, third_party, (open_session, provision, approve_both))
                plains.append(a)
                attested.append(b)
                print(f"pair {i + 1}/{args.pairs}: plain {a.total_s:6.2f} s   attested job {b.job_s:6.2f} s, "
                      f"end to end {b.e2e_s:6.2f} s", flush=True)
                problem = _disagreement(a.results, b.results)
                if problem:
                    return fail(f"pair {i + 1}: the attested results differ from plain lm-eval's: {problem}")
    except Exception as exc:  # noqa: BLE001 - any failed run fails the benchmark, loudly and by name
        return fail(f"a run failed: {type(exc).__name__}: {exc}")
    finally:
        enclave.stop()
    print("results: the attested bundle's aggregates equal plain lm-eval's in every pair ("
          + "; ".join(f"{t}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()) if isinstance(v, float))
                      for t, m in plains[0].results.items()) + ")")
    _report(args, params, plains, attested, _token_count(model_dir, plains[0].samples))
    return 1 if _met(plains, attested, params, args) is False else 0


def _random_model(out: Path, args: argparse.Namespace) -> Path:
    """A seeded random Llama of the asked shape, with the demo's byte-level BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from benchmarks.demo_assets import build_tiny_model

    build_tiny_model(out, seed=args.seed)  # its tokenizer; the weights are replaced below
    tok = AutoTokenizer.from_pretrained(out)
    heads = args.heads or max(1, args.hidden // 64)
    config = LlamaConfig(
        vocab_size=max(args.vocab, len(tok)), hidden_size=args.hidden,
        intermediate_size=args.intermediate or 256 * max(1, round(args.hidden * 8 / 3 / 256)),
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=args.kv_heads or heads,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    init_device = args.device if args.device.startswith("cuda") else "cpu"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(args.seed)
        with torch.device(init_device):
            model = LlamaForCausalLM(config).to(dtype).eval()
    finally:
        torch.random.set_rng_state(state)
    for stale in out.glob("*.safetensors*"):
        stale.unlink()
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def _shape(args: argparse.Namespace) -> str:
    return f"{args.layers} layers, hidden {args.hidden}, vocab {args.vocab}"


def _parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                total += _numel(f.get_slice(name).get_shape())
    if not total:
        raise SystemExit(fail(f"{model_dir} holds no safetensors weights"))
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _mc_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """MMLU's shape: a question, four options shown as A-D, the answer as an index."""
    out = []
    for i in range(n):
        words = rng.sample(_WORDS, 6)
        question = f"Question {i}: which {words[0]} lies nearest the {words[1]} beyond the {words[2]}?"
        choices = [" ".join(rng.sample(_WORDS, rng.randint(1, 3))) for _ in range(4)]
        out.append({"question": question, "choices": choices, "answer": rng.randrange(4)})
    return out


def _gen_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    return [{"question": f"Name the {rng.choice(_WORDS)} that follows the {rng.choice(_WORDS)} {i}.",
             "answer": rng.choice(_WORDS)} for i in range(n)]


def _spec_toml(args: argparse.Namespace, recipient: str) -> str:
    batch = '"auto"' if args.batch_size == "auto" else args.batch_size
    mc = f'''
[[task]]
name = "{MC_TASK}"
dataset = "mc.jsonl"

[task.config]
output_type = "multiple_choice"
doc_to_text = "{{{{question}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice = ["A", "B", "C", "D"]
doc_to_target = "answer"
metric_list = [{{ metric = "acc", aggregation = "mean", higher_is_better = true }}]
'''
    gen = f'''
[[task]]
name = "{GEN_TASK}"
dataset = "gen.jsonl"

[task.config]
output_type = "generate_until"
doc_to_text = "Question: {{{{question}}}}\\nAnswer:"
doc_to_target = "{{{{answer}}}}"
generation_kwargs = {{ until = ["Question:"], max_gen_toks = {args.gen_tokens}, do_sample = false }}
metric_list = [{{ metric = "exact_match", aggregation = "mean", higher_is_better = true }}]
'''
    return (f'name = "audit-overhead"\nversion = 1\nseed = {args.seed}\noutput = "aggregate+samples"\n'
            f'samples_recipient = "{recipient}"\ndeadline = "2h"\n\n'
            f'[engine]\nname = "hf"\nbatch_size = {batch}\ndtype = "{args.dtype}"\n'
            + mc + (gen if args.gen_prompts else ""))


def _plain(model_dir: Path, spec: Any, include_path: Path, device: str) -> Plain:
    """Stock lm-eval in this process, as a user reproducing the audit would run it."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from enclave.runner import OFFLINE_ENV, _quiet_lm_eval

    os.environ.update(OFFLINE_ENV)
    t0 = time.perf_counter()
    lm = HFLM(pretrained=str(model_dir), dtype=spec.engine.dtype, batch_size=spec.engine.batch_size, device=device)
    t1 = time.perf_counter()
    with _quiet_lm_eval():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=spec.task_names, task_manager=TaskManager(include_defaults=False,
                                                                       include_path=str(include_path)),
            batch_size=spec.engine.batch_size, log_samples=True, random_seed=spec.seed, numpy_random_seed=spec.seed,
            torch_random_seed=spec.seed, fewshot_random_seed=spec.seed)
    t2 = time.perf_counter()
    del lm
    return Plain(t1 - t0, t2 - t1, {t: out["results"][t] for t in spec.task_names}, out["samples"])


def _attested(client: Any, parties: Any, third_party: Any, steps: tuple) -> Attested:
    """One audit through the enclave: session, uploads, approvals, run, verification; then close."""
    from e2e_helpers import nonce

    from verifier.bundle import verify_bundle
    from verifier.statement import parse_statement

    open_session, provision, approve_both = steps
    sid = open_session(client, parties)
    t0 = time.perf_counter()
    provision(client, parties, sid)
    t1 = time.perf_counter()
    approve_both(client, parties, sid)
    t2 = time.perf_counter()
    enclave = client.attest(parties.enclave_policy)
    seen: dict[str, float] = {}

    def on_progress(p: Any) -> None:
        seen.setdefault(p.stage, time.perf_counter())

    t3 = time.perf_counter()
    bundle = client.run(enclave, sid, "auditor", parties.auditor, nonce(), on_progress=on_progress)
    t4 = time.perf_counter()
    verdict = verify_bundle(bundle, third_party, at=datetime.now(timezone.utc))
    if not verdict.verified:
        raise RuntimeError("the bundle does not verify: " + "; ".join(f"{s.name}: {s.reason}"
                                                                       for s in verdict.failures))
    t5 = time.perf_counter()
    client.session_action(client.attest(parties.enclave_policy), "close", sid, "auditor", parties.auditor)
    phases = [s for s in seen if s in ("loglikelihood", "loglikelihood_rolling", "generate_until")]
    for needed in ("loading model", "done"):
        if needed not in seen or not phases:
            raise RuntimeError(f"the job never reported stage {needed!r} or a request phase (saw {list(seen)})")
    first_phase = min(seen[s] for s in phases)
    stages = {"queue + job start": seen["loading model"] - t3,
              "model load + task build": first_phase - seen["loading model"],
              "evaluation": seen["done"] - first_phase,
              "report + sign": t4 - seen["done"]}
    results = parse_statement(base64.b64decode(bundle["envelope"]["payload"])).results
    return Attested(t1 - t0, t2 - t1, t4 - t3, t5 - t4, stages, results)


def _disagreement(plain: dict[str, Any], attested: dict[str, Any]) -> str | None:
    """The first metric whose value differs (or is missing) between the two sides, or None."""
    if set(plain) != set(attested):
        return f"tasks {sorted(plain)} vs {sorted(attested)}"
    for task, metrics in plain.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "alias":
                other = attested[task].get(key)
                if other != value:
                    return f"{task} {key}: plain {value!r}, attested {other!r}"
    return None


def _token_count(model_dir: Path, samples: dict[str, list[dict[str, Any]]]) -> int:
    """Prompt + continuation tokens of every loglikelihood request, prompt + generated tokens of every
    generation: the evaluation's work, the same on both sides."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    total = 0
    for task_samples in samples.values():
        for s in task_samples:
            for args, resp in zip(s["arguments"], s["resps"]):
                if isinstance(args[1], dict):  # generate_until: (context, gen_kwargs)
                    total += len(tok(args[0])["input_ids"]) + len(tok(resp[0])["input_ids"])
                else:  # loglikelihood: (context, continuation)
                    total += len(tok(args[0] + args[1])["input_ids"])
    return total


def _report(args: argparse.Namespace, params: int, plains: list[Plain], attested: list[Attested], tokens: int) -> None:
    med = statistics.median
    job = [b.job_s / a.total_s for a, b in zip(plains, attested)]
    e2e = [b.e2e_s / a.total_s for a, b in zip(plains, attested)]
    print(f"\n{len(plains)} alternating pairs (A plain lm-eval, B attested); medians:")
    print(f"  A plain lm-eval         {med(a.total_s for a in plains):7.2f} s  (model load {med(a.load_s for a in plains):.2f} s, "
          f"evaluation {med(a.eval_s for a in plains):.2f} s)")
    print(f"  B attested job          {med(b.job_s for b in attested):7.2f} s  (run request to bundle)")
    print(f"  B attested end to end   {med(b.e2e_s for b in attested):7.2f} s  (first upload to verified bundle)")
    print("  B phases:")
    rows = [("uploads (3 sealed assets)", [b.uploads_s for b in attested]),
            ("approvals (both parties)", [b.approvals_s for b in attested])]
    rows += [(k, [b.stages[k] for b in attested]) for k in attested[0].stages]
    rows += [("bundle verification", [b.verify_s for b in attested])]
    for name, values in rows:
        print(f"    {name:28s} {med(values):7.2f} s")
    print(f"  tokens/s (evaluation, {tokens} prompt + generated tokens): plain {tokens / med(a.eval_s for a in plains):.0f}, "
          f"attested {tokens / med(b.stages['evaluation'] for b in attested):.0f}")
    print(f"  job time / plain:    median {med(job):.3f}x  (pairs {min(job):.3f} to {max(job):.3f})")
    print(f"  end to end / plain:  median {med(e2e):.3f}x  (pairs {min(e2e):.3f} to {max(e2e):.3f})")


def _met(plains: list[Plain], attested: list[Attested], params: int, args: argparse.Namespace) -> bool | None:
    """Print the issue's targets and whether this run meets them; None when this size is not the target's."""
    med = statistics.median
    job = med(b.job_s / a.total_s for a, b in zip(plains, attested))
    e2e = med(b.e2e_s / a.total_s for a, b in zip(plains, attested))
    at_size = 80e6 <= params <= 95e6 and args.questions == 400
    where = "this run is at that size" if at_size else f"this run is NOT at that size ({params / 1e6:.0f}M, " \
                                                         f"{args.questions} questions): indicative only"
    print(f"targets ({TARGET_SIZE} on the 2-core machine; {where}):")
    print(f"  job time / plain <= {JOB_TARGET:.2f}x: {job:.3f}x {'met' if job <= JOB_TARGET else 'NOT met'}")
    print(f"  end to end / plain <= {E2E_TARGET:.2f}x: {e2e:.3f}x {'met' if e2e <= E2E_TARGET else 'NOT met'}")
    return (job <= JOB_TARGET and e2e <= E2E_TARGET) if at_size else None


if __name__ == "__main__":
    raise SystemExit(main())
