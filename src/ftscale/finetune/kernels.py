"""How a run's decoder computes: compiled layers, and the attention kernel that goes with them.

With ``compile`` unset (``None``, the default) a run compiles its decoder layers when the model is
large enough for that to pay and the device has a compiler (:func:`compile_wanted`);
``compile = true`` asks for it on any model, ``false`` keeps eager PyTorch.

* **Compiled layers.** Each decoder layer goes through ``torch.compile`` (TorchInductor) with
  dynamic shapes: one compiled graph serves every batch length and every layer (they share their
  code). Inductor fuses the elementwise work between the matrix products (RMS norms, rotary
  embeddings, the SwiGLU product, LoRA's scaled sum, autocast's casts), which eager PyTorch runs as
  separate passes over memory: on SmolLM2-135M with bf16 autocast on 2 CPU cores those passes took
  about as long as the matrix products. Compiling costs once per process, about 25 s on 2 cores
  with an empty cache and about 8 s from TorchInductor's on-disk cache; a run pays it before its
  clock starts (:func:`warm_up`, the record's ``compile_s``), so ``train_s`` is training alone.
  Generation runs eager (a decoding step's shapes change every token).
* **Attention on the CPU.** With compiled layers on the CPU and sequences of at most
  :data:`SHORT_SEQUENCE` tokens, transformers' eager attention (two matrix products and a float32
  softmax, which the compiler fuses) replaces SDPA's flash kernel, whose CPU backward pass is slow
  at these lengths (measured, SmolLM2-135M LoRA, batch 16: 303 -> 373 tokens/s; the flash kernel
  wins beyond about 200 tokens uncompiled). The model's own setting is put back after the run.

Numbers: compiled and eager steps differ by rounding only. On SmolLM2-135M with bf16 autocast the
loss of one batch moved by 6e-4 to 1.4e-3 nats between eager and compiled, while bf16 itself moved
it by up to 5e-3 from float32. The record's ``compiled`` and ``attention`` fields and the end of
the memory plan's line say what a run used.

Under a memory budget a compiled run counts its compiler's memory, and a run that compiles by
default goes back to eager layers when its plan would have to checkpoint layers or not fit
(:func:`ftscale.finetune.recipe.plan_memory`).

Why large models only by default: compilation is repaid when the training steps are long. The tiny
ladders' runs take seconds in all and would spend most of it compiling; their float32 numbers stay
the ones their studies are fitted to.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

#: Non-embedding parameters from which a run compiles its layers by default: about the size of
#: the smallest real models users finetune (SmolLM2-135M has 106M); compilation then costs a few
#: training steps.
COMPILE_MIN_PARAMS = 20_000_000
#: Memory the compiler itself adds to a process (bytes): TorchInductor's modules, compiled code
#: and caches grew a SmolLM2-135M run's peak resident memory by about 105 MiB; counted with margin
#: in the memory plan of a run that compiles.
COMPILER_BYTES = 160 * 2**20
#: Longest sequence (tokens, virtual tokens included) for which compiled layers on the CPU use
#: eager attention instead of SDPA's flash kernel.
SHORT_SEQUENCE = 256


def compiler_found(device: torch.device) -> bool:
    """Whether TorchInductor can build kernels for ``device``: Triton on a CUDA GPU, a C++
    compiler (``$CXX``, g++ or clang++) for the CPU on Linux and macOS; never elsewhere (MPS,
    Windows), nor on a torch too old to switch compiled code off for generation."""
    if not hasattr(torch.compiler, "set_stance") or sys.platform == "win32":
        return False
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    if device.type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "clang++"]
        return any(shutil.which(name) for name in names if name)
    return False


def compile_wanted(setting: bool | None, device: torch.device, nonembedding_params: int) -> bool:
    """Whether a run compiles its decoder layers: ``setting`` when given (``True`` without a
    compiler still runs eager), else for models of :data:`COMPILE_MIN_PARAMS` or more."""
    if setting is False or not compiler_found(device):
        return False
    return setting is True or nonembedding_params >= COMPILE_MIN_PARAMS


def attention_of(model: Any) -> str | None:
    """The attention implementation a transformers model (PEFT-wrapped or not) uses now;
    ``None`` when it names none."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(inner, "config", None), "_attn_implementation", None)


def attention_for(model: torch.nn.Module, compiled: bool, device: torch.device, longest: int):
    """The attention implementation a run uses: ``"eager"`` for compiled layers on the CPU with
    sequences of at most :data:`SHORT_SEQUENCE` tokens where the model uses SDPA, else the
    model's own (``None`` when it names none)."""
    current = attention_of(model)
    if compiled and device.type == "cpu" and current == "sdpa" and longest <= SHORT_SEQUENCE:
        return "eager"
    return current


def set_attention(model: torch.nn.Module, name: str | None) -> None:
    """Switch ``model`` (a transformers model, PEFT-wrapped or not) to attention ``name``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (
        name is not None
        and name != attention_of(inner)
        and hasattr(inner, "set_attn_implementation")
    ):
        inner.set_attn_implementation(name)


def compile_layers(layers: list[torch.nn.Module]) -> None:
    """Compile each decoder layer in place (``nn.Module.compile``, dynamic shapes)."""
    for layer in layers:
        layer.compile(dynamic=True)


def uncompile_layers(layers: list[torch.nn.Module]) -> None:
    """Undo :func:`compile_layers`. torch has no public inverse of ``nn.Module.compile``: it
    sets ``_compiled_call_impl``, which ``None`` clears."""
    for layer in layers:
        layer._compiled_call_impl = None


@contextmanager
def eager(compiled: bool) -> Iterator[None]:
    """Compiled code switched off within (``torch.compiler.set_stance("force_eager")``) when
    ``compiled``; nothing otherwise."""
    with torch.compiler.set_stance("force_eager") if compiled else nullcontext():
        yield


def compile_problem(exc: BaseException) -> str:
    """One line saying why compiling failed (the exception's first line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def describe(compiled: bool, attention: Any) -> str:
    """The kernels' part of the memory plan's line: ``"compiled, eager attention"``; empty for
    eager layers."""
    if not compiled:
        return ""
    return "compiled" + (", eager attention" if attention == "eager" else "")
