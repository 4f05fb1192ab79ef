#!/usr/bin/env bash
# The one prepared device check of the full-size paths (issue 22), before and after each throughput change, in one
# call of at most 8 minutes (DEADLINE seconds, default 470: every run gets what is left of it, so a slow run cannot
# take the whole lease). Random weights, no checkpoint needed. Writes each run's JSON and log to the folder given as
# $1 (default reports/gpu) and prints the table of bench/gpu_table.py (time, model FLOPs, exact MFU, peak memory per
# path; also table.md there).
#
#     bash bench/gpu_check.sh reports/gpu            # PYTHON=... to choose the interpreter
#
# The device image lacks diffusers: run `bash bench/device_wheels.sh` here first (into .whl/), then the call is
#     run(kind="nvidia-h200", timeout_s=540, carry=[".whl"], command="bash bench/gpu_check.sh $OUT/gpu")
# (bench/device_env.sh installs the carried wheels when a module is missing, and stops at once if one still is).
#
# A dry run on CPU (tiny models, the same flags; about 8 minutes on 2 busy cores) appends arguments to every run:
#     REWARD_ARGS="--size tiny --device cpu --image-pixels 12544 --prompt-words 12 --lora-rank 4 --scorer-rows 6 \
#     --score-batch 4 --max-batch-tokens 200" POLICY_ARGS="--size tiny --device cpu --resolution 32 --group 4 \
#     --keep-per-side 1 --steps 2 --text-tokens 16 --lora-rank 4" DEADLINE=1500 LIMIT_SCALE=5 PYTHON=.venv/bin/python \
#     bash bench/gpu_check.sh /tmp/dry
#
# Runs (labels in the table):
#   reward-before    7B SpatialScore as configs/reward/qwen2_5_vl_7b.yaml trains it (2 pairs, gradient
#                    checkpointing), scoring 32 per pass, 64 rows of 10-120 words through SpatialScorer in batches of 32
#   reward-after     4 pairs without checkpointing; 64 per scoring pass; SpatialScorer in length buckets
#                    (--max-batch-tokens 24576)
#   policy-before    FLUX.1-dev + LoRA 32 as measured before: 8 images per sampling forward, 2 pairs per training
#                    forward, PyTorch's attention choice with cuDNN off (flash), eager, no critic
#   policy-after     the whole group (24) per sampling forward with cuDNN attention there (no-grad only), flash in the
#                    training pass, 4 pairs per training forward (cuDNN falls back to flash if it fails)
#   policy-compiled  policy-after with the blocks compiled, the 7B critic resident: the end-to-end group time and peak
#   reward-compiled  reward-after with the blocks compiled (--compile), fixed-length rows only; last, as it may not fit
set -u
out=${1:-reports/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
deadline=${DEADLINE:-470}
SECONDS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
device_env torch diffusers transformers peft lightning || exit 2
"$python" -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/nvidia_smi.txt"

# run LABEL LIMIT SCRIPT ARGS...: one check with at most LIMIT seconds and never past the deadline
run() {
    local label=$1 limit=$(($2 * ${LIMIT_SCALE:-1})) script=$3
    shift 3
    local left=$((deadline - SECONDS - 10))
    if ((left < 30)); then
        echo "== $label skipped: ${left}s left of the ${deadline}s budget" | tee "$out/$label.log"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $label (limit ${limit}s): $script $*"
    local extra=${REWARD_ARGS:-}
    [[ $script == *rl_gpu.py ]] && extra=${POLICY_ARGS:-}
    # shellcheck disable=SC2086  # the extra arguments are meant to split
    timeout "$limit" "$python" "$script" "$@" $extra >"$out/$label.json" 2>"$out/$label.log"
    local status=$?
    echo "exit $status after ${SECONDS}s; $(tail -1 "$out/$label.log")"
    return $status
}

scorer=(--scorer-rows 64 --train-steps 3 --warmup-steps 1 --score-batches 2)
run reward-before 100 bench/reward_gpu.py "${scorer[@]}"
run reward-after 100 bench/reward_gpu.py "${scorer[@]}" --no-gradient-checkpointing --pairs 4 --score-batch 64 \
    --max-batch-tokens 24576
run policy-before 80 bench/rl_gpu.py --no-critic
sampling=cudnn
if ! run policy-after 80 bench/rl_gpu.py --no-critic --sample-batch 24 --train-batch 4 \
    --sampling-attention cudnn --training-attention flash; then
    sampling=flash
    run policy-after-flash 80 bench/rl_gpu.py --no-critic --sample-batch 24 --train-batch 4 \
        --sampling-attention flash --training-attention flash
fi
run policy-compiled 150 bench/rl_gpu.py --compile --sample-batch 24 --train-batch 4 \
    --sampling-attention "$sampling" --training-attention flash

# last: it gets what is left of the deadline (the policy's end-to-end check comes first). No SpatialScorer rows
# here: each new sequence length would recompile (measured on CPU: 1.3 images/s)
run reward-compiled 130 bench/reward_gpu.py --train-steps 3 --warmup-steps 2 --score-batches 2 \
    --no-gradient-checkpointing --pairs 4 --score-batch 64 --compile

"$python" bench/gpu_table.py "$out" | tee "$out/table.md"
echo "total ${SECONDS}s"
