"""Byte-level BPE tokenizer: exact round trips in English, German and French; save and reload."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftscale.data import corpus
from ftscale.errors import UserError
from ftscale.models.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    cached_bpe,
    load_tokenizer,
    train_bpe,
)

TEXTS = [
    "Im Anfang schuf Gott den Himmel und die Erde.",
    "Größe, Übermut, schäbig, weiß, »Jairs-Dörfer«, 30500 Esel;",
    "In the beginning God created the heaven and the earth.",
    "  leading spaces,\ttabs\nand newlines  ",
    "Au commencement, Dieu créa les cieux et la terre. L'Éternel — œuvre",
    "中文 and emoji 🙂 never seen in training",
]


@pytest.fixture(scope="module")
def tokenizer():
    docs = corpus.pretraining_documents("train")[::6]  # every 6th book, English and German
    return train_bpe(docs, 512)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_merges_learned_from_both_languages(tokenizer):
    assert len(tokenizer) == 512
    en = tokenizer("the LORD said unto them")["input_ids"]
    de = tokenizer("und der HERR sprach zu ihnen")["input_ids"]
    assert len(en) < len("the LORD said unto them") / 2.5
    assert len(de) < len("und der HERR sprach zu ihnen") / 2.5


def test_saved_as_transformers_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert (again.eos_token, again.pad_token, again.bos_token) == (EOS_TOKEN, PAD_TOKEN, EOS_TOKEN)
    for text in TEXTS:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "missing")


def test_deterministic_and_cached(tmp_path):
    docs = corpus.pretraining_documents("train")[:4]
    first = cached_bpe(docs, 300, "k1", tmp_path)
    assert (tmp_path / "bpe-300-k1" / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["bpe-300-k1"]  # no temporary left
    again = cached_bpe(["unrelated text"], 300, "k1", tmp_path)  # hit: not retrained
    fresh = train_bpe(docs, 300)
    for text in TEXTS:
        ids = fresh(text)["input_ids"]
        assert first(text)["input_ids"] == ids == again(text)["input_ids"]


def test_too_small_vocabulary_is_a_user_error():
    with pytest.raises(UserError, match="vocab_size 100 is too small"):
        train_bpe(["abc"], 100)
