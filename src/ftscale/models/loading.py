"""Loading base models for finetuning, and placing them on a device.

:func:`load_model` takes what a user names as a model (an in-memory ``PreTrainedModel``, a local
directory, a ``.gguf`` file, a hub id with a revision) and returns it in float32 with its
tokenizer, or a one-line :class:`~ftscale.errors.UserError` naming what cannot be loaded.
:func:`resolve_device` turns a device name (``auto``, ``cpu``, ``cuda:1``) into a torch device this
torch can use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ftscale.common import first_line
from ftscale.errors import UserError


def load_model(
    model: Any,
    tokenizer: Any = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    copy_model: bool = True,
):
    """``(model, tokenizer, name)`` ready to finetune, the model in float32.

    ``model`` is an in-memory ``PreTrainedModel`` (deep-copied unless ``copy_model=False``, so the
    caller's stays untouched; ``tokenizer`` is then required), a local directory, a ``.gguf``
    file, or a hub id (passed to ``from_pretrained``; needs network). ``gguf_file`` names a GGUF
    file inside a directory or repo; ``revision`` a hub branch, tag or commit. GGUF weights are
    dequantised to plain tensors so every method can train them. Raises a one-line
    :class:`~ftscale.errors.UserError` for anything that is not a loadable causal LM.
    """
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise UserError("an in-memory model needs its tokenizer (tokenizer=None given)")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        loaded = copy.deepcopy(model) if copy_model else model
        return loaded.float(), tokenizer, str(name)
    source, shown, kwargs = _model_source(str(model), gguf_file, revision)
    loaded = _from_pretrained(source, shown, kwargs)
    tokenizer = _load_tokenizer(tokenizer, source, shown, kwargs)
    if "gguf_file" in kwargs:
        loaded = _plain_model(loaded)
    return loaded.float(), tokenizer, shown


def _model_source(
    source: str, gguf_file: str | None, revision: str | None
) -> tuple[str, str, dict[str, Any]]:
    """``(what from_pretrained loads, the name errors and records show, its keywords)``; a
    one-line :class:`UserError` for a path that cannot be a model."""
    path = Path(source)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    shown = source + (f"/{gguf_file}" if gguf_file else "")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{source}: a file that is not a .gguf model (give a model folder)")
        gguf_file, source, shown = path.name, str(path.parent), source
    elif path.suffix.lower() == ".gguf":
        raise UserError(f"{source}: no such GGUF file")
    if gguf_file is not None:
        if not _gguf_available():
            raise UserError(f"{gguf_file}: loading GGUF needs the gguf package: pip install gguf")
        if path.is_dir() and not (path / gguf_file).is_file():
            raise UserError(f"{shown}: no such GGUF file")
        kwargs["gguf_file"] = gguf_file
    elif path.is_dir() and not (path / "config.json").exists():
        raise UserError(f"{source}: not a model directory (no config.json)")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise UserError(f"{source}: no such model directory")
    return source, shown, kwargs


def _from_pretrained(source: str, shown: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        first = first_line(exc)
        raise UserError(f"{shown}: not a loadable causal language model: {first}") from None
    except OSError as exc:  # missing files, no network for a hub id, unreadable weights
        raise UserError(f"{shown}: cannot load the model: {first_line(exc)}") from None


def _load_tokenizer(tokenizer: Any, source: str, shown: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, str | Path):
        return tokenizer
    where, named = (source, shown) if tokenizer is None else (str(tokenizer), str(tokenizer))
    try:
        return AutoTokenizer.from_pretrained(where, **(kwargs if tokenizer is None else {}))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise UserError(f"{named}: cannot load its tokenizer: {first_line(exc)}") from None


def _gguf_available() -> bool:
    """Whether the optional ``gguf`` package (needed to read GGUF files) is installed."""
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def _plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model transformers does not mark as quantised.

    A GGUF checkpoint is dequantised on load, but the model keeps its GGUF quantiser, which makes
    transformers refuse ``.float()`` and training. Rebuilding from the config without the
    quantisation entry and loading the (already float) weights gives an ordinary model.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # assign=True hands the loaded tensors over instead of copying them: one copy of the weights.
    state = {k: v.float() for k, v in model.state_dict().items()}
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()
    # Non-persistent buffers and plain tensor attributes (rotary frequencies) are not in the
    # state dict: take them from the loaded model.
    old = dict(model.named_modules())
    for path, module in plain.named_modules():
        for leaf, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                module._buffers[leaf] = old[path]._buffers[leaf]
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attr, getattr(old[path], attr))
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"GGUF model: no weights for {missing[0]}")
    return plain


def resolve_device(name: str) -> torch.device:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; other names must be torch
    devices this torch can use (a one-line :class:`UserError` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: this torch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r}: MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device
