#!/usr/bin/env bash
# The prepared device call of issue 19: pretrain the tiny generator on one GPU for at most MINUTES (default 7) with a
# batch that fills it, on a large train set of the RL world, and leave the pipeline (safetensors), its metrics and
# its TensorBoard logs in the folder given as $1 (default reports/gpu_pretrain). Evaluate it afterwards on the CPU
# with the test command of docs/research/generator.md (the 796 RL test images).
#
#     bash bench/gpu_pretrain.sh "$OUT/pretrain"          # on the device machine, from the repository root
#
# What it does: builds data/spatialworld-rl (the Makefile's RL_DATA_ARGS) if missing and a larger set of the same
# world with another seed (PAIRS pairs; its val and test prompts never enter training, and the split hash keeps the
# RL set's test prompts out of its train split); then `python -m rl_policy pretrain` on that set's train split,
# bf16-mixed, warm-started from INIT (default the shipped base; INIT=scratch for a new one), STEPS steps with a
# linear decay over the last DECAY, stopped early at MINUTES. Environment (defaults): PYTHON (python3), PAIRS
# (100000), BATCH (1024), LR (1e-3), STEPS (6000), DECAY (2000), MINUTES (7), INIT, WORKERS (nproc), ACCELERATOR
# (gpu), PRECISION (bf16-mixed), EVAL_EVERY (10 epochs).
#
# A dry run on the CPU (about 2 minutes on 2 cores):
#     ACCELERATOR=cpu PRECISION=32-true PAIRS=1500 BATCH=8 STEPS=6 DECAY=2 MINUTES=1 EVAL_EVERY=1 \
#     PYTHON=.venv/bin/python bash bench/gpu_pretrain.sh /tmp/dry_pretrain
set -euo pipefail
out=${1:-reports/gpu_pretrain}
python=${PYTHON:-python3}
pairs=${PAIRS:-100000}
workers=${WORKERS:-$(nproc)}
init=${INIT:-checkpoints/generator_tiny/pipeline}
big=data/spatialworld-rl-big-$pairs
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECONDS=0
if [[ ${ACCELERATOR:-gpu} == gpu ]]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
fi
read -r -a rl_args <<<"$(make -s --no-print-directory --eval='print-rl-args: ; @echo $(RL_DATA_ARGS)' print-rl-args)"
if [[ ! -f data/spatialworld-rl/pairs.parquet ]]; then
    "$python" -m data_synthesis build --out data/spatialworld-rl "${rl_args[@]}" --workers "$workers"
fi
if [[ ! -f $big/pairs.parquet ]]; then
    "$python" -m data_synthesis build --out "$big" "${rl_args[@]}" --num-pairs "$pairs" --seed 2 \
        --workers "$workers" 2>&1 | tail -3
fi
echo "== data ready after ${SECONDS}s"
init_args=()
[[ $init != scratch ]] && init_args=(--init-from "$init")
"$python" -m rl_policy pretrain --data "$big" "${init_args[@]}" --out "$out" \
    --accelerator "${ACCELERATOR:-gpu}" --precision "${PRECISION:-bf16-mixed}" --batch-size "${BATCH:-1024}" \
    --lr "${LR:-1e-3}" --steps "${STEPS:-6000}" --decay-steps "${DECAY:-2000}" --warmup-steps 100 \
    --max-minutes "${MINUTES:-7}" --eval-prompts 128 --eval-every-epochs "${EVAL_EVERY:-10}" \
    2>"$out/pretrain.log" | tail -40
rm -f "$out"/logs/checkpoints/*.ckpt.tmp
echo "== done after ${SECONDS}s: $out/pipeline"
