"""Finetuning methods (full-model, LoRA, prompt tuning, any PEFT method), training and evaluation.

Public API::

    from ftscale.finetune import finetune, make_method, TrainConfig, TaskConfig, nested_subset
    record = finetune(model, tokenizer, make_method("lora", rank=4), train, dev, test,
                      TrainConfig(examples=1000, subset_seed=0, seed=0))
    print(record.to_json())

See docs/finetune.md.
"""

from ftscale.finetune.evaluate import GenerationScores, mean_nll, score_generations
from ftscale.finetune.methods import MethodConfig, apply_method, known_methods, make_method
from ftscale.finetune.record import RunRecord, read_records
from ftscale.finetune.tasks import TaskConfig, encode_pairs, nested_subset
from ftscale.finetune.train import (
    FinetuneResult,
    TrainConfig,
    finetune,
    load_model,
    run_finetune,
)

__all__ = [
    "FinetuneResult",
    "GenerationScores",
    "MethodConfig",
    "RunRecord",
    "TaskConfig",
    "TrainConfig",
    "apply_method",
    "encode_pairs",
    "finetune",
    "known_methods",
    "load_model",
    "make_method",
    "mean_nll",
    "nested_subset",
    "read_records",
    "run_finetune",
    "score_generations",
]
