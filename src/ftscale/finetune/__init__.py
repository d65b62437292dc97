"""Finetuning methods (full-model, LoRA, prompt tuning, any PEFT method), training and evaluation.

Public API::

    from ftscale.finetune import finetune, make_method, TrainConfig
    record = finetune(model="path/to/model", method=make_method("lora", rank=4),
                      train=train_pairs, dev=dev_pairs, test=test_pairs,
                      train_config=TrainConfig(examples=1000, subset_seed=0, seed=0))
    print(record.to_json())

or, for a saved run spec (:class:`FinetuneJob`), :func:`run_job`. See docs/finetune.md.

The modules: :mod:`~ftscale.finetune.methods` (the method registry), :mod:`~ftscale.finetune.spec`
(the run spec and its settings, torch-free), :mod:`~ftscale.finetune.recipe` (a run as named
steps), :mod:`~ftscale.finetune.lr_search` (``lr = "auto"``), :mod:`~ftscale.finetune.tasks`
(tokenisation and batches), :mod:`~ftscale.finetune.evaluate` (NLL and generation),
:mod:`~ftscale.finetune.record` (the run record).

Names are imported on first use, so the registry and the spec (which the CLI's help is generated
from) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> module that defines it (a submodule of this package, or a full module name).
_EXPORTS = {
    "GenerationScores": "evaluate",
    "mean_nll": "evaluate",
    "score_generations": "evaluate",
    "MethodConfig": "methods",
    "apply_method": "methods",
    "known_methods": "methods",
    "make_method": "methods",
    "register_method": "methods",
    "RunRecord": "record",
    "read_records": "record",
    "encode_pairs": "tasks",
    "FinetuneResult": "recipe",
    "finetune": "recipe",
    "run_job": "recipe",
    "search_job": "recipe",
    "DataSource": "spec",
    "EvalSet": "spec",
    "FinetuneJob": "spec",
    "TaskConfig": "spec",
    "TrainConfig": "spec",
    "load_model": "ftscale.models.loading",
    "nested_subset": "ftscale.data.pairs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ftscale.finetune' has no attribute {name!r}")
    module = _EXPORTS[name]
    full = module if "." in module else f"{__name__}.{module}"
    value = getattr(importlib.import_module(full), name)
    globals()[name] = value
    return value
