"""Memory of finetuning runs: the process's allocator on the CPU, and the memory policy.

The policy (:func:`plan_memory`): before a run trains, its peak is estimated from what it holds
(weights, libraries, data), what training adds (gradients, optimizer state, the kept best state)
and the activations of its largest batch, measured per token and decoder layer on a short probe
forward pass; the run then uses the fastest configuration whose estimate fits the budget
(``max_memory``, default :data:`DEFAULT_SHARE` of the memory available), checkpointing only as
many layers as it must. The output head's loss is chunked (:func:`ftscale.finetune.evaluate.
head_nll`), so logits are a bounded share.

The allocator (:func:`set_allocator`, applied per run from the size of its model):

glibc's allocator raises its mmap threshold (up to 32 MiB) each time a large block is freed, after
which tensors below that size come from the heap, where freed space fragments and the resident
size creeps up step after step (SmolLM2-135M LoRA, batch 8: +150 MiB per step, measured with
``/proc/self/statm``). For a model of :data:`LARGE_WEIGHTS` or more, a fixed threshold of
:data:`MMAP_THRESHOLD` keeps tensors of that size and more in their own mappings, returned to the
system when freed: the resident size stays flat. A small model's whole run fits in a few MiB of
heap, and mapping and unmapping its step's tensors only costs page faults (a width-64 model of a
2,048-token vocabulary, batch 16 x 96 tokens: 2.0 s of system time per 60 steps and 1.6x the
wall time of keeping the freed memory, ``benchmarks/bench_allocator.py``), so for it every tensor
comes from the heap and freed memory is kept for the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ftscale.errors import UserError

#: Bytes from which allocations get their own mapping (glibc ``M_MMAP_THRESHOLD``) for a model of
#: :data:`LARGE_WEIGHTS` or more.
MMAP_THRESHOLD = 1 << 20
#: Weights (bytes) from which a model's runs return freed memory to the system (16M fp32
#: parameters; the quickstart's models hold under 1 MiB, SmolLM2-135M 540 MB).
LARGE_WEIGHTS = 64 << 20
#: For smaller models: allocations below this come from the heap, and the heap keeps up to
#: :data:`KEEP_FREED` of freed memory at its top instead of trimming it (glibc: 128 KiB).
HEAP_THRESHOLD = 256 << 20
KEEP_FREED = 512 << 20
GLIBC_TRIM_THRESHOLD = 128 << 10  # glibc's own default, restored for a large model
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def set_allocator(weights: int) -> str | None:
    """Set glibc's allocator for runs of a model of ``weights`` bytes (see the module docs):
    ``"return"`` (large: freed tensors go back to the system) or ``"reuse"`` (small: freed memory
    is kept for the next step); ``None`` where there is no glibc (macOS, Windows, musl).
    Process-wide: the processes that finetune (the ``ftscale finetune`` command, a study worker)
    set it for each run."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if weights >= LARGE_WEIGHTS:
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
            return "return" if ok else None
        ok = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD)
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)
        return "reuse" if ok else None
    except (OSError, AttributeError):
        return None


# -- the memory policy -----------------------------------------------------------------------------
# What a run's training step needs, estimated before it trains, and the fastest configuration that
# fits a budget. The configurations are "checkpoint the first k decoder layers" for k = 0 .. all:
# each checkpointed layer keeps only its input (tokens x width) and recomputes its forward pass in
# the backward pass (about a third more compute for that layer), so fewer is faster.

#: Share of the memory available at the start that the default budget may use (the rest is left
#: to the system and to other processes).
DEFAULT_SHARE = 0.8
#: Extra share on top of the estimated activations for allocator slack and the transient buffers
#: of the backward pass (glibc and the CUDA caching allocator hold freed blocks for reuse).
SLACK = 0.10
#: Tokens of the probe forward pass that measures saved activations per token and layer (short:
#: the probe costs well under a training step, and saved bytes grow linearly with tokens).
PROBE_TOKENS = 64
MIB = 2**20


