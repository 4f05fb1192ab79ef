"""Learning-rate schedules shared by the stages, as multipliers for `torch.optim.lr_scheduler.LambdaLR`."""

from __future__ import annotations


def lr_factor(step: int, *, warmup_steps: int = 0, decay_steps: int = 0, total_steps: int | None = None) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up over `warmup_steps` (0 or 1:
    none), constant, then (decay_steps > 0) linear decay to 0 over the last `decay_steps` of `total_steps`. A run
    resumed with a larger total_steps and a decay continues its constant part, so the decay can be added to a
    finished run."""
    factor = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay_steps > 0 and total_steps is not None:
        factor = min(factor, max(0.0, (total_steps - step) / decay_steps))
    return factor
