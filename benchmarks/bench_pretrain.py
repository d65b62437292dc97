"""Pretraining throughput (tokens/s) per ladder shape and thread count on this machine.

    PYTHONPATH=src python benchmarks/bench_pretrain.py [--steps 40] [--threads 1 2] [--toml FILE]

Trains each rung of the ladder file (default: examples/ladder-tiny.toml) for a few steps with the
file's recipe and prints tokens/s (training only, evaluation excluded). Results depend heavily on
other load: on a shared 2-core machine compare thread counts in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ftscale.data import corpus
from ftscale.models.ladder import load_config
from ftscale.models.pretrain import PretrainRecipe, Shape, pretrain, tokenize_corpus
from ftscale.models.tokenizer import train_bpe


def main() -> None:
    """Print one JSON line per (rung, threads): tokens/s and seconds per step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--toml", default=str(Path(__file__).parents[1] / "examples" /
                                              "ladder-tiny.toml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cfg = load_config(args.toml)
    r = cfg.recipe
    docs = corpus.pretraining_documents("train")
    tok = train_bpe(docs, cfg.tokenizer.vocab_size)
    tokens = args.steps * r.batch_size * r.seq_len
    data = tokenize_corpus(tok, docs, corpus.pretraining_documents("val"), seq_len=r.seq_len,
                           train_tokens=tokens, val_tokens=r.seq_len * 8, seed=r.seed)
    recipe = PretrainRecipe(tokens=tokens, batch_size=r.batch_size, seq_len=r.seq_len, lr=r.lr,
                            warmup_fraction=r.warmup_fraction, min_lr_ratio=r.min_lr_ratio,
                            weight_decay=r.weight_decay, seed=r.seed)
    for rung in cfg.rungs:
        for threads in args.threads:
            start = time.perf_counter()
            rec = pretrain(Shape(rung.width, rung.layers, rung.heads, rung.ffn), recipe, data, tok,
                           lambda *a: None, threads=threads)
            print(json.dumps({"rung": rung.name, "threads": threads,
                              "tokens_per_s": round(rec["tokens_per_s"]),
                              "s_per_step": round(rec["wall_s"] / rec["step"], 4),
                              "wall_s": round(time.perf_counter() - start, 2),
                              "loadavg_1m": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
