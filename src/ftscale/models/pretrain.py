"""Pretraining one Llama-style rung from scratch, with checkpoints at token counts.

Data: the pretraining documents are tokenized, joined with the end-of-text token between
documents and cut into blocks of ``seq_len`` tokens; every rung of a ladder sees the same blocks in
the same order (one seed), so rungs differ only in shape. A step consumes ``batch_size * seq_len``
tokens; ``tokens_seen`` counts those. Optimiser: AdamW (betas 0.9/0.95, weight decay on matrices),
linear warm-up then cosine decay to ``min_lr_ratio * lr``
(:func:`ftscale.schedules.warmup_cosine`), gradient clipping at 1.0.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftscale.errors import UserError
from ftscale.schedules import warmup_cosine
from ftscale.sizes import ParameterCounts, parameter_counts


@dataclass
class TokenData:
    """Training and validation blocks: int64 tensors of shape (n_blocks, seq_len) token ids."""

    train: torch.Tensor
    val: torch.Tensor

    @property
    def seq_len(self) -> int:
        """Tokens per block."""
        return int(self.train.shape[1])


def _blocks(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


#: Lines (verses, for the built-in corpus) per training passage; see :func:`tokenize_corpus`.
PASSAGE_LINES = 32


def tokenize_corpus(
    tokenizer: PreTrainedTokenizerFast,
    train_docs: Sequence[str],
    val_docs: Sequence[str],
    *,
    seq_len: int,
    train_tokens: int,
    val_tokens: int,
    seed: int,
) -> TokenData:
    """Cut the documents into blocks of ``seq_len`` tokens.

    Training documents are cut into passages of :data:`PASSAGE_LINES` lines (verses), the
    passages shuffled (by ``seed``) and encoded, each followed by the end-of-text token, until at
    least ``train_tokens`` tokens are available (the whole corpus if it is smaller: the trainer
    then repeats it in new orders). A budget smaller than the corpus thus samples passages from
    every document and both languages. Validation blocks are ``val_tokens`` tokens (rounded down
    to whole blocks) spread evenly over the validation documents.
    """
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    passages = []
    for doc in train_docs:
        lines = doc.split("\n")
        passages.extend("\n".join(lines[i : i + PASSAGE_LINES])
                        for i in range(0, len(lines), PASSAGE_LINES))
    random.Random(seed).shuffle(passages)
    stream: list[int] = []
    chunk = 64
    for start in range(0, len(passages), chunk):
        batch = passages[start : start + chunk]
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            stream.extend(enc.ids)
            stream.append(eos)
        if len(stream) >= train_tokens + seq_len:
            break
    train = _blocks(stream, seq_len)
    val_stream: list[int] = []
    for enc in backend.encode_batch(list(val_docs), add_special_tokens=False):
        val_stream.extend(enc.ids)
        val_stream.append(eos)
    val_all = _blocks(val_stream, seq_len)
    n_val = max(1, val_tokens // seq_len)
    if len(val_all) == 0:
        raise UserError("validation text is shorter than one block of seq_len tokens")
    if n_val < len(val_all):
        idx = torch.linspace(0, len(val_all) - 1, n_val).round().long()
        val_all = val_all[idx]
    if len(train) == 0:
        raise UserError("training text is shorter than one block of seq_len tokens")
    return TokenData(train=train, val=val_all)


@dataclass(frozen=True)
class Shape:
    """Shape of a Llama-style decoder: width (model dim), layers, attention heads, FFN width."""

    width: int
    layers: int
    heads: int
    ffn: int


def llama_config(shape: Shape, vocab_size: int, seq_len: int, tokenizer=None) -> LlamaConfig:
    """A :class:`transformers.LlamaConfig` for ``shape``: tied input/output embeddings, RMSNorm,
    SwiGLU FFN, rotary positions up to ``seq_len`` tokens, no biases, one KV head per head."""
    if shape.width % shape.heads:
        raise UserError(f"width {shape.width} is not divisible by heads {shape.heads}")
    special = {}
    if tokenizer is not None:
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.width,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=seq_len,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        **special,
    )


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of a causal LM: ``total`` (unique tensors, so tied embeddings count once),
    ``embedding`` (input embedding matrix, plus the output head when it is not tied, plus learned
    position embeddings if any) and ``nonembedding`` (total minus embedding), in parameters.
    One definition for ladders and run records: :func:`ftscale.sizes.parameter_counts`."""
    return parameter_counts(model).to_dict()


