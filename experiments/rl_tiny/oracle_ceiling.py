"""The SpatialWorld oracle on the test split's own perfect renders at 32 px: the ceiling of the metric that the
paired evaluation reads (NOTES section 10).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/rl_tiny/oracle_ceiling.py
"""

from pathlib import Path

import numpy as np

from data_synthesis import SpatialWorldOracle, load_pairs, oracle_metadata
from rl_policy.pretrain import load_split_images

root = Path("data/spatialworld-rl")
_, frame = load_pairs(root)
test = frame[frame["split"] == "test"]
oracle = SpatialWorldOracle()
images = load_split_images(root, test, 32)
verdicts = [oracle.judge(image, oracle_metadata(row)) for image, (_, row) in zip(images, test.iterrows(), strict=True)]
relations = [ok for verdict in verdicts for ok in verdict.confirmed]
among_found = [ok for verdict in verdicts if verdict.all_found for ok in verdict.confirmed]
print(
    f"{len(verdicts)} images at 32 px: relation accuracy {np.mean(relations):.3f}, "
    f"all objects found {np.mean([verdict.all_found for verdict in verdicts]):.3f}, "
    f"among all-found {np.mean(among_found):.3f}"
)
