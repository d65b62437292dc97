"""``learning_rate = "auto"``: a short, seeded learning-rate search on the dev set.

Each candidate rate of a small log grid (per method, :data:`SEARCH_GRIDS`) trains the job's model
for a short budget with the job's data, seed and schedule shape, and is scored by its best mean dev
NLL per target token. The rate with the lowest score wins; ties go to the smaller rate. When no
candidate improves on the base model's dev NLL, the smallest rate is chosen and the search says so
(``improved = False``). Candidates skip generation and test scoring, so a search costs about
``len(grid) * steps`` training steps plus one dev check per step budget.

Why a search: the study's rates (prompt 3e-1, LoRA 1e-2, FMT 1e-3 with Adafactor; Zhang et al.,
ICLR 2024) and ftscale's defaults (measured on tiny Llama rungs) are too high for real pretrained
models under AdamW: SmolLM2-135M LoRA at 1.5e-2 never beat its base model, at 1e-3 it did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: Candidate peak learning rates per method (AdamW). Each spans about two decades below the
#: tiny-ladder default, because pretrained models want smaller steps than freshly trained rungs.
SEARCH_GRIDS: dict[str, tuple[float, ...]] = {  # names as in the method registry
    "fmt": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
    "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "prompt": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
}
#: Grid for methods without their own (other PEFT methods).
DEFAULT_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
#: Optimizer steps per candidate: a quarter of the run's budget, within these bounds.
MIN_SEARCH_STEPS, MAX_SEARCH_STEPS = 10, 60


@dataclass(frozen=True)
class LearningRateSearch:
    """What a search tried and chose: ``grid`` (rates), ``dev_nll`` (best dev NLL per target
    token of each candidate, nats; ``None`` when the candidate diverged), ``steps`` per candidate,
    ``chosen`` rate, ``base_dev_nll`` before training, and ``improved`` (whether the chosen rate
    beat the base model on dev)."""

    grid: tuple[float, ...]
    dev_nll: tuple[float | None, ...]
    steps: int
    chosen: float
    base_dev_nll: float | None
    improved: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the record's ``lr_search`` field; sequences as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def search_grid(method_name: str) -> tuple[float, ...]:
    """The candidate rates for a method."""
    return SEARCH_GRIDS.get(method_name, DEFAULT_GRID)


def search_steps(total_steps: int) -> int:
    """Steps per candidate for a run of ``total_steps`` steps."""
    return max(1, min(total_steps, max(MIN_SEARCH_STEPS, min(MAX_SEARCH_STEPS, total_steps // 4))))


def search_learning_rate(
    base: Any, tokenizer: Any, inputs: Any, progress: Any = None
) -> LearningRateSearch:
    """Search the learning rate for one run (see the module docs).

    ``base`` is the loaded base model (loaded once per search: each candidate trains a copy, so
    ``base`` is left as it was); ``inputs`` the run's :class:`~ftscale.finetune.train.RunInputs`
    (``train`` already the D_f subset, ``config.learning_rate = "auto"``).
    """
    import copy

    from ftscale.finetune.train import run_loaded

    config = inputs.config
    steps = search_steps(config.total_steps(len(inputs.train)))
    grid = search_grid(inputs.method.name)
    scores: list[float | None] = []
    base_nll: float | None = None
    for rate in grid:
        trial = dataclasses.replace(
            config,
            learning_rate=rate,
            examples=None,
            max_steps=steps,
            eval_every=steps,
            patience=None,
            gen_examples=0,
        )
        short = dataclasses.replace(inputs, config=trial, test=inputs.dev[:1], evals=())
        record = run_loaded(copy.deepcopy(base), tokenizer, "", short, progress=progress).record
        base_nll = record.initial_dev_nll if base_nll is None else base_nll
        ok = record.status == "ok" and record.best_dev_nll is not None
        scores.append(record.best_dev_nll if ok and math.isfinite(record.best_dev_nll) else None)
    finite = [(score, rate) for score, rate in zip(scores, grid, strict=True) if score is not None]
    best_score, chosen = min(finite) if finite else (None, grid[0])
    improved = best_score is not None and base_nll is not None and best_score < base_nll
    if not improved:
        chosen = grid[0]
    return LearningRateSearch(tuple(grid), tuple(scores), steps, chosen, base_nll, improved)


def search_job(job: Any, progress: Any = None) -> LearningRateSearch:
    """The learning-rate search of a :class:`~ftscale.finetune.job.FinetuneJob` (its data, D_f
    subset, model and settings), as the study runs it once per method and base model."""
    from ftscale.finetune.job import load_splits
    from ftscale.finetune.tasks import nested_subset
    from ftscale.finetune.train import RunInputs, load_model

    config = job.train_config
    train, dev, test = load_splits(job)
    subset = nested_subset(train, config.examples or len(train), config.subset_seed)
    base, tokenizer, _ = load_model(job.model, None, job.gguf_file, job.revision, copy_model=False)
    inputs = RunInputs(job.method, subset, dev, test, config, job.task)
    return search_learning_rate(base, tokenizer, inputs, progress=progress)
