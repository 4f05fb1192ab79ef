"""Print the scalars of TensorBoard event dirs: python experiments/rl_tiny/tb_scalars.py DIR [TAG_SUBSTRING ...]."""

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

directory, *wanted = sys.argv[1:]
events = EventAccumulator(directory, size_guidance={"scalars": 0})
events.Reload()
for tag in sorted(events.Tags()["scalars"]):
    if wanted and not any(part in tag for part in wanted):
        continue
    values = events.Scalars(tag)
    shown = values if len(values) <= 12 else values[:: max(1, len(values) // 12)] + [values[-1]]
    print(tag, " ".join(f"{v.step}:{v.value:.3f}" for v in shown))
