"""Tiny in-process models, tokenizers and toy tasks for the finetuning tests (no network)."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftscale.data import Pair

#: The run-record fields issue 3's command-line contract promises (``--json``), plus ``reason``.
CONTRACT = (
    "method",
    "method_size",
    "trainable_params",
    "total_params",
    "nonembedding_params",
    "examples",
    "subset_seed",
    "test_nll",
    "test_ppl",
    "best_dev_nll",
    "best_step",
    "tokens_seen",
    "wall_s",
    "status",
    "reason",
)

LETTERS = list("abcdefghijklmnop")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def make_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over single letters, '=' and the special tokens."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *LETTERS, "="])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)


def make_model(
    tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0, tied: bool = True
) -> LlamaForCausalLM:
    """Randomly initialised Llama-style model (hidden ``hidden``, ``layers`` layers)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def reverse_pairs(n: int, seed: int, min_len: int = 2, max_len: int = 6) -> list[Pair]:
    """``n`` pairs whose target is the source's letters in reverse order."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
        out.append(Pair(" ".join(letters), " ".join(reversed(letters))))
    return out


def copy_pairs(n: int, seed: int) -> list[Pair]:
    """``n`` pairs whose target repeats the source."""
    return [Pair(p.source, p.source) for p in reverse_pairs(n, seed)]


def cli_args(model_dir, data_files, *options: str) -> list[str]:
    """``ftscale finetune`` on a model directory and (train, dev, test) files, then ``options``."""
    train, dev, test = data_files
    splits = ["--train", str(train), "--dev", str(dev), "--test", str(test)]
    return ["finetune", "--model", str(model_dir), *splits, *options]


def write_jsonl(path, rows):
    """Write (source, target) pairs as a JSONL file; returns the path."""
    import json

    path.write_text(
        "".join(json.dumps({"source": p.source, "target": p.target}) + "\n" for p in rows)
    )
    return path
