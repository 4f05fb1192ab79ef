#!/usr/bin/env bash
# Runs the two one-shot GPU checks (bench/reward_gpu.py, bench/rl_gpu.py) in one go on a CUDA machine and writes
# their JSON and logs to the folder given as $1 (default reports/gpu). The Flow-GRPO check is retried with
# gradient checkpointing when the plain run fails (out of memory). Each check has its own time limit so that one
# hang cannot use up a short GPU lease.
#
#     bash bench/gpu_check.sh reports/gpu
set -u
out=${1:-reports/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
"$python" -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/nvidia_smi.txt"

echo "== reward (SpatialScore, Qwen2.5-VL-7B, random weights)"
timeout "${REWARD_LIMIT:-170}" "$python" bench/reward_gpu.py >"$out/reward_gpu.json" 2>"$out/reward_gpu.log"
echo "exit $?"; cat "$out/reward_gpu.json"; tail -3 "$out/reward_gpu.log"

echo "== Flow-GRPO (FLUX.1-dev transformer + LoRA 32, critic resident)"
if timeout "${RL_LIMIT:-200}" "$python" bench/rl_gpu.py >"$out/rl_gpu.json" 2>"$out/rl_gpu.log"; then
    cat "$out/rl_gpu.json"
else
    echo "plain run failed ($?): $(tail -1 "$out/rl_gpu.log")"
    echo "== Flow-GRPO with gradient checkpointing"
    timeout "${RL_LIMIT:-200}" "$python" bench/rl_gpu.py --gradient-checkpointing \
        >"$out/rl_gpu_checkpointing.json" 2>"$out/rl_gpu_checkpointing.log"
    echo "exit $?"; cat "$out/rl_gpu_checkpointing.json"; tail -3 "$out/rl_gpu_checkpointing.log"
fi
