"""The memory policy: the chunked output-head loss, the activation measurement, selective
checkpointing and the choice of plan (tiny in-process models; no hub, a few seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from finetune_toy import cli_args
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.errors import UserError
from ftscale.finetune import TrainConfig, apply_method, make_method
from ftscale.finetune.evaluate import HEAD_ROWS, final_hidden_states, head_nll
from ftscale.finetune.memory import (
    Footprint,
    checkpoint_layers,
    choose_plan,
    decoder_layers,
    saved_per_token,
    state_bytes,
)


def _reference(head, hidden, targets):
    return F.cross_entropy(head(hidden), targets, reduction="sum")


@pytest.mark.parametrize("rows", [HEAD_ROWS * 2 + 37, 40])  # chunked path, single chunk
@pytest.mark.parametrize("wrapped", [False, True])  # plain Linear, a head torch's op cannot take
def test_chunked_head_loss_equals_cross_entropy_with_gradients(rows, wrapped):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 300, dtype=torch.float64)
    head = torch.nn.Sequential(linear) if wrapped else linear
    hidden = torch.randn(rows, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (rows,))
    ours = head_nll(head, hidden, targets)
    grads = torch.autograd.grad(ours, (hidden, linear.weight, linear.bias))
    ref = _reference(head, hidden, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, linear.weight, linear.bias))
    assert ours.dtype == torch.float32
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):  # relative to the gradient's scale
        assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())


def _lora(base):
    torch.manual_seed(0)
    return apply_method(copy.deepcopy(base), make_method("lora", rank=4), seed=0).train()


def _saved(model, tokens):
    """Per-token bytes of each layer, outside the layers, and a layer's input per token."""
    saved = _profile(model, tokens)
    return list(saved.per_token[:-1]), saved.per_token[-1], saved.carry


def _profile(model, tokens):
    ids = torch.arange(tokens).remainder(model.config.vocab_size).unsqueeze(0)
    layers = decoder_layers(model)
    return saved_per_token(
        model, layers, lambda n: final_hidden_states(model, ids[:, :n]), tokens
    )


def test_saved_activations_are_per_token_and_per_layer(base):
    model = _lora(base)
    short, _, carry = _saved(model, 16)
    long, outside, _ = _saved(model, 64)
    assert len(long) == len(decoder_layers(model)) == base.config.num_hidden_layers
    assert not any(_profile(model, 64).fixed[:-1])  # float32: nothing saved whatever the tokens
    assert carry == 4 * base.config.hidden_size  # float32 hidden state per token
    # a layer saves several tensors of the width per token (norm, projections, MLP) ...
    assert all(value > 4 * carry for value in long)
    # ... the same in every (identical) layer, and in proportion to the tokens
    assert max(long) == pytest.approx(min(long), rel=0.05)
    for few, many in zip(short, long, strict=True):
        assert many == pytest.approx(few, rel=0.15)
    assert outside >= 0


