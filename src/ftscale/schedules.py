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