@dataclass(frozen=True)
class Footprint:
    """Measured and counted memory of one run, in bytes: ``base`` (held before training: weights,
    libraries, data; the process's resident size on CPU, allocated GPU memory on a GPU),
    ``weights`` (parameters and buffers, part of ``base``), ``gradients``, ``optimizer`` (its
    state), ``best_state`` (the kept copy of the trainable tensors), ``per_layer`` (bytes saved for
    the backward pass per token, one entry per decoder layer), ``outside`` (per token, outside the
    layers), ``carry`` (per token: the hidden state a checkpointed layer keeps), ``tokens`` (of the
    largest training batch), ``logits`` (the output head's chunk: logits, probabilities and their
    gradient), ``eval`` (an evaluation batch's transient peak), ``fixed`` (bytes saved whatever
    the tokens, one entry per decoder layer and one for the rest of the model: under autocast,
    the bf16 copies of the weights a backward pass multiplies by; empty for none)."""

    base: int
    weights: int
    gradients: int
    optimizer: int
    best_state: int
    per_layer: tuple[int, ...]
    outside: int
    carry: int
    tokens: int
    logits: int
    eval: int
    fixed: tuple[int, ...] = ()

    def activations(self, checkpointed: int) -> int:
        """Bytes of activations of the largest batch with the first ``checkpointed`` layers
        checkpointed, plus :data:`SLACK`: at the start of the backward pass what the other layers
        save and what the checkpointed ones carry; the backward pass reaches the first layers
        last, after the others' activations are freed, so a layer recomputed there only counts
        when it is larger than all of those."""
        carried = checkpointed * self.carry + self.outside
        kept = sum(self.per_layer[checkpointed:]) + carried
        recomputing = carried + max(self.per_layer[:checkpointed], default=0)
        fixed = self.fixed or (0,) * (len(self.per_layer) + 1)
        kept_fixed = sum(fixed[checkpointed:])  # the later layers' and the rest's
        recomputing_fixed = fixed[-1] + max(fixed[:checkpointed], default=0)
        peak = max(
            self.tokens * kept + kept_fixed, self.tokens * recomputing + recomputing_fixed
        )
        return int(peak * (1 + SLACK))

    def total(self, checkpointed: int) -> int:
        """Estimated peak bytes of the run with ``checkpointed`` layers checkpointed."""
        state = self.base + self.gradients + self.optimizer + self.best_state
        return state + max(self.activations(checkpointed) + self.logits, self.eval)


@dataclass(frozen=True)
class MemoryPlan:
    """The configuration a run trains with: ``checkpointed`` of ``layers`` decoder layers
    checkpointed (the first ones), the estimated peak ``estimate`` and the ``budget`` (bytes),
    where the budget came from (``source``), and the footprint behind the estimate."""

    checkpointed: int
    layers: int
    estimate: int
    budget: int
    source: str
    footprint: Footprint
    reason: str
    precision: str = "float32"

    def line(self) -> str:
        """The plan in one line, sizes in MiB."""
        f, k = self.footprint, self.checkpointed
        parts = (
            f"weights {f.weights / MIB:.0f}",
            f"gradients {f.gradients / MIB:.0f}",
            f"optimizer {f.optimizer / MIB:.0f}",
            f"best state {f.best_state / MIB:.0f}",
            f"activations {f.activations(k) / MIB:.0f}",
            f"logits {f.logits / MIB:.0f}",
        )
        return (
            f"memory plan: checkpointing {k} of {self.layers} layers ({self.reason}); estimated "
            f"peak {self.estimate / MIB:.0f} MiB of {self.budget / MIB:.0f} MiB budget "
            f"({self.source}): {', '.join(parts)} MiB; {self.precision}"
        )


