"""Finetuning methods as small configs, and the factory that applies one to a base model.

A method is a :class:`MethodConfig`: a name and a dict of options, plain data that pickles and
serialises. :func:`make_method` builds and validates one; :func:`apply_method` turns a base model
into the model that trains (the model itself for ``fmt``, a PEFT wrapper otherwise).

Built-in names:

- ``fmt``: full-model tuning, every weight trains. No options.
- ``lora``: PEFT LoRA on the attention and feed-forward projections. Options ``rank`` (default 4),
  ``alpha`` (default ``2 * rank``), ``dropout`` (default 0.0), ``target_modules`` (default: the
  Llama-style projections present in the model, else every linear layer), plus any other
  ``peft.LoraConfig`` field (``use_dora=True`` gives DoRA; ``make_method("dora")`` is a shortcut).
- ``prompt``: PEFT prompt tuning. Options ``prompt_length`` (virtual tokens, default 20) and
  ``init`` (``"vocab"``: embeddings of randomly sampled vocabulary ids, as in the study, the
  default; or ``"random"``: PEFT's random init).
- any other PEFT method by its PEFT name (``ia3``, ``prefix_tuning``, ``loha``, ``lokr``,
  ``adalora``, ``vera``, ...), with that PEFT config's fields as options.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ftscale.common import first_line
from ftscale.errors import UserError

#: Projection names of Llama-style attention and feed-forward blocks (LoRA's default targets).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Default learning rates per method: scaled-down analogues of the study's (prompt 3e-1, LoRA 1e-2,
#: FMT 1e-3), measured on tiny Llama models in the CPU pilot (see CALIBRATION.md).
DEFAULT_LEARNING_RATES = {"fmt": 3e-3, "lora": 1.5e-2, "prompt": 1e-1}
#: Learning rate for other PEFT methods when the user gives none.
DEFAULT_PEFT_LEARNING_RATE = 1e-2

_ALIASES = {
    "full": "fmt",
    "full_model": "fmt",
    "prompt_tuning": "prompt",
    "prefix": "prefix_tuning",
    "ptuning": "p_tuning",
}

_LORA_OPTIONS = {"rank", "alpha", "dropout", "target_modules"}
_PROMPT_OPTIONS = {"prompt_length", "init"}


@dataclass(frozen=True)
class MethodConfig:
    """A finetuning method: its name (``fmt``, ``lora``, ``prompt`` or a PEFT name) and options.

    Build it with :func:`make_method`, which validates the options. Plain data: picklable, and
    :meth:`to_dict` gives a JSON-ready dict.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """The method's size in the study's sense: rank for LoRA-like methods, virtual tokens for
        prompt-like methods, ``None`` for full-model tuning and methods without a size."""
        if self.name == "fmt":
            return None
        if self.name == "lora":
            return int(self.options.get("rank", 4))
        if self.name == "prompt":
            return int(self.options.get("prompt_length", 20))
        for key in ("r", "num_virtual_tokens", "prompt_length"):
            if key in self.options:
                return int(self.options[key])
        config_cls = _peft_config_class(self.name)
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        for key in ("r", "num_virtual_tokens"):
            if key in fields and isinstance(fields[key].default, int):
                return int(fields[key].default)
        return None

    @property
    def default_learning_rate(self) -> float:
        """Learning rate used when the training config gives none (per method, see module doc)."""
        return DEFAULT_LEARNING_RATES.get(self.name, DEFAULT_PEFT_LEARNING_RATE)

    def __hash__(self) -> int:  # options is a dict; hash its canonical JSON
        return hash((self.name, json.dumps(self.options, sort_keys=True, default=str)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"name": ..., "options": {...}}``."""
        return {"name": self.name, "options": dict(self.options)}


def _peft_types() -> dict[str, Any]:
    from peft.utils import PeftType

    return {member.value.lower(): member for member in PeftType}


def _peft_config_class(name: str):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    types = _peft_types()
    if name not in types:
        raise UserError(f"unknown finetuning method {name!r} (known: {', '.join(known_methods())})")
    return PEFT_TYPE_TO_CONFIG_MAPPING[types[name]]


def known_methods() -> list[str]:
    """Every method name :func:`make_method` accepts: the built-ins, then PEFT's method names."""
    builtin = ["fmt", "lora", "prompt", "dora"]
    return builtin + sorted(n for n in _peft_types() if n not in ("lora", "prompt_tuning"))


def make_method(name: str, **options: Any) -> MethodConfig:
    """Build and validate a :class:`MethodConfig` from a method name and its options.

    ``make_method("fmt")``, ``make_method("lora", rank=8)``, ``make_method("prompt",
    prompt_length=20)``, ``make_method("ia3")``, ``make_method("prefix_tuning",
    num_virtual_tokens=10)``. Raises a one-line :class:`~ftscale.errors.UserError` for an unknown
    method or option, or an out-of-range size.
    """
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key == "dora":
        key = "lora"
        options = {"use_dora": True, **options}
    if key == "fmt":
        if options:
            raise UserError(f"method 'fmt' takes no options (got {', '.join(sorted(options))})")
        return MethodConfig("fmt", {})
    if key == "lora":
        if "r" in options:
            options = {**{k: v for k, v in options.items() if k != "r"}, "rank": options["r"]}
        if "lora_alpha" in options:
            options = {
                **{k: v for k, v in options.items() if k != "lora_alpha"},
                "alpha": options["lora_alpha"],
            }
        if "lora_dropout" in options:
            options = {
                **{k: v for k, v in options.items() if k != "lora_dropout"},
                "dropout": options["lora_dropout"],
            }
        from peft import LoraConfig

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
    if key == "prompt":
        if "num_virtual_tokens" in options:
            options = {
                **{k: v for k, v in options.items() if k != "num_virtual_tokens"},
                "prompt_length": options["num_virtual_tokens"],
            }
        for option in options:
            if option not in _PROMPT_OPTIONS:
                raise UserError(
                    f"method 'prompt': unknown option {option!r} (known: prompt_length, init)"
                )
        length = options.get("prompt_length", 20)
        _require_positive_int("prompt", "prompt_length", length)
        init = options.get("init", "vocab")
        if init not in ("vocab", "random"):
            raise UserError(f"method 'prompt': init must be 'vocab' or 'random', got {init!r}")
        return MethodConfig("prompt", {**options, "prompt_length": int(length)})
    config_cls = _peft_config_class(key)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for option in options:
        if option not in fields or option in ("peft_type", "task_type"):
            raise UserError(f"method {key!r}: unknown option {option!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    if "num_virtual_tokens" in defaults and defaults["num_virtual_tokens"] is None:
        if "num_virtual_tokens" not in options:
            raise UserError(f"method {key!r}: option num_virtual_tokens is required")
        _require_positive_int(key, "num_virtual_tokens", options["num_virtual_tokens"])
    return MethodConfig(key, dict(options))


def _require_positive_int(method: str, option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"method {method!r}: {option} must be a positive integer, got {value!r}")


def _linear_names(model: torch.nn.Module) -> set[str]:
    """Last name component of every ``nn.Linear`` in ``model`` except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(path.rsplit(".", 1)[-1])
    return names


def lora_targets(model: torch.nn.Module) -> list[str] | str:
    """LoRA's default target modules for ``model``: the Llama-style attention and feed-forward
    projections it has, or PEFT's ``"all-linear"`` when it has none of them."""
    present = _linear_names(model)
    chosen = [name for name in LLAMA_PROJECTIONS if name in present]
    return chosen or "all-linear"


def apply_method(model: torch.nn.Module, method: MethodConfig, seed: int = 0) -> torch.nn.Module:
    """Make ``model`` trainable with ``method`` and return the model that trains.

    ``fmt`` returns ``model`` with every parameter trainable; PEFT methods return a
    ``peft.PeftModel`` wrapping ``model`` (which is changed in place: PEFT injects its layers, so
    pass a copy if the original must stay untouched). ``seed`` seeds the sampled-vocabulary init of
    prompt tuning. Raises :class:`~ftscale.errors.UserError` when PEFT rejects the options.
    """
    if method.name == "fmt":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model

    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    options = dict(method.options)
    try:
        if method.name == "lora":
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
        elif method.name == "prompt":
            config = PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=options["prompt_length"],
                prompt_tuning_init=PromptTuningInit.RANDOM,
            )
        else:
            config = _peft_config_class(method.name)(task_type=TaskType.CAUSAL_LM, **options)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as exc:
        first = first_line(exc)
        raise UserError(f"method {method.name!r}: PEFT rejected the options: {first}") from None

    if method.name == "prompt" and method.options.get("init", "vocab") == "vocab":
        _init_prompt_from_vocab(wrapped, model, method.options["prompt_length"], seed)
    return wrapped


def _init_prompt_from_vocab(wrapped, base: torch.nn.Module, length: int, seed: int) -> None:
    """Set the soft prompt to the input embeddings of ``length`` vocabulary ids sampled (without
    replacement when the vocabulary is large enough) with a generator seeded by ``seed``."""
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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
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


def base_parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts of a base model (before any method applies).

    Non-embedding = total minus the input embedding matrix, and minus the output (unembedding)
    matrix when it is a separate tensor; tied embeddings count once, in the embedding.
    """
    _, total = count_parameters(model)
    embedding = 0
    inputs = model.get_input_embeddings()
    if inputs is not None:
        embedding += inputs.weight.numel()
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if outputs is not None and (inputs is None or outputs.weight is not inputs.weight):
        embedding += outputs.weight.numel()
    return total, total - embedding
