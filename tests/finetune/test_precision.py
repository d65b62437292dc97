"""The precision policy: bf16 autocast where the device multiplies bf16 natively and the model is
wide enough to gain, float32 elsewhere; the record and the memory plan say which."""

from __future__ import annotations

import pytest
import torch
from finetune_toy import make_model

from ftscale.finetune import TrainConfig
from ftscale.finetune import precision as precision_module
from ftscale.finetune.precision import (
    CPU_BF16_MIN_WIDTH,
    autocast_dtype,
    has_bf16_flags,
    model_width,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu amx_tile amx_bf16 amx_int8\n", True),
        ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", False),  # AVX512 alone emulates bf16
        ("processor\t: 0\nFeatures\t: fp asimd bf16\n", False),  # no x86 flags line
        ("", False),
    ],
)
def test_bf16_instructions_are_read_from_the_cpu_flags(cpuinfo, expected):
    assert has_bf16_flags(cpuinfo) is expected


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocasts_only_wide_models_with_native_bf16(tok, monkeypatch, native):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: native)
    wide, narrow = make_model(tok, hidden=CPU_BF16_MIN_WIDTH, layers=1), make_model(tok)
    assert model_width(wide) == CPU_BF16_MIN_WIDTH and model_width(narrow) == 32
    assert autocast_dtype(CPU, True, wide) == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, True, narrow) is None
    assert autocast_dtype(CPU, False, wide) is None  # bf16 = false: float32 everywhere
    assert autocast_dtype(CPU, True, object()) is None  # no config: no width, float32


def test_a_wide_run_records_its_precision_and_bf16_off_is_float32(tok, run_toy, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    wide = make_model(tok, hidden=CPU_BF16_MIN_WIDTH, layers=1)
    config = TrainConfig(max_steps=2, batch_size=4, gen_examples=0, dev_examples=8)
    fast = run_toy("lora", config, model=wide)
    plain = run_toy("lora", config.replace(bf16=False), model=wide)
    assert fast.status == plain.status == "ok"
    assert fast.dtype == "bfloat16-autocast" and fast.memory_plan.endswith("; bfloat16-autocast")
    assert plain.dtype == "float32" and plain.memory_plan.endswith("; float32")
    # the loss stays float32 (chunked head): bf16 products move it little on this tiny model
    assert fast.test_nll == pytest.approx(plain.test_nll, abs=0.05)
    assert fast.test_nll != plain.test_nll


def test_frozen_weights_held_in_bf16_change_no_number(tok, pairs, monkeypatch):
    """Autocast rounds a frozen float32 weight to bf16 for every product: holding it in bf16
    gives the same numbers, bit for bit; the returned model has its float32 weights back."""
    from ftscale.finetune import finetune, make_method, recipe

    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    wide = make_model(tok, hidden=CPU_BF16_MIN_WIDTH, layers=1)
    train, dev, test = pairs
    config = TrainConfig(max_steps=3, batch_size=4, gen_examples=2, dev_examples=8, eval_every=1)

    def run():
        return finetune(model=wide, tokenizer=tok, method=make_method("lora", rank=2),
                        train=train, dev=dev, test=test, train_config=config, return_model=True)

    held = run()
    monkeypatch.setattr(recipe, "store_frozen_in", lambda model, dtype: [])
    cast_each_step = run()
    assert held.record.dtype == "bfloat16-autocast"
    assert held.record.dev_history == cast_each_step.record.dev_history
    assert held.record.test_nll == cast_each_step.record.test_nll
    linears = [m for m in held.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float32 for m in linears)


@pytest.mark.parametrize("rows", [40, 700])  # one chunk through the module; torch's chunked op
@pytest.mark.parametrize("wrapped", [False, True])  # a plain Linear; a head the op cannot take
def test_the_head_loss_keeps_float32_logits_under_autocast(rows, wrapped):
    """bf16 logits near 20 are off by up to 0.06: the loss must not round them."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 3000, bias=False)
    head = torch.nn.Sequential(linear) if wrapped else linear
    hidden, targets = 4 * torch.randn(rows, 64), torch.randint(0, 3000, (rows,))
    from ftscale.finetune.evaluate import head_nll

    with torch.no_grad():
        plain = head_nll(head, hidden, targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = head_nll(head, hidden, targets)
    assert cast.dtype == torch.float32 and float(cast) == pytest.approx(float(plain), rel=1e-6)
