"""Finetuning methods by registry, the way law forms are registered (:mod:`ftscale.laws.forms`).

A method is a :class:`MethodConfig`: a name and a dict of options, plain data that pickles and
serialises. Each name is a :class:`Method` entry in :data:`METHODS` (with its aliases) that owns
the method's option validation (``make``), its construction on a base model (``apply``), its size
in the study's sense and its default learning rate. :func:`make_method` looks the name up and
validates; :func:`apply_method` turns a base model into the model that trains.

Registered names:

- ``fmt`` (aliases ``full``, ``full-model``): full-model tuning, every weight trains. No options.
- ``lora``: PEFT LoRA on the attention and feed-forward projections. Options ``rank`` (default 4),
  ``alpha`` (default ``2 * rank``), ``dropout`` (default 0.0), ``target_modules`` (default: the
  Llama-style projections present in the model, else every linear layer), plus any other
  ``peft.LoraConfig`` field. ``dora`` is LoRA with ``use_dora=True``.
- ``prompt`` (aliases ``prompt-tuning``, ``prompt_tuning``): PEFT prompt tuning. Options
  ``prompt_length`` (virtual tokens, default 20) and ``init`` (``"vocab"``: embeddings of randomly
  sampled vocabulary ids, as in the study, the default; or ``"random"``).
- any other PEFT method by its PEFT name (``ia3``, ``prefix_tuning`` alias ``prefix``,
  ``p_tuning`` alias ``ptuning``, ``loha``, ``lokr``, ``adalora``, ``vera``, ...), with that PEFT
  config's fields as options; an entry is made for it on first use.

Torch and PEFT are imported only when a method is applied, so the registry (and the CLI's help,
generated from it) loads in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftscale.common import first_line
from ftscale.errors import UserError

#: Projection names of Llama-style attention and feed-forward blocks (LoRA's default targets).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Default peak learning rates (AdamW) of the built-in methods. They keep the study's order (Zhang
#: et al., ICLR 2024, with Adafactor: prompt 3e-1, LoRA 1e-2, FMT 1e-3) scaled to freshly
#: pretrained tiny Llama rungs, where they were measured on this project's CPU pilot (width 48-128:
#: test NLL fell for every method and size). Real pretrained models want rates 10x lower under
#: AdamW: use --lr auto.
DEFAULT_LEARNING_RATES = {"fmt": 3e-3, "lora": 1.5e-2, "prompt": 1e-1}
#: Learning rate for other PEFT methods when the user gives none.
DEFAULT_PEFT_LEARNING_RATE = 1e-2
#: Candidate peak rates (AdamW) of ``--lr auto`` per built-in method. Each spans about two decades
#: below the tiny-ladder default, because pretrained models want smaller steps than freshly
#: trained rungs (SmolLM2-135M LoRA at 1.5e-2 never beat its base model, at 1e-3 it did).
SEARCH_GRIDS: dict[str, tuple[float, ...]] = {
    "fmt": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
    "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "prompt": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
}
#: The grid of other PEFT methods.
DEFAULT_SEARCH_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


@dataclass(frozen=True)
class MethodConfig:
    """A finetuning method: its registry name (``fmt``, ``lora``, ``prompt`` or a PEFT name) and
    options.

    Build it with :func:`make_method`, which validates the options. Plain data: picklable, and
    :meth:`to_dict` gives a JSON-ready dict.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def entry(self) -> Method:
        """The registry entry that owns this method."""
        return get_method(self.name)

    @property
    def size(self) -> int | None:
        """The method's size in the study's sense: rank for LoRA-like methods, virtual tokens for
        prompt-like methods, ``None`` for full-model tuning and methods without a size."""
        return self.entry.size(self.options)

    @property
    def virtual_tokens(self) -> int:
        """Positions the method prepends to every input (prompt tuning, P-tuning), else 0."""
        return self.entry.virtual_tokens(self.options)

    @property
    def default_learning_rate(self) -> float:
        """Learning rate used when the training config gives none (per method, see module doc)."""
        return self.entry.default_learning_rate

    @property
    def trains_base(self) -> bool:
        """Whether every weight of the base model trains (full-model tuning)."""
        return self.entry.trains_base

    def __hash__(self) -> int:  # options is a dict; hash its canonical JSON
        return hash((self.name, json.dumps(self.options, sort_keys=True, default=str)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"name": ..., "options": {...}}``."""
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class Method:
    """One registry entry.

    ``make(options) -> MethodConfig`` validates and normalises the options (one-line
    :class:`UserError` otherwise); ``apply(model, options, seed)`` returns the model that trains;
    ``size_option`` names the option holding the method's size (``rank``, ``prompt_length``,
    ``r``, ``num_virtual_tokens``) and ``size_flag`` the CLI flag that sets it (``rank`` or
    ``prompt-length``); ``default_size`` is used when the option is absent; ``prepends`` says the
    size is a count of positions prepended to the input (prompt tuning, P-tuning).
    ``search_grid`` holds the candidate rates of ``--lr auto``; ``trains_base`` says every base
    weight trains (full-model tuning) rather than new parameters beside a frozen base.
    """

    name: str
    summary: str
    make: Callable[[dict[str, Any]], MethodConfig]
    apply: Callable[[Any, dict[str, Any], int], Any]
    default_learning_rate: float
    aliases: tuple[str, ...] = ()
    size_option: str | None = None
    size_flag: str | None = None
    default_size: int | None = None
    prepends: bool = False
    search_grid: tuple[float, ...] = DEFAULT_SEARCH_GRID
    trains_base: bool = False

    def size(self, options: dict[str, Any]) -> int | None:
        """The size from ``options`` (or the default); ``None`` when the method has none."""
        if self.size_option is None:
            return None
        value = options.get(self.size_option, self.default_size)
        return int(value) if value is not None else None

    def virtual_tokens(self, options: dict[str, Any]) -> int:
        """Prepended positions (see :attr:`prepends`)."""
        return (self.size(options) or 0) if self.prepends else 0

    @property
    def family(self) -> str | None:
        """The study's kind of method (Zhang et al., ICLR 2024 compare the three): ``"full"``
        (every base weight trains), ``"low-rank"`` (a rank-sized adapter: LoRA, DoRA, LoHa...),
        ``"prompt"`` (positions prepended to the input: prompt tuning, P-tuning), else None."""
        if self.trains_base:
            return "full"
        if self.prepends:
            return "prompt"
        return "low-rank" if self.size_flag == "rank" else None


#: The registry: name -> entry (built-ins; PEFT methods are added on first use).
METHODS: dict[str, Method] = {}
#: Alias -> registered name.
ALIASES: dict[str, str] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a registry entry and its aliases; returns it."""
    METHODS[method.name] = method
    for alias in method.aliases:
        ALIASES[_normal(alias)] = method.name
    return method


