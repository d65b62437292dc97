"""Task data for finetuning: prompt template, tokenisation, nested subsets, length-grouped batches.

An example is the prompt (the template filled with the source) followed by the target and an end
token; the loss covers the target and end tokens only. Prompt and target are tokenised separately
and their ids concatenated, so the boundary between them is exact whatever the tokenizer.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ftscale.data.pairs import Pair
from ftscale.errors import UserError

#: Templates of the study's two task kinds ({src} is the source text).
TRANSLATION_TEMPLATE = "English: {src}\nGerman:"
SUMMARY_TEMPLATE = "Summarize the following document in {lang}: {src}"


@dataclass(frozen=True)
class TaskConfig:
    """How pairs become token sequences.

    ``template`` is a ``str.format`` pattern with ``{src}`` and optionally other fields filled from
    ``fields`` (e.g. ``{lang}``). ``target_prefix`` goes between the prompt and the target (a
    space by default, so the target starts as a new word). Sources longer than
    ``max_source_tokens`` tokens and targets longer than ``max_target_tokens`` tokens are cut
    (the end is dropped) and counted. ``add_bos``/``add_eos`` prepend the tokenizer's begin token /
    append its end token when it has one; the end token is part of the target so the model
    learns to stop. ``bleu_tokenize`` is sacrebleu's BLEU tokenizer for the target language
    (``13a``; ``zh`` for Chinese, ``ja-mecab`` needs extras).
    """

    template: str = "{src} ="
    fields: dict[str, str] = field(default_factory=dict)
    target_prefix: str = " "
    max_source_tokens: int = 256
    max_target_tokens: int = 256
    add_bos: bool = True
    add_eos: bool = True
    bleu_tokenize: str = "13a"

    def __post_init__(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise UserError(f"template {self.template!r}: not a format string: {exc}") from None
        names = {name for _, name, _, _ in parsed if name is not None}
        if any(not name.isidentifier() for name in names):
            bad = sorted(n for n in names if not n.isidentifier())[0]
            raise UserError(f"template {self.template!r}: {{{bad}}} is not a field name")
        if "src" not in names:
            raise UserError(f"template {self.template!r}: must contain {{src}}")
        missing = sorted(names - {"src"} - set(self.fields))
        if missing:
            raise UserError(f"template {self.template!r}: no value for field {{{missing[0]}}}")
        for name in ("max_source_tokens", "max_target_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        tokenizers = bleu_tokenizers()
        if self.bleu_tokenize not in tokenizers:
            raise UserError(
                f"bleu_tokenize {self.bleu_tokenize!r} unknown (sacrebleu has: "
                f"{', '.join(tokenizers)})"
            )

    def __hash__(self) -> int:  # fields is a dict; hash it as sorted items
        values = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fields"]
        return hash((tuple(values), tuple(sorted(self.fields.items()))))

    def prompt(self, source: str) -> str:
        """The model input for one source text (the template filled in)."""
        return self.template.format(src=source, **self.fields)


@dataclass
class Encoded:
    """Tokenised examples of one split.

    ``ids[i]`` is the full sequence (prompt then target, tokens); ``prompt_lengths[i]`` how many of
    its leading tokens are prompt (no loss there); the truncation counters count examples.
    """

    ids: list[list[int]]
    prompt_lengths: list[int]
    prompt_ids: list[list[int]]
    targets: list[str]
    truncated_sources: int = 0
    truncated_targets: int = 0
    truncated_context: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        """Sequence length of each example (tokens)."""
        return [len(x) for x in self.ids]

    @property
    def target_tokens(self) -> int:
        """Number of tokens that carry loss (targets plus end tokens)."""
        return sum(len(x) - p for x, p in zip(self.ids, self.prompt_lengths, strict=True))


def bleu_tokenizers() -> list[str]:
    """sacrebleu's BLEU tokenizer names (``13a``, ``zh``, ``intl``, ...)."""
    from sacrebleu.metrics.bleu import BLEU

    return list(BLEU.TOKENIZERS)


def check_pairs(pairs: Sequence[Pair], split: str) -> None:
    """A one-line :class:`UserError` when ``pairs`` is empty or a pair has an empty (or
    whitespace-only) source or target; rows are counted from 1 in the order given."""
    if len(pairs) == 0:
        raise UserError(f"{split}: no examples")
    for row, pair in enumerate(pairs, start=1):
        for side in ("source", "target"):
            if not str(getattr(pair, side)).strip():
                raise UserError(f"{split}: row {row} has an empty {side}")


