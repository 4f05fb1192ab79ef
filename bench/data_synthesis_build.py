"""Builder throughput: pairs per second of `data_synthesis build` at 128 px with 2 workers, against the target.

Run with `make bench`. Builds into a temporary directory (deleted afterwards) and prints one line per setting,
with the ratio to the issue's target of 200 pairs/s. Timings come from one run each: read them as rough numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from data_synthesis.build import BuildConfig, build

TARGET_PAIRS_PER_SECOND = 200.0


def measure(num_pairs: int, resolution: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        build(BuildConfig(num_pairs=num_pairs, seed=123, resolution=resolution), out, workers=workers, progress=False)
        return num_pairs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-pairs", type=int, default=1000)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"data_synthesis build: {args.num_pairs} pairs, seed 123, 3-6 objects, k in 1..3 ({cores} cores)")
    for resolution, workers in ((128, 1), (128, 2), (512, 2)):
        rate = measure(args.num_pairs, resolution, workers)
        ratio = f"  ratio to target {rate / TARGET_PAIRS_PER_SECOND:.2f}" if (resolution, workers) == (128, 2) else ""
        print(f"  {resolution:4d} px, {workers} worker(s): {rate:7.1f} pairs/s{ratio}")


if __name__ == "__main__":
    main()
