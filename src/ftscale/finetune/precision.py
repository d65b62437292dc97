"""The precision a run computes in: bf16 autocast where it is fast, float32 elsewhere.

With ``bf16 = true`` (the default) a run autocasts its matrix products to bfloat16 when the device
multiplies bf16 natively and the model is wide enough for that to pay:

* a CUDA GPU that supports bf16: always;
* a CPU with bf16 matrix instructions (x86 AVX512-BF16 or AMX-BF16): for models of hidden size
  :data:`CPU_BF16_MIN_WIDTH` or more. Measured with torch 2.13 (one thread, HF Llama training
  steps, batch 16 x 128 tokens, on an AMX CPU): width 48 1.00x, width 128 1.12x, width 256 1.71x
  of float32; SmolLM2-135M (width 576) on an AVX512-BF16 CPU, steps interleaved in one process:
  1.5x (LoRA) to 1.7x (prompt tuning, full-model tuning). Narrower models gain nothing and keep
  the float32 numbers the tiny ladders' studies are fitted to.

Weights, optimizer state and the output head's loss stay float32 (autocast only casts the inputs
of matrix products; the head's chunked loss keeps float32 logits). ``bf16 = false`` is float32
everywhere. The record's ``dtype`` says which was used, and the memory plan's line too.

The frozen weights of linear layers (a LoRA or prompt-tuning run's base model) are the one thing
held in bf16 during such a run (:func:`store_frozen_in`): autocast would round them to bf16 for
every product anyway, so the numbers are the same, without a cast of every weight in every step
(about a tenth of a SmolLM2 LoRA step) or the bf16 copies autograd keeps of them for the backward
pass. The float32 originals are put back when the run ends.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch

#: Hidden size from which bf16 autocast is used on a CPU with native bf16 instructions.
CPU_BF16_MIN_WIDTH = 256
#: ``/proc/cpuinfo`` flags of x86 bf16 matrix instructions.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16), read from the
    flags in ``/proc/cpuinfo``; False where that file does not exist (macOS, Windows), since
    other CPUs emulate bf16 products more slowly than float32 ones."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return has_bf16_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return False


def has_bf16_flags(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a ``/proc/cpuinfo`` text names a bf16 matrix
    instruction set (:data:`CPU_BF16_FLAGS`)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(CPU_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def model_width(model: Any) -> int | None:
    """The model's hidden size from its config (``hidden_size``, ``n_embd`` or ``d_model``)."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def autocast_dtype(device: torch.device, bf16: bool, model: Any) -> torch.dtype | None:
    """``torch.bfloat16`` when a run of ``model`` on ``device`` autocasts (see the module docs),
    else ``None`` (float32)."""
    if not bf16:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_bf16():
        width = model_width(model)
        return torch.bfloat16 if width is not None and width >= CPU_BF16_MIN_WIDTH else None
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """The record's ``dtype``: ``bfloat16-autocast`` or ``float32``."""
    return "bfloat16-autocast" if dtype is not None else "float32"


def store_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> list[tuple[Any, Any]]:
    """Hold the frozen weights of ``model``'s linear layers in ``dtype`` (the output head, tied
    to the input embeddings in many models, excepted); returns ``(layer, original weight)``
    pairs for :func:`restore_frozen`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swapped = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, torch.nn.Linear)
            and module is not head
            and not weight.requires_grad
            and weight.dtype != dtype
        ):
            swapped.append((module, weight))
            module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    return swapped


def restore_frozen(swapped: list[tuple[Any, Any]]) -> None:
    """Put back the original weights :func:`store_frozen_in` replaced."""
    for module, weight in swapped:
        module.weight = weight
