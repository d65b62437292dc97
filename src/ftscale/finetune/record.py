"""The run record: everything one finetuning run measured, as one JSON line."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Fields that differ between two runs of one seed (timings, memory); everything else is
#: reproducible bit for bit on CPU.
#: Besides timings and peak memory, the memory plan: its default budget follows the memory free
#: at the start, so the layers it checkpoints may differ between reruns (the numbers do not).
VOLATILE_FIELDS = ("wall_s", "train_s", "eval_s", "generate_s", "peak_mem_mb")
VOLATILE_FIELDS += ("memory_plan", "checkpointed_layers", "checkpointing", "compile_s")


@dataclass
class RunRecord:
    """One finetuning run. Units: parameters for ``*_params``, examples for ``examples``, tokens
    for ``*tokens*``, nats per target token for ``*_nll``, seconds for ``*_s``, MiB for
    ``peak_mem_mb``, 0-100 for generation scores.

    ``key`` and ``job`` are the run spec's key and JSON (see :mod:`ftscale.finetune.job`) when
    the run came from one. ``status`` is ``"ok"`` or ``"failed"``; a failed run has ``reason``
    and ``failed_step`` and ``None`` for the metrics it did not reach. ``dev_history`` is
    ``[[step, dev_nll], ...]``, step 0 being the model before training. ``peak_mem_mb`` is the
    GPU's peak allocation on a GPU, the process's peak resident memory on CPU.

    ``stop_reason`` says why training stopped: ``plateau`` (the dev loss stopped gaining:
    patience ran out, and for a ``wsd`` schedule the decay that followed ended), ``cap`` (the
    whole step budget was used), ``diverged`` (a NaN/inf loss) or ``failed`` (out of memory);
    ``converged`` is ``stop_reason == "plateau"``. ``improved`` says whether any dev check beat the
    model before training (``best_step > 0``), ``undertrained`` whether the best check was the
    last step of a run that did not converge (the dev loss was still falling); both ``None`` for a
    failed run. ``truncated_context`` counts examples cut to the model's
    ``context_length`` (tokens). ``evals`` holds the extra eval sets: ``{name: {"shots": K,
    "base": {...}, "finetuned": {...}}}`` with ``examples``, ``tokens``, ``nll``, ``ppl``,
    ``truncated_context`` and, when generation is on, ``gen_bleu``, ``gen_chrf``, ``gen_rouge_l``.
    """

    method: str
    method_size: int | None
    method_options: dict[str, Any]
    trainable_params: int
    total_params: int
    nonembedding_params: int
    examples: int
    subset_seed: int
    seed: int
    model: str
    revision: str | None = None
    key: str | None = None
    job: dict[str, Any] | None = None
    status: str = "ok"
    reason: str | None = None
    failed_step: int | None = None
    steps: int = 0
    max_steps: int = 0
    epochs: float = 0.0
    tokens_seen: int = 0
    target_tokens_seen: int = 0
    padding_fraction: float = 0.0
    best_step: int | None = None
    best_dev_nll: float | None = None
    initial_dev_nll: float | None = None
    dev_history: list[list[float]] = field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str | None = None
    converged: bool | None = None
    improved: bool | None = None
    undertrained: bool | None = None
    test_nll: float | None = None
    test_ppl: float | None = None
    test_tokens: int = 0
    dev_tokens: int = 0
    gen_examples: int = 0
    gen_bleu: float | None = None
    gen_chrf: float | None = None
    gen_rouge_l: float | None = None
    dev_examples: int = 0
    test_examples: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    truncated_context: int = 0
    context_length: int | None = None
    learning_rate: float = 0.0
    lr_search: dict[str, Any] | None = None
    evals: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adamw"
    batch_size: int = 0
    fast_head: bool = True
    checkpointing: bool = False
    checkpointed_layers: int = 0
    memory_plan: str = ""
    compiled: bool = False
    attention: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    wall_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    generate_s: float = 0.0
    compile_s: float = 0.0
    peak_mem_mb: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field; non-finite floats become ``None`` (JSON has no NaN)."""
        return {k: _finite(v) for k, v in asdict(self).items()}

    def to_json(self) -> str:
        """The record as one line of JSON (keys in field order)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from :meth:`to_dict` output (e.g. one parsed JSON line); keys this version
        does not know are ignored, missing optional ones take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def comparable(self) -> dict[str, Any]:
        """:meth:`to_dict` without :data:`VOLATILE_FIELDS` (what must match across reruns)."""
        return {k: v for k, v in self.to_dict().items() if k not in VOLATILE_FIELDS}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide a run's numbers."""
    import peft
    import sacrebleu
    import torch
    import transformers

    import ftscale

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "sacrebleu": sacrebleu.__version__,
        "ftscale": ftscale.__version__,
    }


def read_records(path) -> list[RunRecord]:
    """Run records from a JSONL file written by ``ftscale finetune --output`` (one per line;
    blank lines skipped). Raises a one-line :class:`~ftscale.errors.UserError` naming the line
    that is not a record."""
    from pathlib import Path

    from ftscale.common import first_line
    from ftscale.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            first = first_line(exc)
            raise UserError(f"{path}: line {number}: not a run record: {first}") from None
    return records
