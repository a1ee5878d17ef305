#!/usr/bin/env bash
# The GPU benchmark (issue 12): the attested audit against plain lm-eval on a random-weight model with
# Llama-3.1-8B's shape in bf16, on one CUDA GPU, with no network. One command, from the repository root:
#
#     perf/gpu_audit.sh
#
# It runs perf/audit_overhead.py (see its --help for the method) with an MMLU-shaped 1,000-question
# multiple-choice task and a 100-prompt generation task (32 new tokens each), batch_size "auto", dtype
# bfloat16, device cuda, 3 alternating pairs, and prints the ratios (job time and end to end over plain
# lm-eval), tokens/s and the attested side's phase breakdown. The whole run is capped at 8 minutes.
#
# Shape: Llama-3.1-8B's hidden 4096, MLP 14336, 32 heads, 8 key/value heads, vocabulary 128256 (the
# embedding and lm_head at full size: the logits over 128k tokens are a real part of the cost), but
# GPU_LAYERS=8 decoder layers instead of 32 by default: 2.8B parameters, 5.6 GB in bf16. Every layer
# does the same work, so the ratio is not changed by the count, while the parts that scale with bytes
# (building the random weights, sealing, three uploads, loading) are 4x smaller and fit the 8 minutes
# with three pairs. GPU_LAYERS=32 runs the full 8B shape (16 GB; about 3x longer around the evaluation).
#
# Settings (environment): PY (python with the project installed; default .venv/bin/python, else
# python3), WHEELS (folder of wheels for an offline install, default ./wheels), GPU_LAYERS (default 8),
# PAIRS (default 3), SMALL=1 (a small CPU shape, 100 questions, 10 prompts, 1 pair: proves the script
# end to end on a machine without a GPU; its ratios say nothing about GPUs).
#
# Offline install. If lm-eval is not importable, the script installs from $WHEELS with no index. Fetch
# the wheels beforehand on a machine with network, the same Python (3.11) and platform (Linux x86_64):
#
#     pip download --no-deps --require-hashes -d wheels -r requirements-gpu.lock
#
# and carry ./wheels with the checkout (the project itself runs from the checkout, on PYTHONPATH). requirements-gpu.lock pins the CUDA enclave image's
# dependencies by hash (torch with its nvidia-* wheels, transformers, lm-eval, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS=${WHEELS:-wheels}
GPU_LAYERS=${GPU_LAYERS:-8}
PAIRS=${PAIRS:-3}

if ! "$PY" -c 'import lm_eval, torch, transformers' 2>/dev/null; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_audit: FAILED: lm-eval/torch/transformers are not importable with $PY and there is no wheel" \
             "folder $WHEELS; fetch the wheels as the top of $0 says, or set PY to a python that has them" >&2
        exit 1
    fi
    echo "gpu_audit: installing from $WHEELS (no index)"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --require-hashes -r requirements-gpu.lock
fi

if [ "${SMALL:-0}" = 1 ]; then
    shape=(--layers 2 --hidden 256 --intermediate 896 --heads 4 --kv-heads 2 --vocab 4096)
    work=(--questions 100 --gen-prompts 10 --gen-tokens 16 --batch-size 8 --dtype bfloat16 --device cpu --pairs 1)
    echo "gpu_audit: SMALL=1: a small shape on CPU, to prove the script runs end to end (not a GPU measurement)"
else
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_audit: FAILED: torch sees no CUDA GPU; run on a GPU machine, or SMALL=1 for a CPU check" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    shape=(--layers "$GPU_LAYERS" --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --vocab 128256)
    work=(--questions 1000 --gen-prompts 100 --gen-tokens 32 --batch-size auto --dtype bfloat16 --device cuda
          --pairs "$PAIRS")
    echo "gpu_audit: Llama-3.1-8B shape with $GPU_LAYERS of its 32 layers, bf16, on cuda"
fi

start=$(date +%s)
status=0
timeout 480 env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" perf/audit_overhead.py "${shape[@]}" "${work[@]}" \
    || status=$?
echo "gpu_audit: finished in $(( $(date +%s) - start )) s (limit 480 s), exit $status"
if [ "$status" = 124 ]; then
    echo "gpu_audit: FAILED: over the 8-minute limit; lower GPU_LAYERS or PAIRS" >&2
fi
exit "$status"
