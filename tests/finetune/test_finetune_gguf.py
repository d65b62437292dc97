"""GGUF base models: a tiny Llama written as GGUF here, loaded, dequantised and finetuned.

Needs the optional ``gguf`` package (skipped without it); the missing-package error is tested in
test_finetune_cli.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from finetune_toy import make_model, reverse_pairs

gguf = pytest.importorskip("gguf")

from ftscale.finetune import TrainConfig, finetune, load_model  # noqa: E402

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _bpe_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _permute(weight, heads):
    """llama.cpp's row order for rotary q/k weights (transformers undoes it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(path, model, tokenizer):
    """Write a Llama model and byte-level BPE tokenizer as an unquantised GGUF file."""
    config = model.config
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<pad>", "<s>", "</s>") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            tensor = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = _permute(tensor, config.num_attention_heads)
            elif gguf_name == "attn_k":
                tensor = _permute(tensor, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.slow
def test_gguf_model_loads_exactly_and_full_model_tuning_trains(tmp_path):
    train, dev, test = reverse_pairs(200, 1), reverse_pairs(32, 2), reverse_pairs(32, 3)
    tokenizer = _bpe_tokenizer([t for p in train for t in (p.source, p.target)])
    original = make_model(tokenizer, hidden=32)
    write_gguf(tmp_path / "tiny.gguf", original, tokenizer)

    loaded, gguf_tokenizer, name = load_model(str(tmp_path / "tiny.gguf"))
    assert name.endswith("tiny.gguf")
    ids = gguf_tokenizer(train[0].source)["input_ids"]
    assert ids == tokenizer(train[0].source)["input_ids"]
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert torch.allclose(loaded(batch).logits, original(batch).logits, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())

    config = TrainConfig(max_steps=30, gen_examples=4, threads=1)

    def run(method, model, gguf_file=None):  # tokenizer=None: the one in the GGUF file
        return finetune(
            model=model,
            tokenizer=None,
            method=method,
            train=train,
            dev=dev,
            test=test,
            train_config=config,
            gguf_file=gguf_file,
        )

    record = run("fmt", str(tmp_path), gguf_file="tiny.gguf")  # a folder and the file in it
    assert record.status == "ok" and record.best_dev_nll < record.initial_dev_nll - 0.1
    lora = run("lora", str(tmp_path / "tiny.gguf"))  # the file itself
    assert lora.status == "ok" and lora.best_dev_nll < lora.initial_dev_nll
