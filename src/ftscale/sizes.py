"""One definition of a causal LM's parameter counts, shared by ladders and run records.

The law's X for model size is the *non-embedding* parameter count, as defined by Kaplan et al.
(2020), "Scaling Laws for Neural Language Models", section 2.1: every parameter except the token
embedding matrix, a separate output (unembedding) matrix, and learned position embeddings. Tied
input/output embeddings are one tensor and are subtracted once; rotary or sinusoidal positions have
no parameters and subtract nothing.

Duck-typed on the model (``parameters()``, ``named_modules()``, ``get_input_embeddings()``,
``get_output_embeddings()``, ``config``), so this module imports nothing heavy: ``ftscale.models``
(ladder manifests) and ``ftscale.finetune`` (run records) both use it without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Config attributes that hold a model's maximum number of positions (transformers spellings).
POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


@dataclass(frozen=True)
class ParameterCounts:
    """``total`` (unique tensors: tied weights once), ``embedding`` (token embeddings, a separate
    output matrix, learned position embeddings) and ``nonembedding`` (total minus embedding), in
    parameters."""

    total: int
    embedding: int
    nonembedding: int

    def to_dict(self) -> dict[str, int]:
        """``{"total": ..., "embedding": ..., "nonembedding": ...}``."""
        return {"total": self.total, "embedding": self.embedding, "nonembedding": self.nonembedding}


def _numel(tensor: Any) -> int:
    return int(tensor.numel())


def _weight(module: Any) -> Any:
    return getattr(module, "weight", None) if module is not None else None


def _position_embeddings(model: Any, token_weight: Any) -> list[Any]:
    """Weights of learned position embeddings: embedding layers (class name containing
    ``Embedding``) other than the token embeddings whose name mentions positions (``pos``, GPT-2's
    ``wpe``) or whose row count equals the config's maximum positions."""
    config = getattr(model, "config", None)
    limits = {getattr(config, name, None) for name in POSITION_ATTRIBUTES} - {None}
    found = []
    for name, module in model.named_modules():
        weight = _weight(module)
        if weight is None or weight is token_weight or "Embedding" not in type(module).__name__:
            continue
        if len(getattr(weight, "shape", ())) != 2:
            continue
        leaf = name.rsplit(".", 1)[-1].lower()
        if "pos" in leaf or leaf == "wpe" or int(weight.shape[0]) in limits:
            found.append(weight)
    return found


def parameter_counts(model: Any) -> ParameterCounts:
    """Total, embedding and non-embedding parameter counts of a causal LM (see the module docs).

    Call it on the base model, before a finetuning method adds parameters.
    """
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += _numel(parameter)
    token = _weight(model.get_input_embeddings())
    output = (
        _weight(model.get_output_embeddings()) if hasattr(model, "get_output_embeddings") else None
    )
    counted: set[int] = set()
    embedding = 0
    for weight in [token, output, *_position_embeddings(model, token)]:
        if weight is not None and id(weight) not in counted:
            counted.add(id(weight))
            embedding += _numel(weight)
    return ParameterCounts(total, embedding, total - embedding)


def context_length(model: Any = None, tokenizer: Any = None) -> int | None:
    """The longest sequence (tokens) the model takes: its config's maximum positions, else the
    tokenizer's ``model_max_length`` when that is a real limit (transformers uses ~1e30 for
    "none"); ``None`` when neither says."""
    config = getattr(model, "config", None)
    for name in POSITION_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    return None
