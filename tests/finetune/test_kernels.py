"""Compiled decoder layers and their attention kernel: when a run uses them, that its numbers stay
the eager run's up to rounding, that the model gets its own kernels back, and that a compiler that
fails leaves the run eager."""

from __future__ import annotations

import io

import pytest
import torch

from ftscale.finetune import TrainConfig, finetune, make_method, recipe
from ftscale.finetune import kernels as kernels_module
from ftscale.finetune.kernels import (
    COMPILE_MIN_PARAMS,
    SHORT_SEQUENCE,
    attention_for,
    compile_wanted,
)
from ftscale.finetune.progress import PlainProgress

CPU = torch.device("cpu")
CONFIG = TrainConfig(max_steps=3, batch_size=4, gen_examples=2, dev_examples=8, eval_every=1)


@pytest.mark.parametrize(
    ("setting", "found", "params", "expected"),
    [
        (None, True, COMPILE_MIN_PARAMS, True),  # large model: compiled by default
        (None, True, COMPILE_MIN_PARAMS - 1, False),  # small model: eager by default
        (True, True, 1_000, True),  # asked for: compiled whatever the size
        (False, True, 10**9, False),  # --no-compile
        (True, False, 10**9, False),  # no compiler: eager even when asked
        (None, False, 10**9, False),
    ],
)
def test_when_a_run_compiles(monkeypatch, setting, found, params, expected):
    monkeypatch.setattr(kernels_module, "compiler_found", lambda device: found)
    assert compile_wanted(setting, CPU, params) is expected


def test_eager_attention_only_for_compiled_short_cpu_runs(tok):
    from finetune_toy import make_model

    model = make_model(tok)
    assert model.config._attn_implementation == "sdpa"
    assert attention_for(model, True, CPU, SHORT_SEQUENCE) == "eager"
    assert attention_for(model, True, CPU, SHORT_SEQUENCE + 1) == "sdpa"  # long: flash kernel
    assert attention_for(model, False, CPU, 10) == "sdpa"  # eager layers keep SDPA
    assert attention_for(model, True, torch.device("cuda"), 10) == "sdpa"  # GPUs keep SDPA
    assert attention_for(object(), True, CPU, 10) is None  # no config: nothing to switch


def test_no_compiler_for_mps_or_when_torch_cannot_switch_compiled_code_off(monkeypatch):
    assert not kernels_module.compiler_found(torch.device("mps"))
    monkeypatch.delattr(torch.compiler, "set_stance")
    assert not kernels_module.compiler_found(CPU)


@pytest.mark.skipif(not kernels_module.compiler_found(CPU), reason="no C++ compiler")
def test_a_compiled_run_matches_the_eager_run_and_hands_back_an_eager_model(tok, pairs, base):
    """Compiled float32 layers (eager attention) give the eager run's numbers up to rounding;
    generation runs (eager, under a compiled model); the returned model has no compiled layer
    and its SDPA attention back."""
    train, dev, test = pairs

    def run(compile_):
        return finetune(
            model=base,
            tokenizer=tok,
            method=make_method("lora", rank=2),
            train=train,
            dev=dev,
            test=test,
            return_model=True,
            train_config=CONFIG.replace(compile=compile_),
        )

    eager, compiled = run(False), run(True)
    assert (eager.record.compiled, eager.record.attention) == (False, "sdpa")
    assert (compiled.record.compiled, compiled.record.attention) == (True, "eager")
    assert compiled.record.compile_s > 0 and eager.record.compile_s == 0
    assert compiled.record.memory_plan.endswith("; float32, compiled, eager attention")
    assert eager.record.memory_plan.endswith("; float32")
    assert compiled.record.best_step == eager.record.best_step
    for (_, a), (_, b) in zip(eager.record.dev_history, compiled.record.dev_history, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    assert compiled.record.test_nll == pytest.approx(eager.record.test_nll, rel=1e-5)
    assert compiled.record.gen_examples == 2
    inner = compiled.model.get_base_model()
    assert inner.config._attn_implementation == "sdpa"
    assert all(m._compiled_call_impl is None for m in inner.modules())


def test_a_compiler_that_fails_leaves_the_run_eager_and_says_so(tok, run_toy, monkeypatch):
    """Any compiler error in the warm-up: the layers are put back, the run trains eager with
    its record and plan saying so, and the reason is shown once."""
    monkeypatch.setattr(kernels_module, "compiler_found", lambda device: True)
    monkeypatch.setattr(kernels_module, "compile_layers", lambda layers: None)

    def broken(run):
        raise RuntimeError("InductorError: no working C++ compiler\nmore detail")

    monkeypatch.setattr(recipe, "_warm_up", broken)
    shown = io.StringIO()
    record = run_toy("lora", CONFIG.replace(compile=True), progress=PlainProgress(shown))
    plain = run_toy("lora", CONFIG.replace(compile=False))
    assert record.status == "ok" and record.compiled is False
    assert record.memory_plan.endswith("; float32")
    assert record.test_nll == plain.test_nll  # eager numbers, bit for bit
    notes = [line for line in shown.getvalue().splitlines() if "dev NLL" not in line]
    assert notes[-1] == (
        "ftscale: compiling failed, the run goes on eager (RuntimeError: InductorError: no "
        "working C++ compiler)"
    )


def test_a_default_compile_that_would_not_fit_goes_back_to_eager(run_toy, monkeypatch):
    """The compiler's memory is counted in the plan: a run that compiles by default and would
    not fit its budget with it runs eager (plan, record and attention say so); one that asked
    for compiling is refused in one line instead."""
    from ftscale.errors import UserError

    monkeypatch.setattr(kernels_module, "compiler_found", lambda device: True)
    monkeypatch.setattr(kernels_module, "COMPILE_MIN_PARAMS", 0)
    monkeypatch.setattr(kernels_module, "compile_layers", lambda layers: None)
    monkeypatch.setattr(recipe, "_warm_up", lambda run: None)
    config = CONFIG.replace(gen_examples=0, max_memory="4GB")
    roomy = run_toy("lora", config)
    assert roomy.compiled and roomy.memory_plan.endswith("; float32, compiled, eager attention")
    monkeypatch.setattr(kernels_module, "COMPILER_BYTES", 2**40)  # a terabyte: never fits
    tight = run_toy("lora", config)
    assert (tight.compiled, tight.attention) == (False, "sdpa")
    assert tight.memory_plan.endswith("; float32") and tight.checkpointed_layers == 0
    with pytest.raises(UserError, match=r"--max-memory .*too small for this run"):
        run_toy("lora", config.replace(compile=True))
