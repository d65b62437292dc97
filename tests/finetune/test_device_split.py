"""A split kept on the device gives the batches `collate` gives, and the counts the loss uses."""

from __future__ import annotations

import random

import torch

from ftscale.finetune.evaluate import target_nll
from ftscale.finetune.tasks import DeviceSplit, Encoded, collate


def _encoded(n: int = 40, seed: int = 0, vocab: int = 100) -> Encoded:
    rng = random.Random(seed)
    ids, prompts = [], []
    for _ in range(n):
        length = rng.randint(1, 30)
        ids.append([rng.randint(3, vocab - 1) for _ in range(length)])
        prompts.append(rng.randint(0, length))  # includes a bare target (0) and no target
    return Encoded(ids=ids, prompt_lengths=prompts, prompt_ids=[], targets=[""] * n)


def test_device_batches_equal_collated_ones_and_count_the_targets():
    encoded = _encoded()
    split = DeviceSplit(encoded, pad_id=1, device=torch.device("cpu"))
    rng = random.Random(1)
    for _ in range(20):
        rows = rng.sample(range(len(encoded)), rng.randint(1, 8))
        ids, labels, real, count = split.batch(split.index(rows), rows)
        want_ids, want_labels, want_real = collate(encoded, rows, 1)
        assert torch.equal(ids, want_ids) and torch.equal(labels, want_labels)
        assert real == want_real
        assert count == int((want_labels[:, 1:] != -100).sum())  # what the loss counts


def test_the_loss_with_a_known_count_equals_the_masked_one(base, tok):
    encoded = _encoded(vocab=len(tok))
    split = DeviceSplit(encoded, pad_id=tok.pad_token_id, device=torch.device("cpu"))
    rows = [0, 5, 9, 17]
    ids, labels, _, count = split.batch(split.index(rows), rows)
    base.eval()
    with torch.no_grad():
        for fast in (True, False):
            masked, n = target_nll(base, ids, labels, fast=fast)
            gathered, m = target_nll(base, ids, labels, fast=fast, count=count)
            assert n == m == count
            assert torch.equal(masked, gathered)


def test_evaluation_batches_cover_every_example_once_and_cut_padding():
    """Every example in exactly one batch, within the token and size limits; a batch holding
    FULL_BATCH_TOKENS real tokens stops before its padding passes PADDING_SHARE; small batches
    are never cut for padding."""
    from ftscale.finetune.tasks import FULL_BATCH_TOKENS, PADDING_SHARE, sorted_batches

    rng = random.Random(3)
    lengths = [rng.randint(60, 160) for _ in range(40)]  # like SmolLM2's dev pairs
    batches = sorted_batches(lengths, 8192, 128)
    assert sorted(i for b in batches for i in b) == list(range(40))
    padded = sum(lengths[b[0]] * len(b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.2 < 1 - sum(lengths) / (max(lengths) * 40)  # one: 0.3
    for batch in batches:
        longest = lengths[batch[0]]
        assert longest * len(batch) <= 8192 and all(lengths[i] <= longest for i in batch)
        for j in range(2, len(batch) + 1):  # each example joined a short or lightly padded batch
            real = sum(lengths[i] for i in batch[: j - 1])
            padding = 1 - (real + lengths[batch[j - 1]]) / (longest * j)
            assert real < FULL_BATCH_TOKENS or padding <= PADDING_SHARE
    small = [30, 5, 5, 5]  # 45 real tokens: under FULL_BATCH_TOKENS, kept whole
    assert sum(small) < FULL_BATCH_TOKENS and sorted_batches(small, 8192, 128) == [[0, 1, 2, 3]]
    assert sorted_batches([10] * 5, 25, 128) == [[0, 1], [2, 3], [4]]  # the token limit
    assert sorted_batches([10] * 5, 8192, 2) == [[0, 1], [2, 3], [4]]  # the size limit
