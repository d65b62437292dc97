"""Regenerate the figures in the docs' tables from what ftscale computes, never typed by hand.

Every block between ``<!-- regen:NAME -->`` and ``<!-- /regen:NAME -->`` in ``docs/*.md`` is
rewritten by the generator of that NAME:

* ``ladder-sizes`` (docs/ladders.md): shapes and parameter counts of each rung of
  ``examples/ladder-tiny.toml``, counted on models built on PyTorch's ``meta`` device (no build);
* ``ladder-workers`` (docs/ladders.md): default threads and workers by core count
  (:func:`ftscale.common.threads_per_worker`, :func:`ftscale.common.default_workers`);
* ``ladder-build`` and ``ladder-losses`` (docs/ladders.md): build time, tokens/s and the train and
  validation losses of every checkpoint, read from the built default ladder (``ladder show``);
  skipped, with a note, when that ladder is not in the cache (``--build`` builds it: about 5 min
  on 2 cores);
* ``data-splits`` (docs/data.md): books and pair counts of each split of the built-in task.

Usage (from the repository root)::

    python scripts/regen_docs.py                 # rewrite the blocks that can be generated
    python scripts/regen_docs.py --build         # build the default ladder first if needed
    python scripts/regen_docs.py --check         # exit 1 if a block is stale; write nothing
    python scripts/regen_docs.py --only data-splits --only ladder-sizes --check
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LADDER_TOML = ROOT / "examples" / "ladder-tiny.toml"


class Skip(Exception):
    """A generator cannot run here (e.g. the default ladder is not built); its block is kept."""


def _n(value: int) -> str:
    return f"{value:,}"


def ladder_sizes(ctx: dict) -> str:
    """Rung shapes and parameter counts, from models instantiated on the meta device."""
    import torch
    from transformers import LlamaForCausalLM

    from ftscale.models.ladder import load_config
    from ftscale.models.pretrain import Shape, count_params, llama_config

    config = load_config(LADDER_TOML)
    lines = ["| rung | width/layers/heads/FFN | total params | non-embedding |",
             "|---|---|---|---|"]
    for r in config.rungs:
        shape = Shape(r.width, r.layers, r.heads, r.ffn)
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(shape, config.tokenizer.vocab_size,
                                                  config.recipe.seq_len))
        counts = count_params(model)
        lines.append(f"| {r.name} | {r.width}/{r.layers}/{r.heads}/{r.ffn} | "
                     f"{_n(counts['total'])} | {_n(counts['nonembedding'])} |")
    return "\n".join(lines)


def ladder_workers(ctx: dict) -> str:
    """Default threads per rung and worker processes for the default ladder by core count."""
    from ftscale.common import default_workers, threads_per_worker
    from ftscale.models.ladder import load_config

    rungs = len(load_config(LADDER_TOML).rungs)
    lines = ["| usable cores | threads per rung | workers |", "|---|---|---|"]
    for cores in (1, 2, 4, 8, 16):
        threads = threads_per_worker(cores)
        lines.append(f"| {cores} | {threads} | {default_workers(rungs, threads, cores)} |")
    return "\n".join(lines)


def _built(ctx: dict) -> tuple[dict, list[dict]]:
    """(ladder.json, rows) of the built default ladder, building it first with ``--build``."""
    if "ladder" not in ctx:
        from ftscale.models.ladder import build_ladder, entry_path, is_complete, load_config
        from ftscale.models.ladder_config import ladder_summary, read_ladder

        config = load_config(LADDER_TOML)
        path = entry_path(config, ctx["cache"])
        if not is_complete(path):
            if not ctx["build"]:
                raise Skip(f"default ladder not built at {path} (use --build)")
            path, _ = build_ladder(config, ctx["cache"])
        ctx["ladder"] = (ladder_summary(path), read_ladder(path))
    return ctx["ladder"]


def ladder_build(ctx: dict) -> str:
    """Build time and per-rung throughput, as recorded in ``ladder.json``."""
    summary, _ = _built(ctx)
    rungs = summary["rungs"]
    wall = summary["build_wall_s"]
    first = next(iter(rungs.values()))
    lines = [
        f"Last regenerated from a build that took **{int(wall // 60)} min {round(wall % 60)} s** "
        f"inside `build_ladder` (data step {summary['data']['data_s']:.0f} s; "
        f"{first['workers']} worker process(es) x {first['threads']} thread(s); "
        f"built {summary['built_at']}).",
        "",
        "| rung | tokens/s | training s |",
        "|---|---|---|",
    ]
    for name, r in rungs.items():
        lines.append(f"| {name} | {_n(round(r['tokens_per_s']))} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def ladder_losses(ctx: dict) -> str:
    """Validation loss at every checkpoint and the final train loss of every rung."""
    summary, rows = _built(ctx)
    tokens = sorted({r["tokens_seen"] for r in rows})
    val = {(r["rung"], r["tokens_seen"]): r["val_loss"] for r in rows}
    rungs = list(summary["rungs"])
    lines = ["| rung | " + " | ".join(_n(t) for t in tokens) + " |",
             "|---|" + "---|" * len(tokens)]
    for rung in rungs:
        lines.append(f"| {rung} | " + " | ".join(
            f"{val[(rung, t)]:.3f}" if (rung, t) in val else "-" for t in tokens) + " |")
    final = {r["rung"]: r["train_loss"] for r in rows if r["tokens_seen"] == tokens[-1]}
    lines += ["", "Final train losses (mean of the last 20 steps): "
              + ", ".join(f"{rung} {final[rung]:.3f}" for rung in rungs) + "."]
    return "\n".join(lines)


def data_splits(ctx: dict) -> str:
    """Books and En->De pair counts of each built-in split, and the pairs dropped from train."""
    from ftscale.data import corpus
    from ftscale.data.tasks import builtin_pairs

    names = corpus.book_names("4")
    held = set(corpus.DEV_BOOKS) | set(corpus.TEST_BOOKS)
    train_aligned = len(corpus.aligned_verses("4", "e", exclude=held))
    counts = {s: len(builtin_pairs("en-de", s)) for s in ("test", "dev", "train")}
    books = {
        "test": ", ".join(names[b] for b in corpus.TEST_BOOKS),
        "dev": ", ".join(names[b] for b in corpus.DEV_BOOKS),
        "train": f"the other {len(names) - len(held)} books",
    }
    lines = ["| split | books | En->De pairs | Fr->De pairs |", "|---|---|---|---|"]
    for split in ("test", "dev", "train"):
        fr = len(builtin_pairs("fr-de", split)) if split != "train" else "-"
        lines.append(f"| {split} | {books[split]} | {_n(counts[split])} | "
                     f"{_n(fr) if fr != '-' else fr} |")
    lines += ["", f"Training pairs dropped because their source or target text is also a dev or "
              f"test text: {train_aligned - counts['train']}."]
    return "\n".join(lines)


GENERATORS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "ladder-sizes": ("docs/ladders.md", ladder_sizes),
    "ladder-workers": ("docs/ladders.md", ladder_workers),
    "ladder-build": ("docs/ladders.md", ladder_build),
    "ladder-losses": ("docs/ladders.md", ladder_losses),
    "data-splits": ("docs/data.md", data_splits),
}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- regen:{name} -->\n)(.*?)(<!-- /regen:{name} -->)", re.DOTALL)


def regenerate(names: list[str], ctx: dict, check: bool) -> list[str]:
    """Rewrite (or, with ``check``, compare) each named block; return the stale ones."""
    stale = []
    for name in names:
        doc, make = GENERATORS[name]
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise SystemExit(f"{doc}: no <!-- regen:{name} --> block")
        try:
            body = make(ctx).rstrip("\n") + "\n"
        except Skip as why:
            print(f"{name}: skipped: {why}", file=sys.stderr)
            continue
        new = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new, encoding="utf-8")
        print(f"{name}: {'stale' if new != text else 'up to date'}"
              f"{'' if check or new == text else ' -> rewritten'}", file=sys.stderr)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(GENERATORS),
                        help="regenerate only these blocks (repeatable)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
    parser.add_argument("--build", action="store_true", help="build the default ladder if needed")
    parser.add_argument("--cache", help="ladder cache root (default as `ftscale ladder build`)")
    args = parser.parse_args(argv)
    ctx = {"cache": args.cache, "build": args.build}
    stale = regenerate(args.only or list(GENERATORS), ctx, args.check)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
