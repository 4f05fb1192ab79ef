"""Run experiments/reward_tiny/stage_a_verify.py unchanged for each phase of `make pretrain-reward` (chained with
--init-from, as the Makefile chains them), with a small batch, a few steps and tiny held-out sets (which do not touch
training), and print float(loss) of each training step: the constants tests/test_reward_pretrain.py compares the
new entry point with. The script reads its test pairs from data/spatialworld, so run it in a dir holding a small one:

  OMP_NUM_THREADS=1 python -m data_synthesis build --out /tmp/sa/data/spatialworld --num-pairs 20 --seed 3 \
      --resolution 128 --workers 1
  cd /tmp/sa && OMP_NUM_THREADS=1 REPO/.venv/bin/python REPO/experiments/reward_tiny/record_stage_a_losses.py \
      REPO 4 3 /tmp/sa/runs
"""

# ruff: noqa: E402, E501 (the import follows the sys.path entry the script needs; PHASES are the Makefile lines verbatim)
import json
import runpy
import sys
from pathlib import Path

repo, batch, steps, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
sys.path.insert(0, str(repo / "experiments/reward_tiny"))
import reward_model.grounding as grounding

A_NEW = "--lr 1e-3 --warmup 30 --eval-every 150 --eval-pairs 200 --val-size 256 --easy-val-size 128 --min-objects 2"
A_BIND = "--binding-weight 1 --bind-colour-words --image-cell-weight 1"
PHASES = {  # the Makefile's pretrain-reward target, verbatim
    "v3": "--steps 800 --warmup 60 --curriculum 0:3,200:4,400:6 --eval-every 100 --eval-pairs 200",
    "v4": "--init-from {A}/v3 --steps 500 --stop-after 200 --warmup 30 --curriculum 0:6 --min-objects 3 --eval-every 100 --eval-pairs 200",
    "v5": "--init-from {A}/v4 --steps 3000 --stop-after 1400 --lr 2e-3 --warmup 50 --curriculum 0:6 --min-objects 3 --eval-every 200 --eval-pairs 200",
    "v6": f"{A_NEW} --init-from {{A}}/v5 --steps 2000 --stop-after 300 --warmup 50 --binding-weight 1 --prompt-curriculum 0:2:hv,450:4:all,900:8:all --curriculum 0:4,450:6",
    "v7": f"{A_NEW} --init-from {{A}}/v6 --steps 2000 --stop-after 750 {A_BIND} --prompt-curriculum 0:2:hv,300:4:all,600:8:all --curriculum 0:4,300:6",
    "v8": f"{A_NEW} --init-from {{A}}/v7 --steps 2000 --stop-after 450 {A_BIND} --slot-weight 1 --prompt-curriculum 0:2:hv,400:4:all,800:8:all --curriculum 0:4,400:6",
    "v9": f"{A_NEW} --init-from {{A}}/v8 --steps 2000 --stop-after 300 {A_BIND} --slot-weight 1 --coord-weight 1 --prompt-curriculum 0:2:hv,450:4:all,900:8:all --curriculum 0:4,450:6",
    "v10": f"{A_NEW} --init-from {{A}}/v9 --steps 2000 --stop-after 300 {A_BIND} --slot-weight 1 --coord-weight 1 --stated-weight 1 --prompt-curriculum 0:2:hv,450:4:all,900:8:all --curriculum 0:4,450:6",
    "v11": f"{A_NEW} --init-from {{A}}/v10 --steps 1500 --stop-after 600 {A_BIND} --slot-weight 1 --coord-weight 1 --stated-weight 1 --stated-all-kinds --prompt-curriculum 0:4:all,300:8:all --curriculum 0:6",
    "v12": f"{A_NEW} --init-from {{A}}/v11 --steps 1500 {A_BIND} --slot-weight 1 --coord-weight 1 --stated-weight 1 --stated-all-kinds --prompt-curriculum 0:4:all,300:8:all --curriculum 0:6",
}
SMALL = f"--batch-size {batch} --stop-after {steps} --val-size 2 --easy-val-size 0 --eval-pairs 2"

recorded, original = {}, grounding.GroundingPretrainModule.step


def step(self, batch):
    loss, metrics = original(self, batch)
    if self.network.training:
        recorded.setdefault(phase, []).append(float(loss))
    return loss, metrics


grounding.GroundingPretrainModule.step = step
for phase, words in PHASES.items():
    sys.argv = ["stage_a_verify.py", *words.format(A=out).split(), *SMALL.split(), "--out", str(out / phase)]
    runpy.run_path(str(repo / "experiments/reward_tiny/stage_a_verify.py"), run_name="__main__")
    print("RECORDED", phase, json.dumps(recorded[phase]), flush=True)