def default_budget(device: torch.device) -> tuple[int, str]:
    """``(bytes, where they come from)``: what the process holds now plus :data:`DEFAULT_SHARE`
    of what is available (RAM on CPU, free memory of the GPU on a GPU)."""
    import psutil

    held = held_memory(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(held + DEFAULT_SHARE * free), f"default: held + {DEFAULT_SHARE:.0%} of free GPU"
    available = psutil.virtual_memory().available
    return int(held + DEFAULT_SHARE * available), f"default: held + {DEFAULT_SHARE:.0%} of free RAM"


def held_memory(device: torch.device) -> int:
    """Bytes the run holds now: allocated GPU memory on a GPU, else the process's resident size."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated decoder layers that transformers can checkpoint one by one (none for a
    model without them, or with a transformers too old to mark them)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@dataclass(frozen=True)
class Saved:
    """What a forward pass saves for the backward pass, in bytes, fitted over two probe lengths:
    ``per_token`` and ``fixed`` (whatever the tokens), each one entry per decoder layer and a last
    one for the rest of the model, and ``carry`` (per token: a layer's input hidden state)."""

    per_token: tuple[int, ...]
    fixed: tuple[int, ...]
    carry: int


def saved_per_token(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    forward: Callable[[int], Any],
    tokens: int,
) -> Saved:
    """What ``forward(n)`` (a forward pass over ``n`` tokens) saves for the backward pass, split
    into bytes per token and fixed bytes by a probe of ``tokens`` and one of half as many (one
    probe when ``tokens`` is 1: all per token). Fixed bytes are the copies autocast makes of the
    weights, which do not grow with the batch."""
    long, carry = _saved_bytes(model, layers, lambda: forward(tokens))
    short_tokens = tokens // 2
    if short_tokens < 1:
        return Saved(tuple(math.ceil(b / tokens) for b in long), (0,) * len(long), carry)
    short, _ = _saved_bytes(model, layers, lambda: forward(short_tokens))
    extra = tokens - short_tokens
    per_token = [max(0, math.ceil((b - a) / extra)) for a, b in zip(short, long, strict=True)]
    fixed = [max(0, b - p * tokens) for b, p in zip(long, per_token, strict=True)]
    return Saved(tuple(per_token), tuple(fixed), carry)


def _saved_bytes(
    model: torch.nn.Module, layers: Sequence[torch.nn.Module], forward: Callable[[], Any]
) -> tuple[list[int], int]:
    """``(bytes saved for the backward pass by each layer and, last, by the rest of the model,
    bytes per token of a layer's input)`` of one ``forward()``, measured with autograd's
    saved-tensor hooks. Each storage counts once and parameters not at all."""
    where, carry = [len(layers)], [0]
    sizes = [0] * (len(layers) + 1)
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    skip.add(0)

    def enter(index: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if index == 0 and isinstance(hidden, torch.Tensor):
                carry[0] = hidden.element_size() * hidden.shape[-1]
            where.append(index)

        return hook

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            skip.add(storage.data_ptr())
            sizes[where[-1]] += storage.nbytes()
        # Detached: a saved output kept as itself refers to its own grad_fn, a cycle through
        # autograd's C++ objects that the garbage collector cannot see, and every probe's
        # activations leaked (110 MiB per probe on SmolLM2-135M). The storage stays alive until
        # the graph goes, so no other tensor takes its address and is skipped as seen.
        return tensor.detach()

    def leave(*_: Any) -> None:  # returns None: the layer's output stays its own
        where.pop()

    handles = [
        m.register_forward_pre_hook(enter(i), with_kwargs=True) for i, m in enumerate(layers)
    ]
    handles += [m.register_forward_hook(leave) for m in layers]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return sizes, carry[0]


def state_bytes(params: Sequence[torch.nn.Parameter], optimizer: str) -> tuple[int, int]:
    """``(gradient bytes, optimizer-state bytes)`` of the trainable ``params``: AdamW keeps two
    moments per value; Adafactor (no first moment) a row and a column factor per matrix and one
    value per value of the rest, in float32."""
    gradients = sum(p.numel() * p.element_size() for p in params)
    if optimizer == "adamw":
        return gradients, 2 * sum(p.numel() * 4 for p in params)
    factored = sum(4 * (p.shape[0] + p.numel() // p.shape[0]) for p in params if p.dim() >= 2)
    return gradients, factored + sum(4 * p.numel() for p in params if p.dim() < 2)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied tensors once)."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in [*model.parameters(), *model.buffers()]
    }
    return sum(storages.values())


def choose_plan(
    footprint: Footprint, config: Any, budget: int, source: str, precision: str = "float32"
) -> MemoryPlan:
    """The fastest configuration whose estimate fits ``budget``: the fewest checkpointed layers.
    ``config.checkpointing`` set on (every layer) or off (none) overrides the choice. A given
    ``config.max_memory`` that no configuration fits is a one-line :class:`UserError`; the
    default budget is only the machine's, so then every layer is checkpointed and the run tries.
    ``precision`` (the run's, which the footprint was measured in) is named in the plan's line."""
    layers = len(footprint.per_layer)
    if config.checkpointing is not None:
        choices, reason = [layers if config.checkpointing else 0], "checkpointing set"
    else:
        choices, reason = list(range(layers + 1)), "the fastest that fits"
    fits = [k for k in choices if footprint.total(k) <= budget]
    least = min(choices, key=footprint.total)  # checkpointing the last layer too saves nothing
    if not fits and config.max_memory is not None:
        raise _too_small(footprint, budget, least, layers)
    if not fits:
        reason = "over the budget: the estimate may be high, trying"
    k = fits[0] if fits else least
    return MemoryPlan(k, layers, footprint.total(k), budget, source, footprint, reason, precision)


def _too_small(footprint: Footprint, budget: int, least: int, layers: int) -> UserError:
    return UserError(
        f"--max-memory {budget} bytes ({budget / MIB:.0f} MiB): too small for this run, which "
        f"needs about {footprint.total(least) / MIB:.0f} MiB with {least} of {layers} layers "
        f"checkpointed (held before training {footprint.base / MIB:.0f} MiB); give a larger "
        "budget or a smaller --batch-size"
    )


def checkpoint_layers(model: torch.nn.Module, layers: Sequence[torch.nn.Module], k: int) -> None:
    """Activation checkpointing (transformers', non-reentrant) on the first ``k`` of ``layers``
    and off on the rest."""
    if k == 0:
        return
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "activation_checkpointing_enable"):
        inner.activation_checkpointing_enable({"use_reentrant": False})
    else:  # transformers before the rename (it marks the layers, the old name enables them)
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < k
