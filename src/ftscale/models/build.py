"""Building a pretrained ladder: tokenizer, token blocks, every rung, manifests (into a directory).

Called by :func:`ftscale.models.ladder.build_ladder`, which owns the cache and atomicity: first
:func:`prepare_pretraining` (tokenizer and token blocks, checked against the recipe before any
pretraining), then :func:`build_pretrained`, which only fills the directory it is given.

Rungs are independent, so with ``workers > 1`` they are pretrained in parallel single-process
jobs (``spawn`` start method), longest first: on a small CPU several one-thread processes use the
cores more robustly than one process with several threads (the calibration pilot measured 10x
slow-downs of 2-thread training under other load). Workers report progress and checkpoints to the
parent through a queue, and exit by themselves if the parent dies.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers.utils import logging as hf_logging

from ftscale.common import default_workers, threads_per_worker, write_json_atomic
from ftscale.data import corpus
from ftscale.errors import UserError
from ftscale.models.ladder_config import (
    MANIFEST_FILE,
    LadderConfig,
    OnCheckpoint,
    RecipeConfig,
    RungConfig,
)
from ftscale.models.pretrain import (
    PretrainRecipe,
    Shape,
    TokenData,
    count_params,
    pretrain,
    tokenize_corpus,
)
from ftscale.models.tokenizer import cached_bpe, load_tokenizer


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>7} tokens/s"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


DATA_FILE = "_blocks.pt"  # token blocks shared with worker processes; removed after the build


def _run_rung(out: Path, rung: RungConfig, recipe: PretrainRecipe, *, tokenizer,
              data: TokenData, threads: int, emit) -> None:
    """Pretrain one rung, writing its checkpoints under ``out/<rung>/`` and reporting events
    through ``emit``: ``("progress", rung, tokens_done, loss, tokens_per_s)``,
    ``("checkpoint", rung, rel_path, manifest)`` and ``("done", rung, summary)``."""
    shape = Shape(rung.width, rung.layers, rung.heads, rung.ffn)
    started = time.perf_counter()
    last_emit = [0.0]

    def on_progress(done: int, loss: float) -> None:
        now = time.perf_counter()
        if now - last_emit[0] >= 0.25 or done >= recipe.total_steps * recipe.tokens_per_step:
            last_emit[0] = now
            emit(("progress", rung.name, done, loss, done / max(now - started, 1e-9)))

    def save(model, step: int, record: dict) -> None:
        rel = f"{rung.name}/tokens-{record['tokens_seen']:09d}"
        (out / rung.name).mkdir(exist_ok=True)  # no parents: fails if the build dir is gone
        ckpt = out / rel
        ckpt.mkdir()
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
        emit(("checkpoint", rung.name, rel, manifest))

    last = pretrain(shape, recipe, data, tokenizer, save, threads=threads,
                    on_progress=on_progress)
    emit(("done", rung.name, {
        "train_s": round(last["wall_s"], 3),
        "total_s": round(time.perf_counter() - started, 3),
        "tokens_per_s": round(last["tokens_per_s"], 1),
        "threads": last["threads"],
        "val_loss": round(last["val_loss"], 6),
    }))


_EVENTS = None  # the worker's event queue, set by _init_worker


def _init_worker(events, parent_pid: int) -> None:
    global _EVENTS
    _EVENTS = events
    hf_logging.disable_progress_bar()

    def watchdog() -> None:  # a worker must not outlive a killed build
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()


def _worker_job(out: str, rung: dict, recipe: dict, threads: int) -> str:
    root = Path(out)
    blocks = torch.load(root / DATA_FILE)
    tokenizer = load_tokenizer(root / "tokenizer")
    _run_rung(root, RungConfig(**rung), PretrainRecipe(**recipe), tokenizer=tokenizer,
              data=TokenData(train=blocks["train"], val=blocks["val"]), threads=threads,
              emit=_EVENTS.put)
    return rung["name"]


@dataclass
class Prepared:
    """What every rung of a pretrained ladder shares, made before any directory is written: the
    tokenizer, the token blocks and the seconds it took (``data_s``)."""

    tokenizer: object
    data: TokenData
    data_s: float


def _upper_bound_tokens(docs: list[str]) -> int:
    """An upper bound on the tokens of ``docs`` in any byte-level BPE: every token is at least
    one byte, plus one end-of-text token per line at most (passages and documents end in one)."""
    return sum(len(d.encode("utf-8")) + d.count("\n") + 1 for d in docs)


def _refuse(config: LadderConfig, field: str, message: str) -> UserError:
    return UserError(f"ladder {config.name}: recipe.{field}: {message}")


def check_corpus_bounds(config: LadderConfig, train_docs: list[str], val_docs: list[str]) -> None:
    """Refuse, before any tokenizer is trained, a recipe the corpus cannot honour in any
    tokenizer: one batch larger than the whole pretraining text, or more validation tokens than
    the held-out text has (upper bounds from byte counts; exact counts follow tokenization)."""
    recipe = config.recipe
    assert recipe is not None
    train_max, val_max = _upper_bound_tokens(train_docs), _upper_bound_tokens(val_docs)
    if recipe.tokens_per_step > train_max:
        raise _refuse(config, "batch_size", (
            f"one batch (batch_size {recipe.batch_size:,} x seq_len {recipe.seq_len:,} = "
            f"{recipe.tokens_per_step:,} tokens) is more than the whole pretraining text "
            f"(at most {train_max:,} tokens)"))
    if recipe.val_tokens > val_max:
        raise _refuse(config, "val_tokens", (
            f"{recipe.val_tokens:,} is more than the held-out text has "
            f"(at most {val_max:,} tokens)"))


def check_blocks(config: LadderConfig, data: TokenData) -> None:
    """Refuse a recipe the tokenized corpus cannot honour exactly: a batch needs ``batch_size``
    distinct training blocks (else a step would see fewer tokens than the ladder records), and
    ``val_tokens`` must fit in the held-out blocks (else fewer would be used than asked)."""
    recipe: RecipeConfig = config.recipe  # type: ignore[assignment]
    seq = recipe.seq_len
    if len(data.train) < recipe.batch_size:
        raise _refuse(config, "batch_size", (
            f"{recipe.batch_size:,} sequences per step, but the pretraining text makes only "
            f"{len(data.train):,} blocks of {seq} tokens ({len(data.train) * seq:,} tokens)"))
    wanted = recipe.val_tokens // seq
    if len(data.val) < wanted:
        raise _refuse(config, "val_tokens", (
            f"{recipe.val_tokens:,} is more than the held-out text has "
            f"({len(data.val):,} blocks of {seq} = {len(data.val) * seq:,} tokens)"))


def prepare_pretraining(config: LadderConfig, tokenizer_cache: Path | None = None) -> Prepared:
    """Check the recipe against the corpus, train (or reuse) the tokenizer and cut the token
    blocks; nothing is written except a tokenizer newly trained into ``tokenizer_cache``.

    The tokenizer is reused from ``tokenizer_cache`` when one with the same vocabulary was
    trained on the same corpus (so ladders of equal vocabulary share token ids). Raises a
    one-line :class:`UserError` naming the recipe field when the corpus cannot honour it.
    """
    assert config.recipe is not None
    recipe = config.recipe
    t0 = time.perf_counter()
    train_docs = corpus.pretraining_documents("train")
    val_docs = corpus.pretraining_documents("val")
    check_corpus_bounds(config, train_docs, val_docs)
    tokenizer = cached_bpe(
        train_docs, config.tokenizer.vocab_size, corpus.corpus_fingerprint(), tokenizer_cache
    )
    data = tokenize_corpus(
        tokenizer, train_docs, val_docs, seq_len=recipe.seq_len,
        train_tokens=recipe.tokens, val_tokens=recipe.val_tokens, seed=recipe.seed,
    )
    check_blocks(config, data)
    return Prepared(tokenizer=tokenizer, data=data, data_s=time.perf_counter() - t0)


def build_pretrained(
    config: LadderConfig,
    out: Path,
    prepared: Prepared,
    *,
    threads: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_checkpoint: OnCheckpoint | None = None,
) -> dict:
    """Pretrain every rung of ``config`` on ``prepared`` data and write checkpoints into ``out``.

    ``threads`` is torch threads per rung (default :func:`ftscale.common.threads_per_worker`),
    ``workers`` the rungs trained at once in separate processes (default
    :func:`ftscale.common.default_workers`). Returns the ladder summary: relative checkpoint
    paths (rungs in config order), per-rung timings (training seconds, tokens/s, threads) and
    data sizes (tokens). Each checkpoint directory holds the model (``config.json``,
    ``model.safetensors``), the tokenizer and ``manifest.json``.
    """
    assert config.recipe is not None
    recipe_cfg = config.recipe
    threads = threads or threads_per_worker()
    workers = workers or default_workers(len(config.rungs), threads)
    hf_logging.disable_progress_bar()  # our own bar; no per-save "Writing model shards" bars
    tokenizer, data = prepared.tokenizer, prepared.data
    tokenizer.save_pretrained(str(out / "tokenizer"))
    recipe = PretrainRecipe(
        tokens=recipe_cfg.tokens, batch_size=recipe_cfg.batch_size, seq_len=recipe_cfg.seq_len,
        lr=recipe_cfg.lr, warmup_fraction=recipe_cfg.warmup_fraction,
        min_lr_ratio=recipe_cfg.min_lr_ratio, weight_decay=recipe_cfg.weight_decay,
        seed=recipe_cfg.seed, checkpoints=list(recipe_cfg.checkpoints),
    )
    checkpoints, rungs = _train_rungs(config, out, recipe, prepared, threads=threads,
                                      workers=workers, progress=progress,
                                      on_checkpoint=on_checkpoint)
    order = {r.name: i for i, r in enumerate(config.rungs)}
    checkpoints.sort(key=lambda rel: (order[rel.split("/")[0]], rel))
    return {
        "checkpoints": checkpoints,
        "rungs": {r.name: {**rungs[r.name], "workers": workers} for r in config.rungs},
        "tokenizer": "tokenizer",
        "data": {
            "data_s": round(prepared.data_s, 3),
            "train_blocks": len(data.train),
            "train_tokens_available": int(data.train.numel()),
            "val_tokens": int(data.val.numel()),
            "corpus_fingerprint": corpus.corpus_fingerprint(),
        },
    }


def _train_rungs(config: LadderConfig, out: Path, recipe: PretrainRecipe, prepared: Prepared,
                 *, threads: int, workers: int, progress: bool,
                 on_checkpoint: OnCheckpoint | None) -> tuple[list[str], dict[str, dict]]:
    """Pretrain the rungs (in this process, or ``workers`` spawned ones) under one set of progress
    bars; return the relative checkpoint paths and the per-rung summaries."""
    total_tokens = recipe.total_steps * recipe.tokens_per_step
    checkpoints: list[str] = []
    rungs: dict[str, dict] = {}
    with _progress(progress) as bar:
        tasks = {
            r.name: bar.add_task(f"pretrain {r.name}", total=total_tokens, rate="-", loss="-",
                                 start=False)  # clock starts with the rung's first step
            for r in config.rungs
        }
        started: set[str] = set()

        def handle(event: tuple) -> None:
            kind, name = event[0], event[1]
            if kind == "progress":
                _, _, done, loss, rate = event
                if name not in started:
                    started.add(name)
                    bar.start_task(tasks[name])
                bar.update(tasks[name], completed=done, rate=f"{rate:,.0f}", loss=f"{loss:.3f}")
            elif kind == "checkpoint":
                _, _, rel, m = event
                checkpoints.append(rel)
                if progress:
                    bar.console.print(
                        f"{name}: {m['tokens_seen']:,} tokens, train loss {m['train_loss']:.3f},"
                        f" val loss {m['val_loss']:.3f}, {m['tokens_per_s']:,.0f} tokens/s"
                        f" ({m['threads']} thread(s))", soft_wrap=True,
                    )
                if on_checkpoint is not None:
                    on_checkpoint(name, m["tokens_seen"], out / rel)
            else:
                rungs[name] = event[2]

        if workers <= 1:
            for rung in config.rungs:
                _run_rung(out, rung, recipe, tokenizer=prepared.tokenizer, data=prepared.data,
                          threads=threads, emit=handle)
        else:
            _run_parallel(out, config, recipe, data=prepared.data, threads=threads,
                          workers=workers, handle=handle)
    return checkpoints, rungs


def _run_parallel(out: Path, config: LadderConfig, recipe: PretrainRecipe, *, data: TokenData,
                  threads: int, workers: int, handle) -> None:
    """Pretrain the rungs in ``workers`` spawned processes, largest first, feeding their events
    to ``handle`` in this process. Any failure (or ``handle`` raising) stops every worker."""
    torch.save({"train": data.train, "val": data.val}, out / DATA_FILE)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    recipe_fields = {k: getattr(recipe, k) for k in recipe.__dataclass_fields__}
    jobs = sorted(config.rungs, key=lambda r: r.layers * (4 * r.width**2 + 3 * r.width * r.ffn),
                  reverse=True)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(events, os.getpid()))
    try:
        futures = [pool.submit(_worker_job, str(out), r.model_dump(), recipe_fields, threads)
                   for r in jobs]
        pending = set(futures)
        finished: set[str] = set()

        def track(event: tuple) -> None:
            if event[0] == "done":
                finished.add(event[1])
            handle(event)

        while pending:
            _drain(events, track, timeout=0.2)
            done, pending = wait(pending, timeout=0, return_when=FIRST_EXCEPTION)
            for fut in done:
                try:
                    fut.result()  # re-raise a worker's error here
                except BrokenProcessPool as exc:
                    raise RuntimeError(
                        "a pretraining worker process died (out of memory, killed, or a script "
                        "calling build_ladder without an `if __name__ == '__main__':` guard, "
                        "which the spawn start method needs); rerun with workers=1 to debug"
                    ) from exc
        deadline = time.monotonic() + 60
        while len(finished) < len(jobs):  # events may trail the results through the queue
            if time.monotonic() > deadline:
                raise RuntimeError("pretraining workers finished without reporting every rung")
            _drain(events, track, timeout=0.5)
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        events.close()
        (out / DATA_FILE).unlink(missing_ok=True)


def _drain(events, handle, timeout: float) -> None:
    """Handle queued worker events: wait up to ``timeout`` seconds for the first, then take what
    is there without waiting."""
    try:
        event = events.get(timeout=timeout)
    except queue_mod.Empty:
        return
    handle(event)
    while True:
        try:
            event = events.get_nowait()
        except queue_mod.Empty:
            return
        handle(event)
