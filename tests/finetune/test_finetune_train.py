"""Training and evaluation: learning, best-state selection, hand-checked metrics, faults, seeds."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from finetune_toy import CONTRACT, make_model, make_tokenizer, reverse_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from ftscale.data import Pair
from ftscale.errors import UserError
from ftscale.finetune import (
    TaskConfig,
    TrainConfig,
    encode_pairs,
    make_method,
    mean_nll,
    nested_subset,
    score_generations,
)
from ftscale.finetune.tasks import collate, length_grouped_batches

#: 16 examples, batches of 8 at a high learning rate, dev checked every 5 steps: the dev loss dips
#: within a few checks and then rises as the model overfits.
SMALL_AND_HOT = dict(
    examples=16, batch_size=8, eval_every=5, learning_rate=3e-2, gen_examples=0, threads=1
)


@pytest.mark.parametrize(
    ("method", "lr", "margin"),
    [
        (make_method("fmt"), None, 0.3),
        (make_method("lora", rank=4), None, 0.05),
        (make_method("prompt", prompt_length=8), None, 0.02),
        (make_method("ia3"), 0.1, 0.02),  # any PEFT method, same loop
    ],
    ids=["fmt", "lora", "prompt", "ia3"],
)
def test_each_method_lowers_dev_loss(run_toy, method, lr, margin):
    config = TrainConfig(max_steps=80, learning_rate=lr, gen_examples=8, threads=1, patience=None)
    record = run_toy(method, config)
    assert record.status == "ok", record.reason
    assert record.best_dev_nll < record.initial_dev_nll - margin
    assert record.test_nll < record.initial_dev_nll  # the test split gains too
    assert record.test_ppl == pytest.approx(math.exp(record.test_nll))
    assert record.tokens_seen > record.target_tokens_seen > 0
    assert 0 <= record.gen_chrf <= 100 and record.gen_examples == 8


def test_adafactor_trains(run_toy):
    config = TrainConfig(max_steps=40, optimizer="adafactor", gen_examples=0, threads=1)
    record = run_toy("fmt", config)
    assert record.optimizer == "adafactor"
    assert record.best_dev_nll < record.initial_dev_nll - 0.1


def test_best_dev_state_is_what_gets_evaluated(tok, pairs, run_toy):
    # 16 examples at a high learning rate: dev loss dips, then overfitting drives it far up.
    _, dev, _ = pairs
    config = TrainConfig(**SMALL_AND_HOT, max_steps=60, patience=None)
    result = run_toy("fmt", config, test=dev, return_model=True)  # test split = dev split
    record = result.record
    history = dict((int(s), v) for s, v in record.dev_history)
    assert 0 < record.best_step < 60
    assert history[60] > record.best_dev_nll + 0.5
    assert record.best_dev_nll == min(history.values())
    # Testing on the dev split reproduces the best dev value exactly: the best state was restored.
    assert record.test_nll == record.best_dev_nll
    again, _ = mean_nll(result.model, encode_pairs(dev, tok, TaskConfig()), tok.pad_token_id)
    assert again == record.best_dev_nll


def test_early_stopping_stops_when_dev_stalls(run_toy):
    record = run_toy("fmt", TrainConfig(**SMALL_AND_HOT, max_steps=200, patience=2))
    assert record.stopped_early and record.steps < 200
    assert record.steps == record.best_step + 2 * 5


def _hand_nll(logits_fn, encoded) -> float:
    total, count = 0.0, 0
    for ids, start in zip(encoded.ids, encoded.prompt_lengths, strict=True):
        logits = logits_fn(torch.tensor([ids]))[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(ids[start:])
        total -= float(logp[start - 1 : len(ids) - 1].gather(1, targets[:, None]).sum())
        count += len(targets)
    return total / count


def test_nll_matches_hand_computation(tok, base, pairs):
    _, dev, _ = pairs
    encoded = encode_pairs(dev[:12], tok, TaskConfig())
    model = copy.deepcopy(base).eval()
    with torch.no_grad():
        expected = _hand_nll(lambda ids: model(ids).logits, encoded)
        for fast in (True, False):
            value, count = mean_nll(
                model, encoded, tok.pad_token_id, fast=fast, tokens_per_batch=64
            )
            assert count == encoded.target_tokens
            assert value == pytest.approx(expected, rel=1e-5)


def test_prompt_tuning_nll_drops_virtual_positions(tok, base, pairs):
    from ftscale.finetune import apply_method

    _, dev, _ = pairs
    encoded = encode_pairs(dev[:12], tok, TaskConfig())
    wrapped = apply_method(copy.deepcopy(base), make_method("prompt", prompt_length=5)).eval()
    prompt = wrapped.prompt_encoder["default"].embedding.weight
    inner = wrapped.get_base_model()

    def logits(ids):  # soft prompt prepended by hand, its positions dropped
        embeds = torch.cat([prompt[None], inner.get_input_embeddings()(ids)], dim=1)
        return inner(inputs_embeds=embeds).logits[:, 5:]

    with torch.no_grad():
        expected = _hand_nll(logits, encoded)
        value, _ = mean_nll(wrapped, encoded, tok.pad_token_id)
    assert value == pytest.approx(expected, rel=1e-5)


def test_generation_scores_match_hand_computation():
    # chrF on "abc" vs "abd": 1-grams P = R = 2/3, 2-grams 1/2, 3-grams 0 (no longer n-grams);
    # F_beta equals P when P = R, averaged over the 3 orders: (2/3 + 1/2 + 0) / 3.
    scores = score_generations(["abc"], ["abd"])
    assert scores.chrf == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    # ROUGE-L: LCS of "a b c d" and "a b d e" is "a b d": P = R = 3/4.
    assert score_generations(["a b c d"], ["a b d e"]).rouge_l == pytest.approx(75.0)
    same = score_generations(["der Hund läuft über die Straße"], ["der Hund läuft über die Straße"])
    assert same.bleu == pytest.approx(100.0) and same.chrf == pytest.approx(100.0)
    assert same.rouge_l == pytest.approx(100.0)
    # ROUGE-L keeps non-ASCII words (German umlauts, Chinese characters)
    assert score_generations(["läuft über"], ["läuft"]).rouge_l == pytest.approx(100 * 2 / 3)
    assert score_generations(["我爱你"], ["我爱他"]).rouge_l == pytest.approx(100 * 2 / 3)


def test_forced_nan_weight_gives_failed_record(base, run_toy):
    broken = copy.deepcopy(base)
    with torch.no_grad():
        broken.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    record = run_toy("lora", TrainConfig(max_steps=5, threads=1), model=broken)
    assert record.status == "failed" and record.failed_step == 0
    assert "non-finite" in record.reason
    data = json.loads(record.to_json())
    assert data["test_nll"] is None and data["status"] == "failed"


def test_diverging_loss_gives_failed_record_with_step(run_toy):
    config = TrainConfig(
        max_steps=30,
        learning_rate=1e30,
        max_grad_norm=None,
        eval_every=100,
        warmup_fraction=0.0,
        threads=1,
    )
    record = run_toy("fmt", config)
    assert record.status == "failed"
    assert record.reason.startswith("non-finite training loss")
    assert 1 < record.failed_step <= 30 and f"step {record.failed_step}" in record.reason
    assert record.test_nll is None


def test_same_seed_same_record(run_toy):
    method = make_method("lora", rank=2, dropout=0.1)  # dropout exercises the seeded RNG
    config = TrainConfig(examples=120, max_steps=25, gen_examples=6, threads=1, seed=7)
    first = run_toy(method, config)
    torch.manual_seed(12345)  # global RNG state must not matter
    second = run_toy(method, config)
    assert first.comparable() == second.comparable()
    assert first.to_json().count("\n") == 0
    other = run_toy(
        method, TrainConfig(examples=120, max_steps=25, gen_examples=6, threads=1, seed=8)
    )
    assert other.comparable() != first.comparable()


def test_record_carries_the_contract_fields(run_toy):
    config = TrainConfig(examples=64, subset_seed=2, max_steps=8, gen_examples=4, threads=1)
    record = run_toy(make_method("prompt", prompt_length=4), config)
    data = json.loads(record.to_json())
    for key in CONTRACT:
        assert key in data
    assert data["method"] == "prompt" and data["method_size"] == 4
    assert data["examples"] == 64 and data["subset_seed"] == 2
    assert data["trainable_params"] == 4 * 32
    assert data["versions"]["torch"] == torch.__version__
    assert data["status"] == "ok" and data["reason"] is None
    # plain data for worker processes: configs and records pickle and come back equal
    config = TrainConfig(examples=64, threads=1)
    method = make_method("lora", rank=2)
    for item in (config, method, TaskConfig(), record):
        assert pickle.loads(pickle.dumps(item)) == item
    # configs key grids: equal configs hash equal
    assert len({make_method("lora", rank=2), make_method("lora", rank=2), method}) == 1
    assert len({TaskConfig(fields={"x": "y"}), TaskConfig(fields={"x": "y"})}) == 1


def test_dev_sample_is_fixed_and_test_split_whole(pairs, run_toy):
    _, dev, test = pairs
    config = TrainConfig(max_steps=6, dev_examples=10, gen_examples=0, threads=1)
    first = run_toy("lora", config)
    assert first.dev_examples == 10 and first.test_examples == len(test)
    other_seed = TrainConfig(max_steps=6, dev_examples=10, gen_examples=0, threads=1, seed=5)
    second = run_toy("fmt", other_seed)
    assert second.initial_dev_nll == first.initial_dev_nll  # same sample, same untrained model
    whole = run_toy("fmt", TrainConfig(max_steps=6, gen_examples=0))
    assert whole.dev_examples == len(dev) and whole.initial_dev_nll != first.initial_dev_nll


def test_tokenizer_without_pad_token(run_toy):
    tok = make_tokenizer(pad=False)
    assert tok.pad_token_id is None
    config = TrainConfig(max_steps=10, gen_examples=4, threads=1)
    record = run_toy("lora", config, model=make_model(tok), tokenizer=tok)
    assert record.status == "ok" and record.best_dev_nll <= record.initial_dev_nll


def test_bad_data_raises_one_line_user_errors(run_toy):
    with pytest.raises(UserError, match="train: no examples"):
        run_toy("fmt", train=[])
    with pytest.raises(UserError, match="larger than the training data"):
        run_toy("fmt", TrainConfig(examples=10_000))
    with pytest.raises(UserError, match="unknown finetuning method"):
        run_toy("nosuch")
    with pytest.raises(UserError, match="needs its tokenizer"):
        run_toy("fmt", tokenizer=None)
    with pytest.raises(UserError, match="template"):
        TaskConfig(template="no source here")
    with pytest.raises(UserError, match="optimizer"):
        TrainConfig(optimizer="sgd")


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 200), data=st.data())
def test_nested_subsets_are_nested(total, data):
    items = [Pair(str(i), str(i)) for i in range(total)]
    small = data.draw(st.integers(1, total))
    large = data.draw(st.integers(small, total))
    seed = data.draw(st.integers(0, 2**31))
    a, b = nested_subset(items, small, seed), nested_subset(items, large, seed)
    assert len(a) == small and len(set(a)) == small
    assert set(a) <= set(b)
    assert b[:small] == a


def test_subset_seeds_differ_and_sizes_are_checked():
    items = [Pair(str(i), str(i)) for i in range(100)]
    assert nested_subset(items, 10, 0) != nested_subset(items, 10, 1)
    with pytest.raises(UserError, match="101 is larger"):
        nested_subset(items, 101, 0)
    with pytest.raises(UserError):
        nested_subset(items, 0, 0)


def test_length_grouped_batches_cover_each_example_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000).tolist()
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))

    def padding(batches):
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / padded

    random_order = rng.permutation(1000).tolist()
    plain = [random_order[i : i + 16] for i in range(0, 1000, 16)]
    assert padding(batches) < 0.1 < padding(plain)


def test_collate_pads_to_batch_longest_and_masks_prompt(tok):
    encoded = encode_pairs([Pair("a b c", "c b a"), Pair("a", "a")], tok, TaskConfig())
    input_ids, labels, real = collate(encoded, [0, 1], tok.pad_token_id)
    # <s> a b c = | c b a </s>   and   <s> a = | a </s>
    assert input_ids.shape == (2, 9) and real == 9 + 5
    assert (
        labels[0].tolist()[:5] == [-100] * 5 and labels[0, 5:].tolist() == input_ids[0, 5:].tolist()
    )
    assert labels[1].tolist() == [
        -100,
        -100,
        -100,
        input_ids[1, 3].item(),
        tok.eos_token_id,
        -100,
        -100,
        -100,
        -100,
    ]


def test_truncation_is_counted(tok):
    rows = [Pair("a b c d e f", "a"), Pair("a b", "a b c d e f g"), Pair("a", "b")]
    encoded = encode_pairs(rows, tok, TaskConfig(max_source_tokens=3, max_target_tokens=4))
    assert encoded.truncated_sources == 1 and encoded.truncated_targets == 1
    # <s> a b c = then target a </s>; the long target keeps 4 tokens plus </s>
    assert len(encoded.ids[0]) == 5 + 2 and encoded.prompt_lengths[0] == 5
    prompt = tok.convert_ids_to_tokens(encoded.prompt_ids[0])
    assert prompt == ["<s>", "a", "b", "c", "="]  # the source is cut, the template kept
    assert len(encoded.ids[1]) - encoded.prompt_lengths[1] == 4 + 1


def test_template_fills_source_and_fields(tok):
    task = TaskConfig(
        template="Summarize the following document in {lang}: {src}", fields={"lang": "German"}
    )
    assert task.prompt("x") == "Summarize the following document in German: x"
    with pytest.raises(UserError, match="lang"):
        TaskConfig(template="{src} in {lang}")


def test_reverse_pairs_fixture_is_varied():
    rows = reverse_pairs(50, 0)
    assert len({len(p.source.split()) for p in rows}) > 2


def test_activation_checkpointing_changes_memory_not_numbers(run_toy):
    runs = [
        run_toy(method, TrainConfig(max_steps=6, gen_examples=2, threads=1, checkpointing=flag))
        for method in ("lora", "fmt")
        for flag in (False, True)
    ]
    for plain, checkpointed in (runs[:2], runs[2:]):
        assert not plain.checkpointing and plain.checkpointed_layers == 0
        assert checkpointed.checkpointing and checkpointed.checkpointed_layers == 2
        assert plain.comparable() == checkpointed.comparable()


@pytest.mark.parametrize("where", ["training", "generating", "eval set"])
def test_out_of_memory_anywhere_becomes_a_failed_record(pairs, run_toy, monkeypatch, where):
    """Fault injection: torch's own out-of-memory error raised inside one step of the run."""
    import ftscale.finetune.recipe as train_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CPU out of memory (injected)")

    train, dev, _ = pairs
    evals = ()
    if where == "training":
        calls = {"n": 0}
        real = train_module.target_nll

        def fail_on_third(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                out_of_memory()
            return real(*args, **kwargs)

        monkeypatch.setattr(train_module, "target_nll", fail_on_third)
    elif where == "generating":
        monkeypatch.setattr(train_module, "greedy_generate", out_of_memory)
    else:
        from ftscale.finetune.recipe import EvalData

        evals = [EvalData("extra", dev[:4])]
        real_score = train_module._score_eval
        monkeypatch.setattr(
            train_module,
            "_score_eval",
            lambda run, data: out_of_memory() if run.record.steps else real_score(run, data),
        )
    config = TrainConfig(max_steps=6, eval_every=3, gen_examples=2, threads=1, patience=None)
    record = run_toy("lora", config, evals=evals)
    assert record.status == "failed" and record.reason.startswith("out of memory while")
    assert record.improved is None and record.undertrained is None
    if where == "training":
        assert (record.steps, record.failed_step) == (2, 3)
        assert record.test_nll is None
    else:
        assert record.steps == record.failed_step == 6 and record.test_nll is not None
    assert record.epochs == pytest.approx(record.steps / math.ceil(len(train) / 16))
    assert json.loads(record.to_json())["status"] == "failed"
