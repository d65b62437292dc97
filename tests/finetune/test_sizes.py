"""One definition of non-embedding parameters (Kaplan et al. 2020): a ladder manifest and a run
record on the same checkpoint agree, for tied and untied Llama and for GPT-2's learned positions."""

from __future__ import annotations

import pytest
import torch
from finetune_toy import make_model, reverse_pairs

from ftscale.finetune import TrainConfig, finetune
from ftscale.models.external import model_param_counts
from ftscale.sizes import context_length, parameter_counts


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("kind", ["llama-tied", "llama-untied", "gpt2"])
def test_ladder_manifest_and_run_record_agree(tok, tmp_path, kind):
    model = _gpt2(tok) if kind == "gpt2" else make_model(tok, tied=kind == "llama-tied")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ladder = model_param_counts(str(tmp_path))  # what an external ladder's manifest records
    pairs = reverse_pairs(40, 1)
    config = TrainConfig(max_steps=1, gen_examples=0, threads=1, batch_size=8)
    record = finetune(
        model=str(tmp_path),
        method="lora",
        train=pairs,
        dev=pairs[:8],
        test=pairs[:8],
        train_config=config,
    )
    assert record.status == "ok", record.reason
    assert (record.total_params, record.nonembedding_params) == (
        ladder["total"],
        ladder["nonembedding"],
    )
    d, vocab = model.config.hidden_size, len(tok)
    outputs = 0 if kind != "llama-untied" else vocab * d
    positions = 64 * d if kind == "gpt2" else 0  # GPT-2's wpe is learned; Llama's rotary is not
    assert ladder["embedding"] == vocab * d + outputs + positions
    assert parameter_counts(model).nonembedding == ladder["nonembedding"]


def test_context_length_from_config_or_tokenizer(tok):
    assert context_length(make_model(tok)) == 128
    assert context_length(_gpt2(tok)) == 64
    tok_copy = type("T", (), {"model_max_length": 32})()
    assert context_length(None, tok_copy) == 32
    huge = type("T", (), {"model_max_length": int(1e30)})()
    assert context_length(None, huge) is None
