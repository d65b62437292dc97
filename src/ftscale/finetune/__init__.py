"""Finetuning methods (full-model, LoRA, prompt tuning, any PEFT method), training and evaluation.

Public API::

    from ftscale.finetune import finetune, make_method, TrainConfig
    record = finetune(model="path/to/model", method=make_method("lora", rank=4),
                      train=train_pairs, dev=dev_pairs, test=test_pairs,
                      train_config=TrainConfig(examples=1000, subset_seed=0, seed=0))
    print(record.to_json())

or, for a saved run spec, :func:`ftscale.finetune.job.run_job`. See docs/finetune.md.

Names are imported on first use, so ``ftscale.finetune.methods`` (the method registry, which the
CLI's help is generated from) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> module that defines it.
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
    "TaskConfig": "tasks",
    "encode_pairs": "tasks",
    "nested_subset": "tasks",
    "FinetuneResult": "train",
    "TrainConfig": "train",
    "finetune": "train",
    "load_model": "train",
    "DataSource": "job",
    "EvalSet": "job",
    "FinetuneJob": "job",
    "run_job": "job",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ftscale.finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ftscale.finetune.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