def _normal(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (aliases and ``-``/``_`` spellings resolved, any case)."""
    key = _normal(name)
    return ALIASES.get(key, key)


def get_method(name: str) -> Method:
    """The entry for a name or alias; a PEFT method gets an entry made on first use. Raises a
    one-line :class:`UserError` for an unknown name."""
    key = canonical_name(name)
    if key not in METHODS:
        if key not in _peft_types():
            raise UserError(
                f"unknown finetuning method {name!r} (known: {', '.join(known_methods())})"
            )
        register_method(_peft_method(key))
    return METHODS[key]


def method_family(name: str) -> str | None:
    """The family (see :attr:`Method.family`) of a method name or alias; None for a name the
    registry does not know."""
    try:
        return get_method(name).family
    except UserError:
        return None


def known_methods() -> list[str]:
    """Every method name :func:`make_method` accepts: the registered ones, then PEFT's names."""
    builtin = list(METHODS)
    return builtin + sorted(n for n in _peft_types() if n not in builtin and n not in ALIASES)


def method_help() -> str:
    """One line naming the registered methods and their aliases (the CLI's ``--method`` help)."""
    parts = [m.name + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in METHODS.values()]
    peft = [f"{target} ({alias})" for alias, target in ALIASES.items() if target not in METHODS]
    examples = ", ".join(["ia3", "loha", "lokr", "vera", *peft])
    return ", ".join(parts) + f", or any PEFT method by name ({examples}, ...)"


def make_method(name: str, **options: Any) -> MethodConfig:
    """Build and validate a :class:`MethodConfig` from a method name (or alias) and its options.

    ``make_method("fmt")``, ``make_method("lora", rank=8)``, ``make_method("prompt-tuning",
    prompt_length=20)``, ``make_method("ia3")``, ``make_method("prefix_tuning",
    num_virtual_tokens=10)``. Raises a one-line :class:`~ftscale.errors.UserError` for an unknown
    method or option, or an out-of-range size.
    """
    return get_method(name).make(dict(options))


def size_option(name: str, flag: str, value: int) -> dict[str, int]:
    """The option a CLI size flag (``rank`` or ``prompt-length``) sets for method ``name``:
    ``{"rank": value}`` for lora, ``{"r": value}`` for loha, ``{"num_virtual_tokens": value}``
    for prefix_tuning...; a one-line :class:`UserError` when the method has no size of that
    kind."""
    entry = get_method(name)
    if entry.size_flag != flag:
        kinds = sorted(m.name for m in METHODS.values() if m.size_flag == flag)
        raise UserError(
            f"--{flag} applies to methods with a {flag.replace('-', ' ')} "
            f"({', '.join(kinds)}, ...), not {name!r}"
        )
    return {entry.size_option: value}


def with_size(method: MethodConfig, flag: str, value: int) -> MethodConfig:
    """``method`` with its size set through a CLI size flag (see :func:`size_option`)."""
    return make_method(method.name, **{**method.options, **size_option(method.name, flag, value)})


# -- validation helpers --------------------------------------------------------------------------
def _require_positive_int(method: str, option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"method {method!r}: {option} must be a positive integer, got {value!r}")


def _rename(options: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old not in options:
        return options
    return {**{k: v for k, v in options.items() if k != old}, new: options[old]}


# -- fmt -----------------------------------------------------------------------------------------
def _make_fmt(options: dict[str, Any]) -> MethodConfig:
    if options:
        raise UserError(f"method 'fmt' takes no options (got {', '.join(sorted(options))})")
    return MethodConfig("fmt", {})


def _apply_fmt(model, options: dict[str, Any], seed: int):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


# -- lora ----------------------------------------------------------------------------------------
_LORA_OPTIONS = {"rank", "alpha", "dropout", "target_modules"}


def _make_lora(options: dict[str, Any]) -> MethodConfig:
    from peft import LoraConfig

    for old, new in (("r", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout")):
        options = _rename(options, old, new)
    lora_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    for option in options:
        if option not in _LORA_OPTIONS and option not in lora_fields:
            raise UserError(f"method 'lora': unknown option {option!r}")
    rank = options.get("rank", 4)
    _require_positive_int("lora", "rank", rank)
    dropout = options.get("dropout", 0.0)
    if not isinstance(dropout, int | float) or not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"method 'lora': dropout must be in [0, 1), got {dropout!r}")
    alpha = options.get("alpha", 2 * int(rank))
    if not isinstance(alpha, int | float) or float(alpha) <= 0:
        raise UserError(f"method 'lora': alpha must be a positive number, got {alpha!r}")
    return MethodConfig("lora", {**options, "rank": int(rank)})


def _make_dora(options: dict[str, Any]) -> MethodConfig:
    return _make_lora({"use_dora": True, **options})


def _apply_lora(model, options: dict[str, Any], seed: int):
    from peft import LoraConfig, TaskType

    options = dict(options)
    rank = options.pop("rank", 4)
    alpha = options.pop("alpha", 2 * rank)
    dropout = options.pop("dropout", 0.0)
    targets = options.pop("target_modules", None) or lora_targets(model)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        **options,
    )
    return _wrap(model, config, "lora")


# -- prompt --------------------------------------------------------------------------------------
def _make_prompt(options: dict[str, Any]) -> MethodConfig:
    options = _rename(options, "num_virtual_tokens", "prompt_length")
    for option in options:
        if option not in ("prompt_length", "init"):
            raise UserError(
                f"method 'prompt': unknown option {option!r} (known: prompt_length, init)"
            )
    length = options.get("prompt_length", 20)
    _require_positive_int("prompt", "prompt_length", length)
    init = options.get("init", "vocab")
    if init not in ("vocab", "random"):
        raise UserError(f"method 'prompt': init must be 'vocab' or 'random', got {init!r}")
    return MethodConfig("prompt", {**options, "prompt_length": int(length)})


def _apply_prompt(model, options: dict[str, Any], seed: int):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    length = options["prompt_length"]
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=length,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    wrapped = _wrap(model, config, "prompt")
    if options.get("init", "vocab") == "vocab":
        _init_prompt_from_vocab(wrapped, model, length, seed)
    return wrapped


def _init_prompt_from_vocab(wrapped, base, length: int, seed: int) -> None:
    """Set the soft prompt to the input embeddings of ``length`` vocabulary ids sampled (without
    replacement when the vocabulary is large enough) with a generator seeded by ``seed``."""
    import torch

    embeddings = base.get_input_embeddings().weight
    vocab = embeddings.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if vocab >= length:
        ids = torch.randperm(vocab, generator=generator)[:length]
    else:
        ids = torch.randint(vocab, (length,), generator=generator)
    prompt = wrapped.prompt_encoder[wrapped.active_adapter].embedding.weight
    with torch.no_grad():
        prompt.copy_(embeddings.detach()[ids.to(embeddings.device)].to(prompt.dtype))


# -- any PEFT method -----------------------------------------------------------------------------
def _peft_types() -> dict[str, Any]:
    from peft.utils import PeftType

    return {member.value.lower(): member for member in PeftType}


def _peft_config_class(name: str):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[_peft_types()[name]]


def _peft_method(name: str) -> Method:
    """An entry for a PEFT method without its own: options are its PEFT config's fields; its
    size is ``r`` (set by ``--rank``) or ``num_virtual_tokens`` (set by ``--prompt-length``)."""
    config_cls = _peft_config_class(name)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    size_option = size_flag = None
    default_size = None
    if "r" in fields:
        size_option, size_flag = "r", "rank"
    elif "num_virtual_tokens" in fields:
        size_option, size_flag = "num_virtual_tokens", "prompt-length"
    if size_option is not None and isinstance(fields[size_option].default, int):
        default_size = fields[size_option].default

    def make(options: dict[str, Any]) -> MethodConfig:
        for option in options:
            if option not in fields or option in ("peft_type", "task_type"):
                raise UserError(f"method {name!r}: unknown option {option!r}")
        required = size_option == "num_virtual_tokens" and default_size is None
        if required and "num_virtual_tokens" not in options:
            raise UserError(f"method {name!r}: option num_virtual_tokens is required")
        if size_option is not None and size_option in options:
            _require_positive_int(name, size_option, options[size_option])
        return MethodConfig(name, dict(options))

    def apply(model, options: dict[str, Any], seed: int):
        from peft import TaskType

        return _wrap(model, config_cls(task_type=TaskType.CAUSAL_LM, **options), name)

    return Method(
        name=name,
        summary=f"PEFT {name}",
        make=make,
        apply=apply,
        default_learning_rate=DEFAULT_PEFT_LEARNING_RATE,
        size_option=size_option,
        size_flag=size_flag,
        default_size=default_size,
        prepends=name == "p_tuning",
    )


def _wrap(model, config, name: str):
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"method {name!r}: PEFT rejected the options: {first_line(exc)}") from None


register_method(
    Method(
        "fmt",
        "full-model tuning: every weight trains",
        _make_fmt,
        _apply_fmt,
        DEFAULT_LEARNING_RATES["fmt"],
        aliases=("full", "full-model"),
        search_grid=SEARCH_GRIDS["fmt"],
        trains_base=True,
    )
)
_LORA = register_method(
    Method(
        "lora",
        "LoRA: low-rank pairs B.A on the attention and feed-forward projections",
        _make_lora,
        _apply_lora,
        DEFAULT_LEARNING_RATES["lora"],
        size_option="rank",
        size_flag="rank",
        default_size=4,
        search_grid=SEARCH_GRIDS["lora"],
    )
)
register_method(
    dataclasses.replace(
        _LORA,
        name="dora",
        summary="DoRA: LoRA with weight decomposition (lora with use_dora=true)",
        make=_make_dora,
    )
)
register_method(
    Method(
        "prompt",
        "prompt tuning: a soft prompt of P vectors prepended to the input; the model is frozen",
        _make_prompt,
        _apply_prompt,
        DEFAULT_LEARNING_RATES["prompt"],
        aliases=("prompt-tuning",),
        size_option="prompt_length",
        size_flag="prompt-length",
        default_size=20,
        prepends=True,
        search_grid=SEARCH_GRIDS["prompt"],
    )
)
ALIASES.update({"prefix": "prefix_tuning", "ptuning": "p_tuning"})


# -- applying ------------------------------------------------------------------------------------
def _linear_names(model) -> set[str]:
    """Last name component of every ``nn.Linear`` in ``model`` except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(path.rsplit(".", 1)[-1])
    return names


def lora_targets(model) -> list[str] | str:
    """LoRA's default target modules for ``model``: the Llama-style attention and feed-forward
    projections it has, or PEFT's ``"all-linear"`` when it has none of them."""
    present = _linear_names(model)
    chosen = [name for name in LLAMA_PROJECTIONS if name in present]
    return chosen or "all-linear"


def apply_method(model, method: MethodConfig, seed: int = 0):
    """Make ``model`` trainable with ``method`` and return the model that trains.

    ``fmt`` returns ``model`` with every parameter trainable; PEFT methods return a
    ``peft.PeftModel`` wrapping ``model`` (which is changed in place: PEFT injects its layers, so
    pass a copy if the original must stay untouched). ``seed`` seeds the sampled-vocabulary init of
    prompt tuning. Raises :class:`~ftscale.errors.UserError` when PEFT rejects the options.
    """
    return get_method(method.name).apply(model, dict(method.options), seed)


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, all)`` parameter counts of ``model`` (parameters, shared tensors once)."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def base_parameter_counts(model) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts of a base model (before any method applies),
    by the one definition in :func:`ftscale.sizes.parameter_counts` (Kaplan et al. 2020)."""
    from ftscale.sizes import parameter_counts

    counts = parameter_counts(model)
    return counts.total, counts.nonembedding
