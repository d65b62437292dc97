"""Methods: the registry, hand-computed parameter counts, frozen base weights."""

from __future__ import annotations

import pytest
import torch
from finetune_toy import make_model

from ftscale.errors import UserError
from ftscale.finetune import TrainConfig, apply_method, make_method
from ftscale.finetune.methods import base_parameter_counts, count_parameters, known_methods

QUICK = TrainConfig(max_steps=15, gen_examples=0, threads=1, batch_size=8)


def test_registry_builds_and_validates():
    assert make_method("fmt").size is None
    assert make_method("lora", rank=8).size == 8
    assert make_method("LoRA", r=2).options["rank"] == 2
    assert make_method("prompt", prompt_length=20).size == 20
    assert make_method("dora").options["use_dora"] is True
    assert make_method("prefix_tuning", num_virtual_tokens=5).size == 5
    assert make_method("ia3").name == "ia3"
    assert {"fmt", "lora", "prompt", "ia3", "prefix_tuning", "loha"} <= set(known_methods())
    assert make_method("lora", rank=4).to_dict() == {"name": "lora", "options": {"rank": 4}}


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("nosuch", {}, "unknown finetuning method 'nosuch'"),
        ("fmt", {"rank": 4}, "takes no options"),
        ("lora", {"rank": 0}, "rank must be a positive integer"),
        ("lora", {"ranke": 4}, "unknown option 'ranke'"),
        ("lora", {"dropout": 1.5}, "dropout"),
        ("prompt", {"prompt_length": -1}, "prompt_length"),
        ("prompt", {"init": "text"}, "init"),
        ("ia3", {"nosuch": 1}, "unknown option 'nosuch'"),
        ("prefix_tuning", {}, "num_virtual_tokens is required"),
        ("prefix_tuning", {"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive"),
    ],
)
def test_registry_rejects_bad_input_in_one_line(name, options, fragment):
    with pytest.raises(UserError) as info:
        make_method(name, **options)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_trainable_counts_match_hand_computation(tok):
    # hidden 32, FFN 64, 4 heads of 8 dims, 2 key/value heads -> k/v project 32 -> 16; 2 layers.
    shapes = {
        "q": (32, 32),
        "k": (32, 16),
        "v": (32, 16),
        "o": (32, 32),
        "gate": (32, 64),
        "up": (32, 64),
        "down": (64, 32),
    }
    rank = 4
    lora = 2 * sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes.values())
    assert lora == 4096
    model = make_model(tok)
    vocab = len(tok)
    total, nonembedding = base_parameter_counts(model)
    assert nonembedding == total - vocab * 32  # tied: the embedding matrix counted once
    per_layer = sum(a * b for a, b in shapes.values()) + 2 * 32  # projections + two RMSNorms
    assert total == vocab * 32 + 2 * per_layer + 32  # + final norm
    untied = make_model(tok, tied=False)
    assert base_parameter_counts(untied) == (total + vocab * 32, nonembedding)

    import copy

    wrapped = apply_method(copy.deepcopy(model), make_method("lora", rank=rank))
    assert count_parameters(wrapped)[0] == lora
    wrapped = apply_method(copy.deepcopy(model), make_method("prompt", prompt_length=7))
    assert count_parameters(wrapped)[0] == 7 * 32
    # IA3 on Llama scales k and v outputs (16 each) and down_proj inputs (64), per layer.
    wrapped = apply_method(copy.deepcopy(model), make_method("ia3"))
    assert count_parameters(wrapped)[0] == 2 * (16 + 16 + 64)
    wrapped = apply_method(copy.deepcopy(model), make_method("fmt"))
    assert count_parameters(wrapped) == (total, total)


def test_prompt_init_uses_sampled_vocabulary_embeddings(tok, base):
    import copy

    wrapped = apply_method(copy.deepcopy(base), make_method("prompt", prompt_length=6), seed=3)
    prompt = wrapped.prompt_encoder["default"].embedding.weight.detach()
    vocab = base.get_input_embeddings().weight.detach()
    for row in prompt:
        assert (vocab == row).all(dim=1).any(), (
            "each virtual token starts as a vocabulary embedding"
        )
    again = apply_method(copy.deepcopy(base), make_method("prompt", prompt_length=6), seed=3)
    assert torch.equal(prompt, again.prompt_encoder["default"].embedding.weight.detach())


@pytest.mark.parametrize(
    "method", [make_method("lora", rank=2), make_method("prompt", prompt_length=4)]
)
def test_pet_leaves_base_weights_bit_identical(base, run_toy, method):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = run_toy(method, QUICK, return_model=True)
    assert result.record.status == "ok"
    trained = result.model
    if method.name == "lora":
        lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
        assert any(p.abs().sum() > 0 for p in lora_b), "LoRA trained (B left its zero init)"
        inner = trained.unload()  # drop the adapters without merging them
    else:
        inner = trained.get_base_model()
    after = inner.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    # the caller's model is never modified either
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_fmt_changes_weights_but_not_the_callers_model(base, run_toy):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = run_toy("fmt", QUICK, return_model=True)
    changed = [n for n, t in result.model.state_dict().items() if not torch.equal(t, before[n])]
    assert changed
    assert all(torch.equal(t, before[n]) for n, t in base.state_dict().items())