def shape_parameter_counts(shape: Shape, vocab_size: int, seq_len: int) -> ParameterCounts:
    """Parameter counts of a rung before it is built: the model of :func:`llama_config` made on
    the meta device (shapes only, no memory, no weights), counted by the one definition,
    :func:`ftscale.sizes.parameter_counts`, that the built ladder's manifest uses too."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(shape, vocab_size, seq_len))
    return parameter_counts(model)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token NLL (nats per predicted token) of ``model`` over ``blocks``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        logits = model(input_ids=batch).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


@dataclass
class PretrainRecipe:
    """What every rung shares: token budget (tokens), batch (sequences), learning-rate schedule."""

    tokens: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_fraction: float
    min_lr_ratio: float
    weight_decay: float
    seed: int
    checkpoints: list[int] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimiser step."""
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Optimiser steps for the token budget (rounded up)."""
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    def checkpoint_steps(self) -> list[int]:
        """Steps (1-based counts) after which a checkpoint is saved; always ends at the last."""
        steps = {min(self.total_steps, max(1, math.ceil(t / self.tokens_per_step)))
                 for t in self.checkpoints}
        steps.add(self.total_steps)
        return sorted(steps)


#: Called after each checkpoint is written: (rung name, step, checkpoint record).
CheckpointCallback = Callable[[str, int, dict], None]
#: Called every few steps with (tokens done, loss) for progress display.
ProgressCallback = Callable[[int, float], None]


def pretrain(
    shape: Shape,
    recipe: PretrainRecipe,
    data: TokenData,
    tokenizer: PreTrainedTokenizerFast,
    save: Callable[[LlamaForCausalLM, int, dict], None],
    *,
    threads: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict:
    """Pretrain one rung from scratch and call ``save(model, step, record)`` at each checkpoint.

    ``record`` holds ``tokens_seen`` (tokens), ``step``, ``train_loss`` (mean over the last 20
    steps, nats/token), ``val_loss`` (nats/token on ``data.val``), ``wall_s`` (training seconds so
    far, evaluation excluded) and ``tokens_per_s``. Returns the last record. ``threads`` sets
    ``torch.set_num_threads`` for the duration (restored after).
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(llama_config(shape, len(tokenizer), recipe.seq_len, tokenizer))
        model.train()
        return _train(model, _optimizer(model, recipe), recipe, data, save, on_progress)
    finally:
        torch.set_num_threads(previous_threads)


def _optimizer(model: torch.nn.Module, recipe: PretrainRecipe) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95) with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8,
    )


def _batches(data: TokenData, recipe: PretrainRecipe) -> Iterator[torch.Tensor]:
    """Training batches forever: the blocks in a seeded random order, a new order each pass."""
    gen = torch.Generator().manual_seed(recipe.seed)
    while True:
        perm = torch.randperm(len(data.train), generator=gen)
        # every full batch of the order (the whole order when it is shorter than one batch)
        for start in range(0, max(1, len(perm) - recipe.batch_size + 1), recipe.batch_size):
            yield data.train[perm[start : start + recipe.batch_size]]


def _train(model, opt, recipe: PretrainRecipe, data: TokenData, save, on_progress) -> dict:
    """The training loop: one step per batch, a checkpoint (saved) at each checkpoint step."""
    total_steps = recipe.total_steps
    warmup = int(recipe.warmup_fraction * total_steps)
    ckpt_steps = set(recipe.checkpoint_steps())
    recent: list[float] = []
    train_time = 0.0
    record: dict = {}
    for step, batch in zip(range(total_steps), _batches(data, recipe), strict=False):
        t0 = time.perf_counter()
        rate = warmup_cosine(step, total_steps, recipe.lr, warmup, recipe.min_lr_ratio)
        value = _step(model, opt, batch, rate)
        if not math.isfinite(value):
            raise UserError(f"pretraining diverged at step {step + 1} (loss {value}): lower lr")
        recent = [*recent[-19:], value]
        train_time += time.perf_counter() - t0
        done = step + 1
        if on_progress is not None:
            on_progress(done * recipe.tokens_per_step, value)
        if done in ckpt_steps:
            record = _checkpoint_record(model, data, done * recipe.tokens_per_step, recent)
            record = {"step": done, **record, "wall_s": train_time}
            record["tokens_per_s"] = record["tokens_seen"] / train_time if train_time else 0.0
            record["threads"] = torch.get_num_threads()
            save(model, done, record)
    return record


def _step(model, opt, batch: torch.Tensor, rate: float) -> float:
    """One optimizer step of next-token loss on ``batch``; returns the loss (nats/token)."""
    for group in opt.param_groups:
        group["lr"] = rate
    logits = model(input_ids=batch).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def _checkpoint_record(model, data: TokenData, tokens_seen: int, recent: list[float]) -> dict:
    return {
        "tokens_seen": tokens_seen,
        "train_loss": sum(recent) / len(recent),
        "val_loss": eval_loss(model, data.val),
    }