def special_ids(tokenizer) -> tuple[int | None, int | None, int]:
    """``(bos, eos, pad)`` token ids of ``tokenizer``; pad falls back to eos, then to 0.

    The pad id only fills positions that are masked out, so any id works; the tokenizer is not
    modified.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos if eos is not None else 0
    return bos, eos, pad


def encode_pairs(
    pairs: Sequence[Pair],
    tokenizer,
    task: TaskConfig,
    split: str = "data",
    context: int | None = None,
) -> Encoded:
    """Tokenise ``pairs`` with ``task``'s template and length caps.

    ``context`` is the longest sequence (tokens) the model may see: an example longer than that
    is cut to fit (the target's end first, keeping at least one target token, then the prompt's
    start after the begin token) and counted in ``truncated_context``. Raises a one-line
    :class:`~ftscale.errors.UserError` when ``pairs`` is empty (``split`` names
    it in the message) or an example's target is empty after tokenisation and has no end token.
    """
    if len(pairs) == 0:
        raise UserError(f"{split}: no examples")
    bos, eos, _ = special_ids(tokenizer)
    prompts = [task.prompt(p.source) for p in pairs]
    targets = [task.target_prefix + p.target for p in pairs]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    # The source's own length decides truncation; template tokens are always kept.
    source_ids = tokenizer([p.source for p in pairs], add_special_tokens=False)["input_ids"]
    template_only = tokenizer([task.prompt("")], add_special_tokens=False)["input_ids"][0]
    prompt_cap = task.max_source_tokens + len(template_only)
    encoded = Encoded([], [], [], [p.target for p in pairs])
    lead = [bos] if task.add_bos and bos is not None else []
    tail = [eos] if task.add_eos and eos is not None else []
    for index, (prompt, src, target) in enumerate(
        zip(prompt_ids, source_ids, target_ids, strict=True)
    ):
        if len(src) > task.max_source_tokens:
            encoded.truncated_sources += 1
            prompt = _truncate_prompt(tokenizer, task, pairs[index].source, prompt_cap)
        if len(target) > task.max_target_tokens:
            encoded.truncated_targets += 1
            target = target[: task.max_target_tokens]
        target = list(target) + tail
        if not target:
            raise UserError(f"{split}: example {index + 1} has an empty target")
        full_prompt = lead + list(prompt)
        if context is not None and len(full_prompt) + len(target) > context:
            encoded.truncated_context += 1
            full_prompt, target = _fit_context(full_prompt, target, context, len(lead))
        encoded.prompt_ids.append(full_prompt)
        encoded.ids.append(full_prompt + target)
        encoded.prompt_lengths.append(len(full_prompt))
    return encoded


def _fit_context(
    prompt: list[int], target: list[int], context: int, lead: int
) -> tuple[list[int], list[int]]:
    """Cut ``prompt + target`` to ``context`` tokens: the target's end goes first (down to one
    token), then prompt tokens after the ``lead`` begin tokens (the source's start; the prompt's
    end, where a template puts its cue, is kept)."""
    if context < 2:
        raise UserError(f"context of {context} tokens cannot hold a prompt and a target")
    room = max(1, context - len(prompt))
    target = target[:room]
    excess = len(prompt) + len(target) - context
    if excess > 0:
        prompt = prompt[:lead] + prompt[lead + excess :]
    return prompt, target


def _truncate_prompt(tokenizer, task: TaskConfig, source: str, cap: int) -> list[int]:
    """Prompt ids with the source cut to at most ``task.max_source_tokens`` tokens (its end
    dropped). The cut source is decoded and the template filled again, so the template's own
    tokens (e.g. a trailing "German:") are always kept; when re-tokenising makes the prompt longer
    than ``cap`` tokens the source is cut one token shorter until it fits."""
    src_ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    keep = task.max_source_tokens
    while True:
        cut = tokenizer.decode(src_ids[:keep], skip_special_tokens=True)
        ids = tokenizer(task.prompt(cut), add_special_tokens=False)["input_ids"]
        if len(ids) <= cap or keep == 0:
            return ids
        keep -= 1


def nested_subset(pairs: Sequence[Pair], n: int, subset_seed: int) -> list[Pair]:
    """The first ``n`` examples of a random order of ``pairs`` fixed by ``subset_seed``.

    Nested: for one seed, the ``n``-subset is contained in every larger subset (it is a prefix of
    the same permutation). The order depends only on ``len(pairs)`` and the seed. Raises a one-line
    :class:`~ftscale.errors.UserError` when ``n`` is not in ``1..len(pairs)``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise UserError(f"examples must be a positive integer, got {n!r}")
    if n > len(pairs):
        raise UserError(f"examples {n} is larger than the training data ({len(pairs)} pairs)")
    order = np.random.default_rng(subset_seed).permutation(len(pairs))
    return [pairs[i] for i in order[:n]]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[list[int]]:
    """One epoch of batches (lists of example indices) with similar lengths together.

    The examples are shuffled, cut into chunks of ``group * batch_size``, each chunk sorted by
    length and split into batches, and the batches shuffled: random order, little padding.
    """
    order = rng.permutation(len(lengths))
    chunk = max(batch_size, group * batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk].tolist(), key=lambda i: -lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(
    lengths: Sequence[int], tokens_per_batch: int, max_batch: int
) -> list[list[int]]:
    """Batches for evaluation: examples sorted by length, each batch holding at most
    ``tokens_per_batch`` padded tokens and ``max_batch`` examples."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (
            len(current) >= max_batch or longest * (len(current) + 1) > tokens_per_batch
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def collate(
    encoded: Encoded, indices: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-padded ``(input_ids, labels, real_tokens)`` for ``indices``, padded to the batch's
    own longest sequence. Labels are -100 on prompt and padding positions."""
    longest = max(len(encoded.ids[i]) for i in indices)
    input_ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), longest), -100, dtype=torch.long)
    real = 0
    for row, index in enumerate(indices):
        ids = encoded.ids[index]
        start = encoded.prompt_lengths[index]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, start : len(ids)] = input_ids[row, start : len(ids)]
        real += len(ids)
    return input_ids, labels, real


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``examples`` examples (the last batch may be short)."""
    return math.ceil(examples / batch_size)
