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
