"""Byte-level BPE tokenizers trained with Hugging Face ``tokenizers``, saved as transformers ones.

Byte-level BPE (as in GPT-2) starts from the 256 byte symbols, so any UTF-8 text (umlauts, accents,
the French of the zero-shot task) encodes without unknown tokens and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ftscale.common import first_line
from ftscale.errors import UserError

#: End-of-text token: separates documents in pretraining and ends every target in finetuning.
EOS_TOKEN = "<|endoftext|>"
#: Padding token (never trained on; masked out of every loss).
PAD_TOKEN = "<|pad|>"
#: Smallest vocabulary: the 256 bytes, the special tokens and a few merges.
MIN_VOCAB = 260


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of ``vocab_size`` tokens (bytes, merges and the two special
    tokens :data:`EOS_TOKEN`, :data:`PAD_TOKEN`) on ``texts``; deterministic for equal input.

    The result is a :class:`transformers.PreTrainedTokenizerFast` with ``eos``/``bos`` set to
    :data:`EOS_TOKEN` and ``pad`` to :data:`PAD_TOKEN`, ready for ``save_pretrained``.
    """
    if vocab_size < MIN_VOCAB:
        raise UserError(f"tokenizer vocab_size {vocab_size} is too small (at least {MIN_VOCAB})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with ftscale's specials."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def cached_bpe(texts: list[str], vocab_size: int, key: str, cache: Path | None) -> (
        PreTrainedTokenizerFast):
    """:func:`train_bpe` on ``texts``, reused from ``cache/bpe-<vocab_size>-<key>`` when present.

    ``key`` must identify ``texts`` (e.g. the corpus fingerprint). The directory is written to a
    temporary sibling and renamed, so a killed run never leaves a half-written tokenizer. With
    ``cache=None`` the tokenizer is always trained.
    """
    import os
    import shutil
    import uuid

    if cache is None:
        return train_bpe(texts, vocab_size)
    final = Path(cache) / f"bpe-{vocab_size}-{key}"
    if (final / "tokenizer.json").is_file():
        return load_tokenizer(final)
    tok = train_bpe(texts, vocab_size)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tok.save_pretrained(str(tmp))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "tokenizer.json").is_file():
            raise
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by ``save_pretrained`` (a model or tokenizer directory)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise UserError(f"{path}: cannot load tokenizer: {first}") from None
