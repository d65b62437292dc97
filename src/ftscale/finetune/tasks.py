"""Task data for finetuning: tokenisation to the template, length-grouped batches, collation.

The template is :class:`~ftscale.finetune.spec.TaskConfig`. An example is the prompt (the template
filled with the source) followed by the target and an end token; the loss covers the target and
end tokens only. Prompt and target are tokenised separately and their ids concatenated, so the
boundary between them is exact whatever the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ftscale.data.pairs import Pair
from ftscale.errors import UserError
from ftscale.finetune.spec import TaskConfig

#: Templates of the study's two task kinds ({src} is the source text).
TRANSLATION_TEMPLATE = "English: {src}\nGerman:"
SUMMARY_TEMPLATE = "Summarize the following document in {lang}: {src}"


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


#: Evaluation batches: the share of a batch's positions that may be padding once it holds
#: :data:`FULL_BATCH_TOKENS` real tokens. Dev pairs of one task range from ~60 to ~160 tokens on
#: SmolLM2's tokenizer: one batch of 40 was 36% padding, which a forward pass computes like real
#: tokens; cut at 1/8, the same pairs take 27% less compute in 4 batches.
PADDING_SHARE = 0.125
#: Real tokens a batch holds before :data:`PADDING_SHARE` may cut it (below, per-batch overhead
#: outweighs padding on small models).
FULL_BATCH_TOKENS = 1024


def sorted_batches(
    lengths: Sequence[int], tokens_per_batch: int, max_batch: int
) -> list[list[int]]:
    """Batches for evaluation: examples sorted by length (longest first), each batch holding at
    most ``tokens_per_batch`` padded tokens and ``max_batch`` examples, and cut early when the
    next example would make more than :data:`PADDING_SHARE` of a batch of at least
    :data:`FULL_BATCH_TOKENS` real tokens padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        padded = longest * (len(current) + 1)
        padding = 1.0 - (real + lengths[index]) / padded
        full = real >= FULL_BATCH_TOKENS and padding > PADDING_SHARE
        if current and (len(current) >= max_batch or padded > tokens_per_batch or full):
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
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


class DeviceSplit:
    """A split's examples on the run's device, put there once: every example's tokens one after
    another (int32, no padding: a split's memory is its token count, however long its longest
    example), with each example's offset, length and prompt length, so that a batch is cut out on
    the device from an index tensor already there, with no copy from the host per batch (on a GPU
    a host copy waits for the work queued before it). Host-side lists keep what the loop counts
    (tokens)."""

    def __init__(self, encoded: Encoded, pad_id: int, device: torch.device) -> None:
        self.lengths = encoded.lengths
        #: Positions that carry loss per example: labels from max(prompt length, 1) on (the first
        #: position predicts nothing).
        self.targets = [
            n - min(n, max(p, 1)) for n, p in zip(self.lengths, encoded.prompt_lengths, strict=True)
        ]
        offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]) if self.lengths else []
        flat = [token for sequence in encoded.ids for token in sequence] or [pad_id]
        self.tokens = torch.tensor(flat, dtype=torch.int32).to(device)
        self.offsets = torch.as_tensor(np.asarray(offsets, dtype=np.int64)).to(device)
        self.ends = torch.tensor(self.lengths, dtype=torch.int64).to(device)
        self.starts = torch.tensor(encoded.prompt_lengths, dtype=torch.int64).to(device)
        self.pad, self.device = pad_id, device

    def index(self, rows: Sequence[int]) -> torch.Tensor:
        """``rows`` as an index tensor on the device (one host copy; per epoch or per split)."""
        return torch.tensor(list(rows), dtype=torch.long).to(self.device)

    def batch(
        self, index: torch.Tensor, rows: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(input_ids, labels, real tokens, target tokens)`` of the examples ``rows`` (host)
        whose device ``index`` is given, as :func:`collate` makes them: padded to the batch's own
        longest sequence, labels -100 on prompt and padding positions."""
        longest = max(self.lengths[i] for i in rows)
        positions = torch.arange(longest, device=self.device)
        ends = self.ends[index, None]
        real = positions < ends
        where = (self.offsets[index, None] + positions).clamp_max(self.tokens.numel() - 1)
        input_ids = torch.where(real, self.tokens[where], self.pad).long()
        labels = torch.where(real & (positions >= self.starts[index, None]), input_ids, -100)
        count = sum(self.targets[i] for i in rows)
        return input_ids, labels, sum(self.lengths[i] for i in rows), count
