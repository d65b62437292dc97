"""A study's finetuning phase: one run per worker process (as today) against runs packed into one
computation (``--pack``), measured in the same run, with the machine's FP32 matmul peak.

Builds the study's ladder once (not timed), then runs the study's runs (no report, no
learning-rate search) into fresh directories, once per setting, on the process executor with
one-thread workers. For each setting it prints the finetuning phase's wall time, training tokens
per second (real tokens trained on, over the phase's wall time) and the fraction of the machine's
FP32 matmul peak (one thread, measured here on 1024x1024 matmuls, times the workers) that the
phase's training FLOPs reach. Training FLOPs of a run: 6 x non-embedding parameters x tokens
seen + 6 x width x vocabulary x target tokens seen (the output head runs on target positions
only); a GEMM-bound lower estimate that leaves out attention and evaluation. Checks that every
packed record equals its one-at-a-time record (test NLL within 1e-3, same best step). Usage:

    PYTHONPATH=src python benchmarks/bench_study.py [--study builtin:quickstart] [--pack 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """FP32 matmul GFLOP/s of one thread (best of ``repeats``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def _records(study_dir: Path) -> dict[tuple, dict]:
    db = sqlite3.connect(study_dir / "study.sqlite")
    query = "select method, rung, tokens_seen, method_size, examples, subset_seed, record from runs"
    return {tuple(r[:6]): json.loads(r[6]) for r in db.execute(query) if r[6]}


def _flops(record: dict, widths: dict[str, tuple[int, int]], rung: str) -> float:
    width, vocab = widths[rung]
    return 6.0 * (
        record["nonembedding_params"] * record["tokens_seen"]
        + width * vocab * record["target_tokens_seen"]
    )


def _widths(study) -> dict[str, tuple[int, int]]:
    ladder = study.ladder
    return {r.name: (r.width, ladder.tokenizer.vocab_size) for r in ladder.rungs}


def run_setting(study, root: Path, pack: int, workers: int) -> tuple[float, dict]:
    from ftscale.study.executors import ExecutorOptions
    from ftscale.study.runner import run_study

    options = ExecutorOptions(threads=1, workers=workers)
    start = time.perf_counter()
    run_study(study, root, executor="process", options=options, report=False, pack=pack)
    return time.perf_counter() - start, _records(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="builtin:quickstart")
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FTSCALE_CACHE", str(Path(tmp) / "cache"))
        from ftscale.models.ladder import build_ladder
        from ftscale.study.config import load_study

        study = load_study(args.study)
        build_ladder(study.ladder, progress=False)
        peak = matmul_peak()
        print(f"FP32 matmul peak: {peak:.0f} GFLOP/s per thread; {args.workers} workers")
        results = {}
        for pack in (1, args.pack):
            wall, records = run_setting(study, Path(tmp) / f"pack{pack}", pack, args.workers)
            tokens = sum(r["tokens_seen"] for r in records.values())
            flops = sum(_flops(r, _widths(study), key[1]) for key, r in records.items())
            share = flops / wall / (peak * 1e9 * args.workers)
            results[pack] = (wall, records)
            print(
                f"pack {pack:>3}: {len(records)} runs in {wall:.1f} s, {tokens / wall:,.0f} "
                f"training tokens/s, {share:.1%} of the FP32 matmul peak"
            )
        (base_wall, base), (wall, packed) = results[1], results[args.pack]
        worst = max(abs(base[k]["test_nll"] - packed[k]["test_nll"]) for k in base)
        same = sum(base[k]["best_step"] == packed[k]["best_step"] for k in base)
        print(
            f"packed / one-at-a-time speed: {base_wall / wall:.2f}x; records: max |test NLL "
            f"difference| {worst:.1e}, same best step in {same} of {len(base)} runs "
            f"(load average {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
