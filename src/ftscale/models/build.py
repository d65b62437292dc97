"""Building a pretrained ladder: tokenizer, token blocks, every rung, manifests (into a directory).

Called by :func:`ftscale.models.ladder.build_ladder`, which owns the cache and atomicity; this
module only fills the directory it is given.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers.utils import logging as hf_logging

from ftscale.data import corpus
from ftscale.models.ladder import MANIFEST_FILE, LadderConfig, OnCheckpoint, write_json_atomic
from ftscale.models.pretrain import (
    PretrainRecipe,
    Shape,
    count_params,
    default_threads,
    pretrain,
    tokenize_corpus,
)
from ftscale.models.tokenizer import cached_bpe


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TextColumn("{task.fields[rate]:>8} tok/s"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def build_pretrained(
    config: LadderConfig,
    out: Path,
    *,
    threads: int | None = None,
    progress: bool = True,
    on_checkpoint: OnCheckpoint | None = None,
    tokenizer_cache: Path | None = None,
) -> dict:
    """Train the tokenizer, pretrain every rung of ``config`` and write checkpoints into ``out``.

    The tokenizer is reused from ``tokenizer_cache`` when one with the same vocabulary was trained
    on the same corpus (so ladders of equal vocabulary share token ids).

    Returns the ladder summary: relative checkpoint paths, per-rung timings (training seconds,
    tokens/s, threads) and data sizes (tokens). Each checkpoint directory holds the model
    (``config.json``, ``model.safetensors``), the tokenizer and ``manifest.json``.
    """
    assert config.recipe is not None
    recipe_cfg = config.recipe
    threads = threads or default_threads()
    hf_logging.disable_progress_bar()  # our own bar; no per-save "Writing model shards" bars
    t0 = time.perf_counter()
    train_docs = corpus.pretraining_documents("train")
    val_docs = corpus.pretraining_documents("val")
    tokenizer = cached_bpe(
        train_docs, config.tokenizer.vocab_size, corpus.corpus_fingerprint(), tokenizer_cache
    )
    tokenizer.save_pretrained(str(out / "tokenizer"))
    data = tokenize_corpus(
        tokenizer, train_docs, val_docs, seq_len=recipe_cfg.seq_len,
        train_tokens=recipe_cfg.tokens, val_tokens=recipe_cfg.val_tokens, seed=recipe_cfg.seed,
    )
    data_s = time.perf_counter() - t0
    recipe = PretrainRecipe(
        tokens=recipe_cfg.tokens, batch_size=recipe_cfg.batch_size, seq_len=recipe_cfg.seq_len,
        lr=recipe_cfg.lr, warmup_fraction=recipe_cfg.warmup_fraction,
        min_lr_ratio=recipe_cfg.min_lr_ratio, weight_decay=recipe_cfg.weight_decay,
        seed=recipe_cfg.seed, checkpoints=list(recipe_cfg.checkpoints),
    )
    total_tokens = recipe.total_steps * recipe.tokens_per_step
    checkpoints: list[str] = []
    rungs: dict[str, dict] = {}
    with _progress(progress) as bar:
        for rung in config.rungs:
            shape = Shape(rung.width, rung.layers, rung.heads, rung.ffn)
            task = bar.add_task(f"pretrain {rung.name}", total=total_tokens, rate="-", loss="-")
            started = time.perf_counter()
            train_clock = [started]

            def on_progress(done: int, loss: float, task=task, clock=train_clock) -> None:
                elapsed = time.perf_counter() - clock[0]
                rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
                bar.update(task, completed=done, rate=rate, loss=f"{loss:.3f}")

            def save(model, step: int, record: dict, rung=rung, shape=shape) -> None:
                rel = f"{rung.name}/tokens-{record['tokens_seen']:09d}"
                ckpt = out / rel
                ckpt.mkdir(parents=True)
                model.save_pretrained(str(ckpt))
                tokenizer.save_pretrained(str(ckpt))
                counts = count_params(model)
                manifest = {
                    "rung": rung.name,
                    "tokens_seen": record["tokens_seen"],
                    "step": step,
                    "total_params": counts["total"],
                    "nonembedding_params": counts["nonembedding"],
                    "embedding_params": counts["embedding"],
                    "train_loss": round(record["train_loss"], 6),
                    "val_loss": round(record["val_loss"], 6),
                    "width": shape.width,
                    "layers": shape.layers,
                    "heads": shape.heads,
                    "ffn": shape.ffn,
                    "vocab_size": len(tokenizer),
                    "seq_len": recipe.seq_len,
                    "wall_s": round(record["wall_s"], 3),
                    "tokens_per_s": round(record["tokens_per_s"], 1),
                    "threads": record["threads"],
                    "source": "local-build",
                    "revision": None,
                }
                write_json_atomic(ckpt / MANIFEST_FILE, manifest)
                checkpoints.append(rel)
                if progress:
                    bar.console.print(
                        f"{rung.name}: {record['tokens_seen']:,} tokens, train loss "
                        f"{record['train_loss']:.3f}, val loss {record['val_loss']:.3f}, "
                        f"{record['tokens_per_s']:,.0f} tokens/s ({record['threads']} thread(s))"
                    )
                if on_checkpoint is not None:
                    on_checkpoint(rung.name, record["tokens_seen"], ckpt)

            last = pretrain(
                shape, recipe, data, tokenizer, save, threads=threads, on_progress=on_progress
            )
            rungs[rung.name] = {
                "train_s": round(last["wall_s"], 3),
                "total_s": round(time.perf_counter() - started, 3),
                "tokens_per_s": round(last["tokens_per_s"], 1),
                "threads": last["threads"],
                "val_loss": round(last["val_loss"], 6),
            }
    return {
        "checkpoints": checkpoints,
        "rungs": rungs,
        "tokenizer": "tokenizer",
        "data": {
            "data_s": round(data_s, 3),
            "train_blocks": len(data.train),
            "train_tokens_available": int(data.train.numel()),
            "val_tokens": int(data.val.numel()),
            "corpus_fingerprint": corpus.corpus_fingerprint(),
        },
    }
