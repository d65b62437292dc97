"""Shared fixtures for the finetuning tests: a tiny tokenizer, model and toy reverse task."""

from __future__ import annotations

import pytest
from finetune_toy import make_model, make_tokenizer, reverse_pairs, write_jsonl

from ftscale.finetune import finetune


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def base(tok):
    return make_model(tok)


@pytest.fixture(scope="session")
def pairs():
    """(train, dev, test) pairs of the reverse task."""
    return reverse_pairs(300, 1), reverse_pairs(48, 2), reverse_pairs(48, 3)


@pytest.fixture(scope="session")
def run_toy(tok, base, pairs):
    """``run_toy(method, config, **kwargs)``: ``finetune()`` of the shared tiny model (``base``,
    ``tok``) on the toy reverse task (``pairs``) with ``train_config=config``; ``kwargs`` replace
    or add any other ``finetune()`` argument (``model=``, ``test=``, ``evals=``, ...)."""
    train, dev, test = pairs

    def run(method, config=None, **kwargs):
        inputs = {"model": base, "tokenizer": tok, "train": train, "dev": dev, "test": test}
        return finetune(method=method, train_config=config, **{**inputs, **kwargs})

    return run


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tok, base):
    """The tiny model and its tokenizer saved as a local model directory."""
    path = tmp_path_factory.mktemp("model")
    base.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_files(tmp_path_factory, pairs):
    """The toy splits as JSONL files: (train, dev, test) paths."""
    root = tmp_path_factory.mktemp("data")
    train, dev, test = pairs
    return (
        write_jsonl(root / "train.jsonl", train),
        write_jsonl(root / "dev.jsonl", dev),
        write_jsonl(root / "test.jsonl", test),
    )


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest and most robustly on one thread when other work shares the CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
