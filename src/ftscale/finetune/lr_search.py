"""``learning_rate = "auto"``: what a learning-rate search tries, how it chooses, and which runs
share one (torch-free; the search itself trains through :func:`ftscale.finetune.recipe.
search_learning_rate`, the one place "auto" becomes a rate).

Candidate rates of the method's grid (:attr:`ftscale.finetune.methods.Method.search_grid`) train
the job's model for a short budget with the job's data, seed and schedule shape, and are scored by
their best mean dev NLL per target token. Not every rate is tried (:func:`walk`): the middle rate
and its two neighbours first, then one step further out while the best so far is the outermost
tried, since dev NLL over a log grid of rates falls to one minimum and rises again (too small a
rate learns slowly, too large one overshoots or diverges). On a grid of five that is three or four
candidates instead of five. The rate with the lowest score wins; ties go to the smaller rate.
When no candidate improves on the base model's dev NLL, the grid's smallest rate is chosen and the
search says so (``improved = False``). Candidates skip generation and test scoring, so a search
costs about ``tried * steps`` training steps plus two dev checks per candidate.

Why a search: the study's rates (prompt 3e-1, LoRA 1e-2, FMT 1e-3 with Adafactor; Zhang et al.,
ICLR 2024) and ftscale's defaults (measured on tiny Llama rungs) are too high for real pretrained
models under AdamW: SmolLM2-135M LoRA at 1.5e-2 never beat its base model, at 1e-3 it did.

A study searches once per method and base model (:func:`search_group`) on one representative job
(:func:`representative`) and gives every run of the group the chosen rate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ftscale.finetune.spec import TrainConfig

#: Optimizer steps per candidate: a quarter of the run's budget, within these bounds.
MIN_SEARCH_STEPS, MAX_SEARCH_STEPS = 10, 60


@dataclass(frozen=True)
class LearningRateSearch:
    """What a search tried and chose: ``grid`` (rates), ``dev_nll`` (best dev NLL per target
    token of each rate, nats; ``None`` when it was not tried or diverged), ``steps`` per
    candidate, ``chosen`` rate, ``base_dev_nll`` before training, ``improved`` (whether the
    chosen rate beat the base model on dev) and ``tried`` (the rates trained, in order)."""

    grid: tuple[float, ...]
    dev_nll: tuple[float | None, ...]
    steps: int
    chosen: float
    base_dev_nll: float | None
    improved: bool
    tried: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the record's ``lr_search`` field; sequences as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def search_steps(total_steps: int) -> int:
    """Steps per candidate for a run of ``total_steps`` steps."""
    return max(1, min(total_steps, max(MIN_SEARCH_STEPS, min(MAX_SEARCH_STEPS, total_steps // 4))))


def candidate_config(config: TrainConfig, rate: float, steps: int) -> TrainConfig:
    """The settings one candidate trains with: the run's, at ``rate``, for ``steps`` steps with a
    single dev check at the end, no early stop and no generation."""
    return config.replace(
        learning_rate=rate,
        examples=None,
        max_steps=steps,
        eval_every=steps,
        patience=None,
        gen_examples=0,
    )


def walk(grid: Sequence[float], score: Callable[[float], float | None]) -> list[int]:
    """Indices of ``grid`` (rates, ascending) to score, in order, given ``score(rate)`` (the best
    dev NLL; ``None`` or non-finite: diverged): the middle rate and its neighbours, then one step
    beyond the outermost tried rate while it is the best (ties to the smaller rate)."""
    values: dict[int, float] = {}

    def run(index: int) -> None:
        value = score(grid[index])
        values[index] = value if value is not None and math.isfinite(value) else math.inf

    middle = (len(grid) - 1) // 2
    for index in (middle, middle - 1, middle + 1):
        if 0 <= index < len(grid):
            run(index)
    while True:
        best = min(values, key=lambda i: (values[i], i))
        low, high = min(values), max(values)
        if best == low and low > 0:
            run(low - 1)
        elif best == high and high < len(grid) - 1:
            run(high + 1)
        else:
            return list(values)


def choose(
    grid: Sequence[float],
    scores: Sequence[float | None],
    steps: int,
    base: float | None,
    tried: Sequence[float] = (),
) -> LearningRateSearch:
    """The search's outcome from each rate's best dev NLL (``None``: not tried or diverged)."""
    finite = [
        (score, rate)
        for score, rate in zip(scores, grid, strict=True)
        if score is not None and math.isfinite(score)
    ]
    best_score, chosen = min(finite) if finite else (None, grid[0])
    improved = best_score is not None and base is not None and best_score < base
    if not improved:
        chosen = grid[0]
    return LearningRateSearch(
        tuple(grid), tuple(scores), steps, chosen, base, improved, tuple(tried)
    )


def search_group(method: str, job: Any) -> str:
    """The group whose runs share one search: the study's method (its ``[methods]`` name, so
    ``lora`` and ``dora`` search apart) and the job's base model."""
    return f"{method}|{job.model}|{job.revision or ''}"


def representative(jobs: Sequence[Any]) -> Any:
    """The job a group's search runs on: the median D_f (the upper one of two), first subset
    seed."""
    sizes = sorted({j.train_config.examples or 0 for j in jobs})
    middle = sizes[len(sizes) // 2]
    same = [j for j in jobs if (j.train_config.examples or 0) == middle]
    return min(same, key=lambda j: j.train_config.subset_seed)
