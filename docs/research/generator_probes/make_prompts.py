"""Research helper (docs/research/generator.md): N fresh SpatialWorld prompts with the RL set's settings and another
seed, text only (no image drawn; about 1.5 ms each), as JSON lines with each prompt's perfect scene and stated
relations, for text_layout_probe.py --fresh-prompts.

    python docs/research/generator_probes/make_prompts.py 240000 7 prompts.jsonl
"""

from __future__ import annotations

import json
import sys

from data_synthesis.build import BuildConfig, _make_pair


def main() -> None:
    count, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    config = BuildConfig(num_pairs=count, seed=seed, resolution=64, min_objects=2, max_objects=2, max_broken=1)
    kept = 0
    with open(out, "w") as lines:
        for index in range(count):
            made = _make_pair(config, index)
            if made is None:  # no perturbation found: the builder skips such pairs too
                continue
            row = made[0]
            keys = ("prompt", "perfect_scene", "stated_relations")
            lines.write(json.dumps({key: row[key] for key in keys}) + "\n")
            kept += 1
    print(f"{kept} prompts -> {out}")


if __name__ == "__main__":
    main()
