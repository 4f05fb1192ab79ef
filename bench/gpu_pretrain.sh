#!/usr/bin/env bash
# The prepared device call of issue 19: pretrain the tiny generator on one GPU for at most MINUTES (default 7) with a
# batch that fills it, on a large train set of the RL world, and leave the pipeline (safetensors), its metrics and
# its TensorBoard logs in the folder given as $1 (default reports/gpu_pretrain). Evaluate it afterwards on the CPU
# with the test command of docs/research/generator.md (the 796 RL test images).
#
#     bash bench/gpu_pretrain.sh "$OUT/pretrain"          # on the device machine, from the repository root
#
# The device image lacks diffusers and jsonargparse: run `bash bench/device_wheels.sh` here first, then the call is
#     run(timeout_s=540, carry=[".whl"], command="bash bench/gpu_pretrain.sh $OUT/pretrain")
# (bench/device_env.sh installs the carried wheels when a module is missing, and stops at once if one still is).
#
# What it does: builds a larger set of the RL world (the Makefile's RL_DATA_ARGS with another seed; PAIRS pairs; its
# val and test prompts never enter training, and the split hash keeps the RL set's test prompts out of its train
# split); then `python -m rl_policy pretrain` on that set's train split,
# bf16-mixed, warm-started from INIT (default the shipped base; INIT=scratch for a new one), STEPS steps with a
# linear decay over the last DECAY, stopped early at MINUTES. Environment (defaults): PYTHON (python3), PAIRS
# (100000), BATCH (1024), LR (1e-3), STEPS (6000), DECAY (2000), MINUTES (7), INIT, WORKERS (nproc), ACCELERATOR
# (gpu), PRECISION (bf16-mixed), EVAL_EVERY (10 epochs), LAYOUT (0.1: the layout head's weight, as the shipped base's
# stage 3; 0 for none), OBJECT (4: the object-weighted flow loss, as the end of stage 3; 0 for the plain loss).
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
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
device_env torch diffusers transformers peft lightning jsonargparse || exit 2
# the Makefile's RL_DATA_ARGS (continued lines joined; no make needed)
rl_args=$(awk '/^RL_DATA_ARGS \?=/ {f = 1} f {sub(/^RL_DATA_ARGS \?= /, ""); line = line $0; if ($0 !~ /\\$/) {print line; exit}}' \
    Makefile | tr -d '\\')
if [[ ! -f $big/pairs.parquet ]]; then
    # data_synthesis.build directly: its command line also loads the review app and the LLM client, which the
    # device image lacks
    "$python" - "$big" "$pairs" "$workers" $rl_args <<'PY'
import sys

from data_synthesis.build import BuildConfig, build

out, pairs, workers, rest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
values, key = {}, None
for word in rest:  # the Makefile's RL_DATA_ARGS: --name value [value]
    if word.startswith("--"):
        key = word[2:].replace("-", "_")
        values[key] = []
    else:
        values[key].append(word)
config = BuildConfig(
    num_pairs=pairs,
    seed=2,  # not the RL set's seed 1: other scenes, and the split hash keeps its test prompts out of train
    resolution=int(values["resolution"][0]),
    min_objects=int(values["min_objects"][0]),
    max_objects=int(values["max_objects"][0]),
    max_broken=int(values["max_broken"][0]),
    split_fractions=tuple(float(value) for value in values["split_fractions"]),
)
build(config, out, workers=workers)
PY
fi
echo "== data ready after ${SECONDS}s"
init_args=()
[[ $init != scratch ]] && init_args=(--init-from "$init")
"$python" -m rl_policy pretrain --data "$big" "${init_args[@]}" --out "$out" \
    --accelerator "${ACCELERATOR:-gpu}" --precision "${PRECISION:-bf16-mixed}" --batch-size "${BATCH:-1024}" \
    --lr "${LR:-1e-3}" --steps "${STEPS:-6000}" --decay-steps "${DECAY:-2000}" --warmup-steps 100 \
    --max-minutes "${MINUTES:-7}" --eval-prompts 128 --eval-every-epochs "${EVAL_EVERY:-10}" \
    --layout-loss-weight "${LAYOUT:-0.1}" --object-loss-weight "${OBJECT:-4}" 2>"$out/pretrain.log" | tail -40
echo "== done after ${SECONDS}s: $out/pipeline"
