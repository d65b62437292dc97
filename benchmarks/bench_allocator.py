"""The allocator policy of finetuning runs (`ftscale.finetune.memory.set_allocator`), measured.

Trains a quickstart-sized Llama model (width 64, 2 layers, a 2,048-token vocabulary; batch 16 x
96 tokens, AdamW) for a fixed number of steps in a fresh one-thread process per allocator mode,
and prints wall time, system time and minor page faults per mode with the ratio of each to
``return`` (a fixed 1 MiB mmap threshold: what every run used before the policy was per model):

* ``glibc``: the allocator left as it is (its dynamic mmap threshold);
* ``return``: freed tensors of 1 MiB and more go back to the system (large models' mode);
* ``reuse``: every tensor from the heap, freed memory kept (small models' mode).

    python benchmarks/bench_allocator.py [--steps 60] [--repeats 3] [--width 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("return", "glibc", "reuse")


def measure(mode: str, steps: int, width: int) -> dict[str, float]:
    """Train ``steps`` steps in this process under ``mode``; wall s, system s, page faults."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftscale.finetune.memory import LARGE_WEIGHTS, set_allocator

    if mode != "glibc":
        set_allocator(LARGE_WEIGHTS if mode == "return" else 0)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 2048, (16, 96))

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(5):  # warm up: the first steps allocate the optimizer state
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "sys_s": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.width)))
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every mode alike
        for mode in MODES:
            command = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                       "--width", str(args.width)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(r["wall_s"] for r in runs["return"])
    print(f"{args.steps} steps, width {args.width}, median of {args.repeats} fresh processes")
    print(f"{'mode':8} {'wall s':>8} {'sys s':>7} {'faults':>9} {'speed vs return':>16}")
    for mode in MODES:
        wall = statistics.median(r["wall_s"] for r in runs[mode])
        sys_s = statistics.median(r["sys_s"] for r in runs[mode])
        faults = statistics.median(r["faults"] for r in runs[mode])
        print(f"{mode:8} {wall:8.2f} {sys_s:7.2f} {faults:9.0f} {base / wall:15.2f}x")


if __name__ == "__main__":
    main()
