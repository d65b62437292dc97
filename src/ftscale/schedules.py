"""Learning-rate schedules shared by pretraining (:mod:`ftscale.models.pretrain`) and finetuning
(:mod:`ftscale.finetune.recipe`). Plain arithmetic, so both layers use one definition."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total: int, peak: float, warmup_steps: int, floor_fraction: float
) -> float:
    """The rate for optimizer step ``step`` (0-based) of ``total``: linear warmup over
    ``warmup_steps`` steps (rising to ``peak`` at the last of them), then cosine decay from
    ``peak`` to ``floor_fraction * peak`` at step ``total``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = floor_fraction * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(
    step: int,
    peak: float,
    warmup_steps: int,
    decay: tuple[int, int] | None,
    floor_fraction: float,
) -> float:
    """The rate for optimizer step ``step`` (0-based) of a warmup-stable-decay schedule (Hu et
    al. 2024, "MiniCPM"; Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations"): linear warmup over ``warmup_steps``, then ``peak`` until the
    decay; ``decay = (start, steps)`` (``None``: not started) falls linearly from ``peak`` to
    ``floor_fraction * peak`` over ``steps`` steps from step ``start``. The length of the run is
    not needed in advance: the caller starts the decay when it decides to (at a plateau)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if decay is None or step < decay[0]:
        return peak
    start, steps = decay
    progress = min(1.0, (step - start + 1) / max(1, steps))
    return peak * (1.0 - (1.0 - floor_fraction) * progress)