def test_autocast_weight_copies_count_once_not_per_token(base):
    """Under bf16 autocast a backward pass keeps a bf16 copy of each weight it multiplies by:
    a fixed cost per layer, which a one-probe estimate would scale with the batch's tokens."""
    model = _lora(base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = _profile(model, 64)
    plain, _, _ = _saved(model, 64)
    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        matrices = sum(2 * p.numel() for p in layer.parameters() if p.dim() == 2)  # bf16
        if index == 0:  # its input needs no gradient: q, k, v's weights are not kept
            assert 0 < saved.fixed[0] < matrices
        else:
            assert saved.fixed[index] == pytest.approx(matrices, rel=0.05)
        assert saved.per_token[index] < plain[index]  # the activations are bf16 too
    footprint = _footprint(fixed=(1000, 1000, 1000, 1000, 0))
    # the fixed copies of the layers not checkpointed are held at once, independent of tokens
    assert footprint.activations(0) == int((10 * 400 + 4000) * 1.1)
    assert footprint.activations(2) == int((10 * 220 + 2000) * 1.1)


def _step(model, ids):
    """Loss and gradients of one forward and backward pass."""
    loss = final_hidden_states(model, ids).square().mean()
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_checkpointing_only_the_first_layers_keeps_gradients_and_saves_memory(base):
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    plain, selective = _lora(base), _lora(base)
    layers = decoder_layers(selective)
    before, _, carry = _saved(selective, 32)
    checkpoint_layers(selective, layers, 1)
    assert [layer.gradient_checkpointing for layer in layers] == [True] + [False] * (
        len(layers) - 1
    )
    after, _, _ = _saved(selective, 32)
    # the checkpointed layer keeps little more than its input; the others keep everything
    assert after[0] <= 2 * carry < before[0]
    assert after[1:] == pytest.approx(before[1:], rel=0.05)
    loss, grads = _step(plain, ids)
    loss_k, grads_k = _step(selective, ids)
    assert loss_k == pytest.approx(loss, rel=1e-6)
    for got, want in zip(grads_k, grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


def _footprint(**changes):
    values = dict(
        base=1000,
        weights=400,
        gradients=10,
        optimizer=20,
        best_state=10,
        per_layer=(100, 100, 100, 100),
        outside=0,
        carry=10,
        tokens=10,
        logits=50,
        eval=0,
    )
    return Footprint(**{**values, **changes})


def test_plan_checkpoints_as_few_layers_as_the_budget_needs():
    footprint = _footprint()
    totals = [footprint.total(k) for k in range(5)]
    # each checkpointed layer saves memory, but the last one: it would be recomputed at once
    assert totals[:4] == sorted(totals[:4], reverse=True) and min(totals) == totals[3] < totals[4]
    fits_two = choose_plan(footprint, TrainConfig(max_memory=totals[2]), totals[2], "max_memory")
    assert fits_two.checkpointed == 2 and fits_two.estimate == totals[2]
    roomy = choose_plan(footprint, TrainConfig(), 10**9, "default")
    assert roomy.checkpointed == 0 and "checkpointing 0 of 4 layers" in roomy.line()
    forced = choose_plan(footprint, TrainConfig(checkpointing=True), 10**9, "default")
    assert forced.checkpointed == 4
    tight = TrainConfig(max_memory=totals[3] - 1)
    with pytest.raises(UserError, match=r"--max-memory .*too small for this run"):
        choose_plan(footprint, tight, totals[3] - 1, "max_memory")
    tried = choose_plan(footprint, TrainConfig(), totals[3] - 1, "default")
    assert tried.checkpointed == 3 and "over the budget" in tried.line()


def test_evaluation_peak_counts_when_it_is_the_larger():
    footprint = _footprint(eval=10**6)
    assert footprint.total(0) == footprint.total(4) == 1000 + 10 + 20 + 10 + 10**6


def test_optimizer_state_sizes():
    params = [torch.nn.Parameter(torch.zeros(6, 4)), torch.nn.Parameter(torch.zeros(5))]
    assert state_bytes(params, "adamw") == (29 * 4, 2 * 29 * 4)
    assert state_bytes(params, "adafactor") == (29 * 4, 4 * (6 + 4) + 4 * 5)


def test_run_records_its_plan_and_a_tight_budget_checkpoints(run_toy):
    roomy = run_toy("lora", TrainConfig(max_steps=3, gen_examples=0, threads=1))
    assert roomy.status == "ok" and roomy.checkpointed_layers == 0 and not roomy.checkpointing
    assert roomy.memory_plan.startswith("memory plan: checkpointing 0 of 2 layers")
    with pytest.raises(UserError, match=r"--max-memory 1000000 bytes .*too small"):
        run_toy("lora", TrainConfig(max_steps=3, gen_examples=0, threads=1, max_memory="1MB"))


def test_cli_budget_too_small_is_one_line_exit_2(model_dir, data_files, tmp_path):
    out = tmp_path / "records.jsonl"
    args = cli_args(model_dir, data_files, "--method", "lora", "--max-steps", "2")
    result = CliRunner().invoke(app, [*args, "--max-memory", "1MB", "--output", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("ftscale: error: --max-memory 1000000 bytes")
    assert "Traceback" not in result.output and not out.exists()


def test_the_allocator_returns_freed_memory_only_for_large_models():
    """A model of 64 MiB of weights or more returns freed tensors to the system; a smaller one
    keeps them in the heap (no glibc: nothing is set, and the answer says so)."""
    import sys

    from ftscale.finetune.memory import LARGE_WEIGHTS, set_allocator

    try:
        if not sys.platform.startswith("linux"):
            assert set_allocator(0) is None
            return
        assert set_allocator(LARGE_WEIGHTS) == "return"
        assert set_allocator(LARGE_WEIGHTS - 1) == "reuse"
    finally:
        set_allocator(0)  # the tests' tiny models: the heap, as their runs set it anyway
